"""The reference model of a bf16=True run, its block weights kept in bfloat16.

With bfloat16 products every product rounds its weight operand to bfloat16
anyway, so a frozen copy of the policy loses nothing by keeping its blocks'
linear weights (most of a model) as bfloat16: half their bytes. The float32
parameters it keeps are the rest (embeddings, norms, biases, the lm_head);
the block matrices' float32 entries are never written, so their pages are
never resident (small pages: see untouched_zeros)."""

import mmap

import numpy as np

from calign import _C
from calign.model.model import Model
from calign.model.reference import InferenceReference

BLOCK_MATRICES = ("qkv_w", "o_w", "up_w", "down_w")


def untouched_zeros(n):
    """float32 zeros [n] whose pages become resident only where written, one
    small page at a time: anonymous memory with transparent huge pages off
    (with them a write of a few norm weights brings in 2 MiB around them)."""
    buffer = mmap.mmap(-1, max(4 * n, 1))
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, np.float32, count=n)


class BF16Reference(InferenceReference):
    """Stands where a reference Model stands in the trainers: a frozen copy
    of `policy`'s current weights (`model`, which refuses what would need the
    float32 block weights). Inference only."""

    def __init__(self, policy):
        self.model = Model(policy.config)
        ours, theirs = self.model, policy
        ours.params = untouched_zeros(ours.params.size)
        ours._engine_params = ours.params[:ours._engine_params.size]
        for role, _, offset, shape in ours._layout:
            if role not in BLOCK_MATRICES:
                size = int(np.prod(shape))
                ours.params[offset:offset + size] = theirs.params[offset:offset + size]
        self._weights = _C.model_bf16_block_weights(theirs._handle, theirs._engine_params)
        _C.model_set_frozen_bf16(ours._handle, self._weights)
        ours._bf16_products = True

    def forward_packed(self, batch, train=False):
        if train:
            raise ValueError("a frozen bfloat16 reference does not train")
        return self.model.forward_packed(batch)

    @property
    def bf16_products(self):
        return True
