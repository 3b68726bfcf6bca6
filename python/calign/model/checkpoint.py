"""Reading and writing Hugging Face checkpoint folders (safetensors + config.json)."""

import json
import os
import shutil
import tempfile

import numpy as np

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A weights file that is missing tensors, has extra or mis-shaped ones, or is corrupt."""


def _read_file(file):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot read safetensors file {file!r} (truncated or corrupt?): "
                              f"{exc}") from None


def read_tensors(path):
    """All tensors of the checkpoint in `path` (single file or sharded index)."""
    single = os.path.join(path, WEIGHTS_NAME)
    index = os.path.join(path, INDEX_NAME)
    if os.path.isfile(single):
        return _read_file(single)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index!r} is not a valid safetensors index: {exc}") from None
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_read_file(os.path.join(path, shard)))
        return tensors
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path!r}")


def check_tensors(tensors, expected_shapes, ignored=()):
    """Raises CheckpointError naming the first missing, extra or mis-shaped tensor."""
    missing = sorted(set(expected_shapes) - set(tensors))
    if missing:
        raise CheckpointError(f"the checkpoint lacks tensor {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(tensors) - set(expected_shapes) - set(ignored))
    if extra:
        raise CheckpointError(f"the checkpoint has unexpected tensor {extra[0]!r}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for name, shape in expected_shapes.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(tensors[name].shape)} but "
                                  f"the config implies {tuple(shape)}")
        if tensors[name].dtype.kind != "f":
            raise CheckpointError(f"tensor {name!r} has dtype {tensors[name].dtype}, not a float")
        if not np.all(np.isfinite(tensors[name])):
            raise CheckpointError(f"tensor {name!r} contains NaN or infinity")


def write_checkpoint(path, tensors, config):
    """Writes model.safetensors and config.json into `path` without ever leaving
    a half-written checkpoint: a new folder is written in full under a temporary
    name and renamed; in an existing folder each file is replaced atomically
    (weights first, config.json last)."""
    from safetensors.numpy import save_file

    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                  os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        if not os.path.exists(path):
            os.rename(tmp, path)
            return
        stale_index = os.path.join(path, INDEX_NAME)
        for name in (WEIGHTS_NAME, "config.json"):
            os.replace(os.path.join(tmp, name), os.path.join(path, name))
        if os.path.exists(stale_index):
            os.remove(stale_index)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
