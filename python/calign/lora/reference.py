"""The reference model of preference training with LoRA: the policy's own
model with its adapters off, or with a frozen copy of the adapter training
started from (as TRL does with PEFT: the base, or a "ref" adapter), so no
copy of the base weights is ever made."""

import numpy as np


class AdapterReference:
    """Stands where a reference Model stands in the trainers (forward_packed,
    packed_scores, max_positions, vocab_size, config): `model` run with
    `frozen` as its adapters (None: none). Inference only."""

    def __init__(self, model, frozen=None):
        self.model = model
        self.frozen = None if frozen is None else np.array(frozen, np.float32)

    def forward_packed(self, batch, train=False):
        if train:
            raise ValueError("a LoRA run's reference does not train")
        with self.model.running_adapters(self.frozen):
            return self.model.forward_packed(batch)

    def packed_scores(self, hidden, batch, temperature=1.0, return_stats=False):
        # the lm_head carries no adapter: the policy's scoring is the reference's
        return self.model.packed_scores(hidden, batch, temperature, return_stats)

    @property
    def max_positions(self):
        return self.model.max_positions

    @property
    def vocab_size(self):
        return self.model.vocab_size

    @property
    def config(self):
        return self.model.config

    def weights(self):
        """The arrays the reference's numbers depend on (to key a cache)."""
        return [self.model.params] + ([] if self.frozen is None else [self.frozen])
