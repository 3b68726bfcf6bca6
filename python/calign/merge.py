"""Averaging checkpoints: the element-wise mean of Hugging Face folders of one
model (Motif 2.6B's "simple moving average" of its last checkpoints; model
soups), read and written one tensor at a time, so memory holds one tensor of
each folder at most, never two models."""

import json
import os

import numpy as np

from calign import checks
from calign.model import checkpoint, dtypes
from calign.model.config import load_config_file

# config.json keys that say how a checkpoint was written, not what model it is
_WRITER_KEYS = ("dtype", "torch_dtype", "transformers_version", "_name_or_path")
# ... and the files of a checkpoint folder that are not the model's (a trainer's state)
_NOT_COPIED = ("config.json", checkpoint.INDEX_NAME, "trainer_state.json")


class CheckpointSources:
    """The tensors of several checkpoint folders of one model (same family,
    same tensor names and shapes), each read on demand."""

    def __init__(self, paths):
        checks.require(isinstance(paths, (list, tuple)) and len(paths) > 0, "paths", paths,
                       "a non-empty list of checkpoint folders")
        self.paths = [os.fspath(p) for p in paths]
        self.configs = [load_config_file(p) for p in self.paths]
        self.tensors = [checkpoint.read_tensors(p) for p in self.paths]
        first = self.configs[0]
        for path, config, tensors in zip(self.paths, self.configs, self.tensors):
            if config.get("model_type") != first.get("model_type"):
                raise ValueError(f"checkpoint {path!r} is a {config.get('model_type')!r} model, "
                                 f"{self.paths[0]!r} a {first.get('model_type')!r} one: only "
                                 "checkpoints of one model can be averaged")
            differing = sorted(k for k in set(config) | set(first) if k not in _WRITER_KEYS
                               and config.get(k) != first.get(k))
            if differing:
                raise ValueError(f"checkpoint {path!r} differs from {self.paths[0]!r} in "
                                 f"config.json's {differing}: only checkpoints of one model "
                                 "can be averaged")
            if set(tensors) != set(self.tensors[0]):
                extra = sorted(set(tensors) ^ set(self.tensors[0]))
                raise ValueError(f"checkpoint {path!r} and {self.paths[0]!r} hold different "
                                 f"tensors ({extra[:5]})")
            for name in tensors:
                if tensors.shape(name) != self.tensors[0].shape(name):
                    raise ValueError(f"tensor {name!r} has shape {tensors.shape(name)} in "
                                     f"{path!r} but {self.tensors[0].shape(name)} in "
                                     f"{self.paths[0]!r}")

    @property
    def names(self):
        return sorted(self.tensors[0])

    def shape(self, name):
        return self.tensors[0].shape(name)

    def as_float32(self, i, name, out):
        """Writes tensor `name` of folder i into the float32 array out."""
        source = self.tensors[i]
        dtypes.convert_into(out, source.get(name), source.dtype(name))


def _weights(weights, n):
    """None (a plain mean) or n non-negative reals with a positive sum, float64."""
    if weights is None:
        return None
    values = np.asarray(weights, np.float64) if not isinstance(weights, np.ndarray) else \
        weights.astype(np.float64)
    checks.require(values.shape == (n,), "weights", weights, f"one weight per path ({n})")
    checks.require(bool(np.all(np.isfinite(values)) and np.all(values >= 0) and
                        values.sum() > 0), "weights", weights,
                   "finite and non-negative, with a positive sum")
    return values


def mean_tensor(sources, name, weights=None, out=None):
    """The mean of tensor `name` over the folders, float32: with no weights
    NumPy's np.mean(np.stack(tensors), axis=0) bit for bit (float32 sums in
    folder order, then one division); with weights NumPy's np.average of the
    float64 tensors, rounded to float32 once."""
    shape = sources.shape(name)
    buffer = np.empty(shape, np.float32)
    if weights is None:
        total = np.empty(shape, np.float32) if out is None else out
        sources.as_float32(0, name, total)
        for i in range(1, len(sources.paths)):
            sources.as_float32(i, name, buffer)
            total += buffer
        total /= len(sources.paths)
        return total
    total = np.zeros(shape, np.float64)
    for i, w in enumerate(weights):
        sources.as_float32(i, name, buffer)
        total += w * buffer.astype(np.float64)
    total /= weights.sum()
    if out is None:
        return total.astype(np.float32)
    out[...] = total
    return out


class _LazyMean:
    """A tensor computed when it is written (checkpoint.save_safetensors)."""

    def __init__(self, sources, name, weights):
        self.sources, self.name, self.weights = sources, name, weights
        self.shape = sources.shape(name)

    def __array__(self, dtype=None, copy=None):
        values = mean_tensor(self.sources, self.name, self.weights)
        return values if dtype is None else values.astype(dtype)


def _extra_files(path):
    """The JSON files of a checkpoint folder other than its config and index
    (tokenizer files, generation_config.json), as objects."""
    extra = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".json") and name not in _NOT_COPIED:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                extra[name] = json.load(f)
    return extra


def average_checkpoints(paths, out_path, weights=None, dtype="float32"):
    """Writes to out_path a checkpoint folder whose every tensor is the
    element-wise mean of that tensor in `paths` (folders of one model: same
    model_type, config and tensor shapes, in any dtype calign reads).

    The average streams: one tensor of each folder is read, averaged and
    written before the next, and the folder appears complete or not at all.
    config.json and the first folder's other JSON files (tokenizer,
    generation config) are copied.

    Args:
        paths: checkpoint folders (HF layout, single or sharded safetensors).
        out_path: the new folder (replaced atomically if it exists).
        weights: None for the plain mean, else one non-negative weight per
            path: sum_i w_i theta_i / sum_i w_i.
        dtype: "float32" (default), "bfloat16" or "float16" for the output.

    Returns:
        out_path.
    """
    sources = CheckpointSources(paths)
    weights = _weights(weights, len(sources.paths))
    checks.choice("dtype", dtype, dtypes.SAVE_DTYPES)
    out_path = os.fspath(out_path)
    checks.require(os.path.abspath(out_path) not in map(os.path.abspath, sources.paths),
                   "out_path", out_path, "a folder other than the averaged ones")
    config = {k: v for k, v in sources.configs[0].items() if k not in _WRITER_KEYS}
    lazy = {name: _LazyMean(sources, name, weights) for name in sources.names}
    checkpoint.write_checkpoint(out_path, lazy, config, dtype=dtype,
                                extra_files=_extra_files(sources.paths[0]))
    return out_path
