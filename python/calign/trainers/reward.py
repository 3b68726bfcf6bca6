"""RewardTrainer: a Bradley-Terry reward model, as TRL 1.16's RewardTrainer.

chosen and rejected are packed as two branches of their shared prompt; each
reward is the scalar head on its last non-pad token; the loss and its
gradient come from calign.losses.reward_loss (with the optional margin and
reward centring), and flow back through the head and the engine."""

import os

import numpy as np

from calign import checks, losses
from calign.data.preference import prepare_preference_data
from calign.data.truncation import Truncation
from calign.model import RewardModel
from calign.model.preference_batch import PackedPreferences
from calign.trainers.base import BaseTrainer
from calign.trainers.config import RewardConfig


class RewardTrainer(BaseTrainer):
    """Trains a RewardModel; `model` may be a RewardModel, a sequence-classification
    checkpoint, or a causal-LM checkpoint (its head is then initialised)."""

    config_class = RewardConfig

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None):
        # TRL trains the score head fully beside the adapters (modules_to_save);
        # calign's adapters cover the layers' projections only
        checks.require(peft_config is None, "peft_config", peft_config,
                       "None for a reward model (LoRA of a reward model's layers with its "
                       "score head trained fully is not implemented)")
        super().__init__(model, args, train_dataset, eval_dataset, processing_class)

    def _load_model(self, model):
        if isinstance(model, RewardModel):
            return model
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("model must be a calign.RewardModel or a checkpoint folder")
        from calign.model.config import load_config_file
        architectures = load_config_file(model).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return RewardModel.from_pretrained(model)
        tok = self.processing_class
        pad = None
        if tok is not None:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return RewardModel.from_causal_lm(model, seed=self.args.seed, pad_token_id=pad)

    def _prepare_examples(self, source, name):
        return prepare_preference_data(source, self.processing_class, Truncation.of(self.args),
                                       name)

    def _micro_step(self, examples, normaliser, train):
        packed = PackedPreferences(examples)
        model = self.model
        hidden = model.forward_packed(packed.batch, train=train)
        rows = model.reward_rows(packed.batch)
        rewards = model.rewards_of(hidden, rows).reshape(-1, 2)
        margins = [e.margin for e in examples]
        margin = None if all(m is None for m in margins) else np.array(
            [0.0 if m is None else m for m in margins])
        out = losses.reward_loss(rewards[:, 0], rewards[:, 1], margin=margin,
                                 center_rewards_coefficient=self.args.center_rewards_coefficient,
                                 return_grad=True)
        if train:
            grad = np.stack([out.grad_chosen, out.grad_rejected], axis=1).ravel() / normaliser
            head = model.state_dict()["score.weight"][0]
            d_hidden = np.zeros_like(hidden)
            np.add.at(d_hidden, rows, (grad[:, None] * head).astype(np.float32))
            model.grads()["score.weight"][0] += (grad @ hidden[rows].astype(np.float64)).astype(
                np.float32)
            model.backward_packed(packed.batch, d_hidden)
        metrics = {"loss": float(out.losses.mean()),
                   "accuracy": float((rewards[:, 0] > rewards[:, 1]).mean()),
                   "margin": float(out.margins.mean()),
                   "min_reward": float(rewards.min()), "mean_reward": float(rewards.mean()),
                   "max_reward": float(rewards.max())}
        return metrics, packed.batch.num_tokens
