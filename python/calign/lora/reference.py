"""The reference model of preference training with LoRA: the policy's own
model with its adapters off, or with a frozen copy of the adapter training
started from (as TRL does with PEFT: the base, or a "ref" adapter), so no
copy of the base weights is ever made."""

import numpy as np

from calign.model.reference import InferenceReference


class AdapterReference(InferenceReference):
    """Stands where a reference Model stands in the trainers: `model` run
    with `frozen` as its adapters (None: none); its scoring is the policy's,
    as the lm_head carries no adapter. Inference only."""

    def __init__(self, model, frozen=None):
        self.model = model
        self.frozen = None if frozen is None else np.array(frozen, np.float32)

    def forward_packed(self, batch, train=False):
        if train:
            raise ValueError("a LoRA run's reference does not train")
        with self.model.running_adapters(self.frozen):
            return self.model.forward_packed(batch)
