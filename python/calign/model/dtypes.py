"""The dtypes checkpoints are published in, and their conversion to and from
float32, the one type calign computes in.

NumPy has no bfloat16. A bfloat16 is the upper half of a float32's bits, so
reading one is exact: its 16 bits, shifted into the top of a uint32, are the
float32. Writing one rounds each float32 to the nearest bfloat16, ties to
even, as torch's `.to(torch.bfloat16)` does."""

import numpy as np

from calign import _C, checks

# The dtypes save_pretrained writes, by their torch names (config.json's "dtype").
SAVE_DTYPES = ("float32", "bfloat16", "float16")
# safetensors' code of each dtype calign reads, and the NumPy type its bytes
# are read as (safetensors is little-endian; bfloat16's bits as uint16).
STORED_TYPES = {"F32": np.dtype("<f4"), "BF16": np.dtype("<u2"), "F16": np.dtype("<f2"),
                "F64": np.dtype("<f8")}
TORCH_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
CODES = {name: code for code, name in TORCH_NAMES.items()}
# torch's CPU conversion writes every NaN as this bfloat16 (a quiet NaN)
BFLOAT16_NAN = np.uint16(0xFFFF)


def bfloat16_to_float32(bits):
    """float32 values of bfloat16 bits (a uint16 array): exact."""
    values = np.empty(np.shape(bits), np.float32)
    convert_into(values, bits, "BF16")
    return values


def float32_to_bfloat16(values):
    """uint16 bits of the bfloat16 nearest each float32, ties to even, as torch
    rounds (in C, the rounding generate(weight_dtype="bfloat16") uses too).
    Finite values beyond bfloat16's largest (3.3895e38) become infinity;
    every NaN becomes BFLOAT16_NAN."""
    values = np.ascontiguousarray(values, np.float32)
    return _C.float32_to_bfloat16(values.reshape(-1)).reshape(values.shape)


def convert_into(out, stored, code):
    """Writes into the float32 array `out` the values of a tensor read as
    STORED_TYPES[code], without another copy of it (a float64 beyond
    float32's range becomes infinity, for the caller to refuse)."""
    if code == "BF16":
        np.left_shift(stored, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        with np.errstate(over="ignore"):
            np.copyto(out, stored, casting="same_kind")


def from_float32(name, values, dtype):
    """float32 `values` (tensor `name`) as the little-endian array safetensors
    stores for `dtype` (a SAVE_DTYPES name); ValueError naming the tensor when
    a finite value has no finite counterpart in that dtype."""
    if dtype == "float32":
        return np.ascontiguousarray(values, STORED_TYPES["F32"])
    if dtype == "bfloat16":
        converted = float32_to_bfloat16(values)
        overflow = (converted & 0x7FFF) == 0x7F80
    else:
        with np.errstate(over="ignore"):  # as numpy and torch round: ties to even
            converted = values.astype(STORED_TYPES["F16"])
        overflow = np.isinf(converted)
    if np.any(overflow & np.isfinite(values)):
        largest = float(np.max(np.abs(values[np.isfinite(values)])))
        raise ValueError(f"tensor {name!r} has values beyond the {dtype} range (largest "
                         f"magnitude {largest:.6g}): save it as float32"
                         + (" or bfloat16" if dtype == "float16" else ""))
    return converted


def checkpoint_dtype(codes):
    """The dtype a checkpoint of tensors stored as `codes` is written back in:
    theirs when they share one calign writes, else float32, which holds every
    value they had (float64 weights are float32 once loaded)."""
    names = {TORCH_NAMES[code] for code in codes}
    if len(names) == 1 and names <= set(SAVE_DTYPES):
        return names.pop()
    return "float32"


def save_dtype(dtype, checkpoint_dtype):
    """The dtype save_pretrained writes: `dtype`, or when it is None the
    model's checkpoint_dtype (each checked to be one of SAVE_DTYPES)."""
    if dtype is None:
        return checks.choice("checkpoint_dtype", checkpoint_dtype, SAVE_DTYPES)
    return checks.choice("dtype", dtype, SAVE_DTYPES)
