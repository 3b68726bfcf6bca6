"""SFTTrainer: next-token cross-entropy on the trained part of each record,
or (loss_type "token_constrained") the token-wise constrained objective of
Qi et al. 2024 against a reference model.

The loss of an accumulation window is the sum of token losses divided by the
number of trained tokens in the whole window, so it does not depend on how the
window is split into micro-batches (transformers' num_items_in_batch); the
official constrained code also averages over the batch's response tokens."""

import numpy as np

from calign import checks, losses
from calign.data.records import load_records
from calign.data.sft import prepare_sft_data
from calign.data.truncation import Truncation
from calign.model.preference_batch import PackedPreferences
from calign.trainers.base import BaseTrainer
from calign.trainers.config import SFTConfig


class SFTTrainer(BaseTrainer):
    """Supervised fine-tuning configured by SFTConfig (TRL's names).

    Args:
        ref_model: loss_type "token_constrained" only: the reference pi_aligned
            (a Model or folder); None uses a frozen copy of the initial model
            (for a LoRA run, the base with the adapters off). With
            args.precompute_ref_log_probs every record is scored once before
            training and no reference model is kept.
        The other arguments are BaseTrainer's.
    """

    config_class = SFTConfig
    disables_dropout = False  # TRL's SFTTrainer has no disable_dropout: LoRA's dropout acts

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None, *, ref_model=None):
        super().__init__(model, args, train_dataset, eval_dataset, processing_class, peft_config)
        self.constrained = self.args.loss_type == "token_constrained"
        checks.require(self.constrained or ref_model is None, "ref_model", ref_model,
                       "None unless loss_type is 'token_constrained' (plain SFT has no "
                       "reference)")
        self.ref_model = None
        if not self.constrained:
            return
        if self.args.precompute_ref_log_probs:
            # before the first update the policy is the reference: it scores the data
            self.ref_model = self.model if ref_model is None else self._load_reference(ref_model)
            for examples in (self.train_examples, self.eval_examples or []):
                self._precompute_reference(examples)
            self.ref_model = None
        else:
            self.ref_model = (self._default_reference() if ref_model is None
                              else self._load_reference(ref_model))

    def _prepare_examples(self, source, name):
        field = self.args.dataset_text_field
        if field != "text":  # a language-modelling record's text under another name
            source = [{("text" if key == field else key): value for key, value in record.items()
                       if key != "text"} if field in record else record
                      for record in load_records(source, name)]
        return prepare_sft_data(source, self.processing_class, Truncation.of(self.args),
                                self.args.completion_only_loss, name)

    def _window_size(self, examples):
        return sum(len(e.completions[0]) for e in examples)

    # ---- the constrained objective's reference -----------------------------------

    def _precompute_reference(self, examples):
        """Stores each example's reference token log-probs (ref_token_logps)."""
        batch_size = self.args.per_device_train_batch_size
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            packed = PackedPreferences(chunk)
            scores = self._live_reference(packed)
            for e, start, length in zip(chunk, packed.starts, packed.lengths):
                e.ref_token_logps = scores[start:start + length].copy()

    def _live_reference(self, packed):
        hidden = self.ref_model.forward_packed(packed.batch, train=False)
        return self.ref_model.packed_scores(hidden, packed.batch)

    def _reference(self, examples, packed):
        """[M] reference log-probs of the micro-batch's trained tokens."""
        if self.ref_model is None:
            return np.concatenate([e.ref_token_logps for e in examples])
        return self._live_reference(packed)

    def _betas(self, packed):
        """[M] beta_t of each trained token: its position in its record."""
        position = np.arange(int(packed.lengths.sum())) - np.repeat(packed.starts, packed.lengths)
        return losses.constrained_betas(position, self.args.constrained_betas)

    # ---- one micro-batch -----------------------------------------------------------

    def _micro_step(self, examples, normaliser, train):
        packed = PackedPreferences(examples)
        ref = self._reference(examples, packed) if self.constrained else None
        hidden = self.model.forward_packed(packed.batch, train=train)
        metrics = {}
        if self.constrained:
            betas = self._betas(packed)
            if train:  # each token's gradient follows from its own log-prob: one fused pass
                out = self.model.score_constrained(hidden, packed.batch, packed.lengths, ref,
                                                   betas, grad_scale=1.0 / normaliser)
                self.model.backward_packed(packed.batch, out.d_hidden)
                token_logps, stats, loss_sum = out.logprobs, out.stats, out.losses.sum()
                weights = -out.grad_logps * normaliser
            else:
                token_logps, stats = self.model.packed_scores(hidden, packed.batch,
                                                              return_stats=True)
                loss, grad = losses.token_constrained_loss(token_logps[None], ref[None],
                                                           betas[None], return_grad=True)
                loss_sum, weights = loss.sum(), -grad[0]
            metrics["loss"] = float(loss_sum / token_logps.size)
            metrics["nll"] = float(-np.mean(token_logps, dtype=np.float64))
            # Eq. 5's adaptive weight 2 sigmoid(beta_t (log ref - log policy)): 1 is plain SFT
            metrics["constrained_weight"] = float(np.mean(weights, dtype=np.float64))
        elif train:  # the gradient of each token's log-prob is known: one pass scores and backprops
            grad = np.full(packed.batch.score_rows.size, -1.0 / normaliser)
            d_hidden, token_logps, stats = self.model.score_backward(hidden, packed.batch, grad,
                                                                     return_stats=True)
            self.model.backward_packed(packed.batch, d_hidden)
        else:
            token_logps, stats = self.model.packed_scores(hidden, packed.batch, return_stats=True)
        if not self.constrained:
            metrics["loss"] = float(-np.mean(token_logps, dtype=np.float64))
        metrics["entropy"] = float(stats["entropy"].mean())
        metrics["mean_token_accuracy"] = float(stats["is_top1"].mean())
        return metrics, packed.batch.num_tokens
