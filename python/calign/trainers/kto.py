"""KTOTrainer: Kahneman-Tversky optimisation (Ethayarajh et al. 2024) and
APO-zero unpaired, as TRL 1.16's KTOTrainer.

The KL reference point z0 is estimated on each micro-batch from mismatched
pairs: prompt i with the completion of example i - 1 (cyclically; a
micro-batch of one example pairs it with itself), TRL's construction, the
borrowed completion cut to fit max_length and the model's positions as TRL
cuts its KL sequences. Those pairs are packed as a second branch of prompt i,
so the prompt is computed once; they take no gradient (z0 is a constant), and
the estimate depends only on the micro-batch's own examples."""

import numpy as np

from calign import losses
from calign.data.truncation import Truncation
from calign.data.unpaired import UnpairedExample, prepare_unpaired_data
from calign.model.preference_batch import PackedPreferences
from calign.trainers.base import BaseTrainer
from calign.trainers.config import KTOConfig


class KTOTrainer(BaseTrainer):
    """KTO configured by KTOConfig; ref_model as for DPOTrainer."""

    config_class = KTOConfig

    def __init__(self, model, ref_model=None, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None):
        super().__init__(model, args, train_dataset, eval_dataset, processing_class,
                         peft_config)
        if ref_model is None:
            self.ref_model = self._default_reference()
        else:
            self.ref_model = self._load_reference(ref_model)

    def _prepare_examples(self, source, name):
        return prepare_unpaired_data(source, self.processing_class, Truncation.of(self.args),
                                     name)

    def _with_mismatched(self, examples):
        """Each example with a second branch: the previous example's completion,
        cut where prompt + completion would pass max_length or the positions of
        the models (TRL truncates its KL sequences to max_length)."""
        limit = min(self.model.max_positions, self.ref_model.max_positions)
        if self.args.max_length is not None:
            limit = min(limit, self.args.max_length)
        n = len(examples)
        # every prompt leaves room: its own example fits limit with a completion
        return [UnpairedExample(e.prompt_ids, [
            e.completions[0], examples[(i - 1) % n].completions[0][:limit - len(e.prompt_ids)]],
            e.label) for i, e in enumerate(examples)]

    def _micro_step(self, examples, normaliser, train):
        a = self.args
        use_kl = a.loss_type == "kto"
        packed = PackedPreferences(self._with_mismatched(examples) if use_kl else examples)
        # the reference first (a LoRA run's is this model, adapters off)
        ref_hidden = self.ref_model.forward_packed(packed.batch, train=False)
        ref_sums = packed.sequence_sums(self.ref_model.packed_scores(ref_hidden, packed.batch))
        hidden = self.model.forward_packed(packed.batch, train=train)
        token_logps, stats = self.model.packed_scores(hidden, packed.batch, return_stats=True)
        sums = packed.sequence_sums(token_logps)
        labels = np.array([e.label for e in examples])
        out = losses.kto_loss(
            sums[:, 0], ref_sums[:, 0], labels,
            kl_policy_logps=sums[:, 1] if use_kl else None,
            kl_ref_logps=ref_sums[:, 1] if use_kl else None,
            beta=a.beta, loss_type=a.loss_type, desirable_weight=a.desirable_weight,
            undesirable_weight=a.undesirable_weight, return_grad=True)
        if train:
            grad_seq = np.zeros_like(sums)
            grad_seq[:, 0] = out.grad / normaliser  # the KL branch is a constant
            d_hidden, _ = self.model.score_backward(hidden, packed.batch,
                                                    packed.per_token(grad_seq))
            self.model.backward_packed(packed.batch, d_hidden)
        matched = np.repeat(np.tile(np.arange(packed.K) == 0, len(examples)), packed.lengths)
        metrics = {"loss": float(out.losses.mean()), "kl": out.kl,
                   "entropy": float(stats["entropy"][matched].mean())}
        for side, mask in (("chosen", labels), ("rejected", ~labels)):
            if mask.any():
                metrics[f"rewards/{side}"] = float(out.rewards[mask].mean())
                metrics[f"logps/{side}"] = float(sums[mask, 0].mean())
        if labels.any() and (~labels).any():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return metrics, packed.batch.num_tokens
