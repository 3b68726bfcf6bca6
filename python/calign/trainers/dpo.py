"""DPOTrainer: DPO and every TRL 1.16 variant, plus listwise (Plackett-Luce) DPO.

One micro-batch is one packed row per example, `prompt | chosen | rejected`
(or K ranked responses), with the prompt computed once. When each pair's loss
is its own, training scores the pairs in chunks of whole pairs with the loss
(calign.losses' C function) applied inside the log-prob kernel, so each chunk
is backpropagated while its logits are in memory (Model.score_dpo_pairs).
Otherwise (aot, sft/RPO, WPO weights, listwise, evaluation) the token
log-probs come from the kernel, the loss and its gradient from calign.losses,
and the gradient goes back through the kernel. The reference is a frozen copy
of the initial policy, precomputed log-probs, dataset columns, or nothing
(reference_free).
"""

import hashlib
import os
import warnings

import numpy as np

from calign import checks, losses
from calign.data.preference import prepare_preference_data
from calign.data.truncation import Truncation
from calign.model.preference_batch import PackedPreferences
from calign.trainers.base import BaseTrainer
from calign.trainers.config import DPOConfig
from calign.trainers.reference_sync import SyncedReference


def _load_cached_reference(path, shape):
    """The cached reference log-probs at path, or None when there is no cache
    or it is damaged (then it is computed again, with a warning)."""
    if not os.path.isfile(path):
        return None
    try:
        values = np.load(path)
    except (OSError, ValueError, EOFError) as error:
        problem = f"cannot be read ({error})"
    else:
        if values.shape == shape and np.isfinite(values).all() and (values <= 0).all():
            return values
        problem = f"holds {values.shape} values, not {shape} finite log-probs"
    warnings.warn(f"reference log-prob cache {path} {problem}: computing it again")
    return None


class DPOTrainer(SyncedReference, BaseTrainer):
    """Direct preference optimisation, configured by DPOConfig (TRL's names).

    Args:
        model: a calign.Model or a checkpoint folder.
        ref_model: the reference (a Model or folder); None uses a frozen copy of
            the initial policy, unless reference_free or the dataset carries
            ref_chosen_logps / ref_rejected_logps.
        args: a DPOConfig.
        train_dataset, eval_dataset: preference records (list of dicts, JSON
            Lines path or datasets.Dataset).
        processing_class: a calign.Tokenizer or its folder (needed for text).
    """

    config_class = DPOConfig

    def __init__(self, model, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None):
        super().__init__(model, args, train_dataset, eval_dataset, processing_class,
                         peft_config)
        a = self.args
        self.listwise = a.loss_types == ["listwise"]
        self._settings_by_beta = {}
        # pairs scored with their loss inside the kernel (see the module docstring)
        self.fused_pairs = not (self.listwise or a.rpo_alpha is not None or a.use_weighting or
                                set(a.loss_types) & set(losses.BATCH_COUPLED_DPO_LOSS_TYPES))
        every_example_has_ref = all(e.ref_logps is not None for e in self.train_examples)
        if a.reference_free or (every_example_has_ref and ref_model is None):
            self.ref_model = None
            if a.sync_ref_model:
                raise ValueError("sync_ref_model must be False when every train_dataset record "
                                 "gives ref_chosen_logps/ref_rejected_logps and there is no "
                                 "ref_model: TR-DPO moves a reference model, not fixed numbers")
        elif a.precompute_ref_log_probs:
            # Before the first update the policy is the reference, so it scores the
            # data itself: no copy of the weights is ever made (as TRL does).
            self.ref_model = self.model if ref_model is None else self._load_reference(ref_model)
            self._precompute_reference(self.train_examples, "train")
            if self.eval_examples:
                self._precompute_reference(self.eval_examples, "eval")
            self.ref_model = None
        elif ref_model is None:
            checks.require(not (a.sync_ref_model and self.model.adapters is not None),
                           "sync_ref_model", a.sync_ref_model, "False for a LoRA run (its "
                           "reference is the base model, not a copy TR-DPO could move)")
            self.ref_model = self._default_reference()
        else:
            self.ref_model = self._load_reference(ref_model)
            if self.ref_model.params.size != self.model.params.size and a.sync_ref_model:
                raise ValueError("sync_ref_model needs a reference of the policy's shape")

    def _prepare_examples(self, source, name):
        types = self.args.loss_types
        examples = prepare_preference_data(source, self.processing_class,
                                           Truncation.of(self.args), name,
                                           listwise=types == ["listwise"])
        # a per-pair weight is lost by the losses that sort or rank the pairs
        unweighted = [t for t in types if t in ("aot", "aot_unpaired", "listwise")]
        weighted = next((e for e in examples if e.weight is not None), None)
        if unweighted and weighted is not None:
            raise ValueError(f"{name} record {weighted.index}: the field 'weight' cannot be "
                             f"used with loss_type {unweighted[0]!r}, which "
                             + ("ranks the responses" if unweighted[0] == "listwise" else
                                "sorts the pairs (a weight would land on another pair)")
                             + ": drop the field or choose another loss_type")
        return examples

    # ---- reference log-probs ---------------------------------------------------

    def _precompute_reference(self, examples, split):
        """Reference log-probs of every example, once, cached in output_dir keyed by
        the reference parameters and the tokenized data. With several ranks, rank
        0 reads and writes the cache and the ranks share the batches."""
        digest = hashlib.sha256()
        reference = self.ref_model
        for weights in ([reference.params] + ([reference.adapters.params]
                                              if reference.adapters is not None else [])):
            digest.update(memoryview(weights))  # no copy of the weights
        digest.update(repr(self.args.ld_alpha).encode())
        for e in examples:
            digest.update(np.asarray(e.prompt_ids + [-1] + [t for c in e.completions
                                                           for t in c + [-2]]).tobytes())
        path = os.path.join(self.args.output_dir, f"ref_logps-{split}-{digest.hexdigest()[:16]}.npy")
        world = self.world
        shape = (len(examples), len(examples[0].completions))
        values = world.broadcast(_load_cached_reference(path, shape) if world.is_main else None)
        if values is None:
            a = self.args
            batch_size = a.precompute_ref_batch_size or (
                a.per_device_train_batch_size if split == "train" else a.per_device_eval_batch_size)
            starts = range(0, len(examples), batch_size)
            mine = [PackedPreferences(examples[i:i + batch_size], a.ld_alpha).logps(self.ref_model)
                    for i in world.share(starts)]
            values = np.concatenate(world.gather_shards(mine, len(starts)))
            if world.is_main:
                os.makedirs(self.args.output_dir, exist_ok=True)
                tmp = path + ".tmp.npy"
                np.save(tmp, values)
                os.replace(tmp, path)
        for e, v in zip(examples, values):
            e.ref_logps = [float(x) for x in v]

    def beta(self):
        """The beta of the step being taken (online DPO's may change each epoch)."""
        return self.args.beta_of_epoch(self.state.global_step // self._windows_per_epoch())

    def _loss_settings(self):
        beta = self.beta()
        if beta not in self._settings_by_beta:
            self._settings_by_beta[beta] = self.args.loss_settings(beta)
        return self._settings_by_beta[beta]

    def _reference(self, examples, packed):
        if self.args.reference_free:
            return np.zeros((len(examples), packed.K))
        if all(e.ref_logps is not None for e in examples):
            return np.array([e.ref_logps for e in examples], np.float64)
        if self.ref_model is None:
            hint = (" (with precompute_ref_log_probs, give eval_dataset to the trainer so its "
                    "reference log-probs are computed before training)"
                    if self.args.precompute_ref_log_probs else "")
            raise ValueError("some examples lack ref_chosen_logps/ref_rejected_logps and there "
                             "is no reference model" + hint)
        return packed.logps(self.ref_model)

    # ---- one micro-batch -----------------------------------------------------------

    def _loss(self, policy, ref, packed, stats, examples):
        """(per-example losses, [B, K] rewards, [B, K] d losses.sum() / d policy)."""
        a = self.args
        if self.listwise:
            out = losses.listwise_dpo_loss(policy, ref, beta=self.beta(), return_grad=True)
            return out.losses, out.rewards, out.grad
        types, weights = list(a.loss_types), list(a.loss_weights or [1.0] * len(a.loss_types))
        if a.rpo_alpha is not None:
            # RPO (Pang et al. 2024): + alpha * NLL of the chosen tokens, TRL's "sft" term
            types.append("sft")
            weights.append(a.rpo_alpha)
        pair_weights = None
        if a.use_weighting:
            # WPO (Zhou et al. 2024, Eq. 2): exp(mean over tokens of logp - log sum p^2), constant
            aligned = packed.sequence_means(stats["logprobs"] - stats["log_sum_sq_probs"])
            pair_weights = np.exp(aligned).prod(axis=1)
        record_weights = self._record_weights(examples)
        if record_weights is not None:
            pair_weights = record_weights if pair_weights is None else pair_weights * record_weights
        lengths = packed.lengths.reshape(-1, 2)
        out = losses.dpo_loss(
            policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=self.beta(), loss_type=types,
            loss_weights=weights, label_smoothing=a.label_smoothing,
            f_divergence_type=a.f_divergence_type,
            f_alpha_divergence_coef=a.f_alpha_divergence_coef, discopop_tau=a.discopop_tau,
            chosen_lengths=lengths[:, 0], rejected_lengths=lengths[:, 1], weights=pair_weights,
            scpo_alpha=a.scpo_alpha, return_grad=True)
        rewards = np.stack([out.chosen_rewards, out.rejected_rewards], axis=1)
        return out.losses, rewards, np.stack([out.grad_chosen, out.grad_rejected], axis=1)

    def _record_weights(self, examples):
        if all(e.weight is None for e in examples):
            return None
        return np.array([1.0 if e.weight is None else e.weight for e in examples])

    def _fused_train_step(self, examples, packed, normaliser):
        ref = self._reference(examples, packed)
        hidden = self.model.forward_packed(packed.batch, train=True)
        out = self.model.score_dpo_pairs(
            hidden, packed.batch, packed.lengths, ref, self._loss_settings(),
            token_weights=packed.token_weights if self.args.ld_alpha is not None else None,
            weights=self._record_weights(examples), grad_scale=1.0 / normaliser)
        self.model.backward_packed(packed.batch, out.d_hidden)
        rewards = np.stack([out.chosen_rewards, out.rejected_rewards], axis=1)
        return self._metrics(out.losses, rewards, out.policy, packed, out.stats), \
            packed.batch.num_tokens

    def _micro_step(self, examples, normaliser, train):
        packed = PackedPreferences(examples, self.args.ld_alpha)
        if train and self.fused_pairs:
            return self._fused_train_step(examples, packed, normaliser)
        model = self.model
        # the reference first: a LoRA run's reference is this model, adapters off,
        # and its forward must not come between the policy's forward and backward
        ref = self._reference(examples, packed)
        hidden = model.forward_packed(packed.batch, train=train)
        token_logps, stats = model.packed_scores(hidden, packed.batch, return_stats=True)
        stats["logprobs"] = token_logps
        policy = packed.sequence_sums(token_logps)
        per_example, rewards, grad = self._loss(policy, ref, packed, stats, examples)
        if train:
            d_hidden, _ = model.score_backward(hidden, packed.batch,
                                               packed.per_token(grad / normaliser))
            model.backward_packed(packed.batch, d_hidden)
        return self._metrics(per_example, rewards, policy, packed, stats), \
            packed.batch.num_tokens

    def _metrics(self, per_example, rewards, policy, packed, stats):
        chosen_tokens = np.zeros(packed.K, bool)
        chosen_tokens[0] = True
        is_chosen = np.repeat(np.tile(chosen_tokens, len(per_example)), packed.lengths)
        return {
            "loss": float(per_example.mean()),
            "rewards/chosen": float(rewards[:, 0].mean()),
            "rewards/rejected": float(rewards[:, 1:].mean()),
            "rewards/accuracies": float((rewards[:, :1] > rewards[:, 1:]).all(axis=1).mean()),
            "rewards/margins": float((rewards[:, 0] - rewards[:, 1:].mean(axis=1)).mean()),
            "logps/chosen": float(policy[:, 0].mean()),
            "logps/rejected": float(policy[:, 1:].mean()),
            "logits/chosen": float(stats["mean_logit"][is_chosen].mean()),
            "logits/rejected": float(stats["mean_logit"][~is_chosen].mean()),
            "entropy": float(stats["entropy"].mean()),
            "mean_token_accuracy": float(stats["is_top1"][is_chosen].mean()),
        }
