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


class CheckpointTensors:
    """The tensors of a checkpoint, read one at a time (a model's weights are
    never held twice in memory): names, shape(name), dtype(name), get(name)."""

    def __init__(self, files):
        from safetensors import SafetensorError, safe_open

        self._handles, self._where = [], {}
        for file in files:
            try:
                handle = safe_open(file, framework="np")
                names = list(handle.keys())
            except (SafetensorError, OSError, ValueError, TypeError) as exc:
                raise CheckpointError(f"cannot read safetensors file {file!r} (truncated or "
                                      f"corrupt?): {exc}") from None
            self._handles.append((file, handle))
            for name in names:
                if name in self._where:  # which copy would be read is not for us to guess
                    raise CheckpointError(f"tensor {name!r} is in both "
                                          f"{self._handles[self._where[name]][0]!r} and {file!r}")
                self._where[name] = len(self._handles) - 1

    def __contains__(self, name):
        return name in self._where

    def __iter__(self):
        return iter(self._where)

    def _slice(self, name):
        return self._handles[self._where[name]][1].get_slice(name)

    def shape(self, name):
        return tuple(self._slice(name).get_shape())

    def dtype(self, name):
        return self._slice(name).get_dtype()

    def get(self, name):
        from safetensors import SafetensorError

        file, handle = self._handles[self._where[name]]
        try:
            return handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {file!r} (truncated or "
                                  f"corrupt?): {exc}") from None


def read_tensors(path):
    """The tensors of the checkpoint in `path` (single file or sharded index)."""
    single = os.path.join(path, WEIGHTS_NAME)
    index = os.path.join(path, INDEX_NAME)
    if os.path.isfile(single):
        return CheckpointTensors([single])
    if os.path.isfile(index):
        return CheckpointTensors([os.path.join(path, shard) for shard in index_shards(index)])
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path!r}")


def index_shards(index):
    """The shard files a sharded checkpoint's index names (sorted, each once):
    paths relative to the index's folder that stay inside it."""
    try:
        with open(index, encoding="utf-8") as f:
            content = json.load(f)
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise CheckpointError(f"{index!r} is not a valid safetensors index: {exc}") from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index!r} is not a valid safetensors index: its 'weight_map' must "
                              f"be an object {{tensor name: shard file}}, got {weight_map!r}")
    shards = set()
    for name, shard in weight_map.items():
        inside = isinstance(shard, str) and shard and not os.path.isabs(shard) and \
            os.pardir not in os.path.normpath(shard).split(os.sep)
        if not inside:
            raise CheckpointError(f"{index!r}: the shard of tensor {name!r} must be a file name "
                                  f"inside the checkpoint folder, got {shard!r}")
        shards.add(shard)
    return sorted(shards)


def check_tensors(tensors, expected_shapes, ignored=()):
    """Raises CheckpointError naming the first missing, extra or mis-shaped
    tensor (tensors: a CheckpointTensors)."""
    missing = sorted(set(expected_shapes) - set(tensors))
    if missing:
        raise CheckpointError(f"the checkpoint lacks tensor {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(tensors) - set(expected_shapes) - set(ignored))
    if extra:
        raise CheckpointError(f"the checkpoint has unexpected tensor {extra[0]!r}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for name, shape in expected_shapes.items():
        if tensors.shape(name) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {tensors.shape(name)} but "
                                  f"the config implies {tuple(shape)}")
        if tensors.dtype(name) not in ("F32", "F64", "F16"):
            raise CheckpointError(f"tensor {name!r} has dtype {tensors.dtype(name)}; calign "
                                  "reads float32 checkpoints (convert it with transformers)")


def copy_into(views, tensors):
    """Copies each tensor into its float32 view, one at a time, refusing NaN or
    infinity after the conversion (a float64 1e300 becomes inf in float32)."""
    for name, view in views.items():
        tensor = tensors.get(name)
        with np.errstate(over="ignore"):
            converted = tensor.astype(view.dtype, copy=False)
        if not np.all(np.isfinite(converted)):
            beyond = np.isfinite(tensor).all()
            raise CheckpointError(f"tensor {name!r} contains "
                                  + (f"values beyond the float32 range (stored as "
                                     f"{tensor.dtype})" if beyond else "NaN or infinity"))
        view[...] = converted


def make_readable(folder):
    """mkdtemp makes 0700 folders: give the finished one the permissions a
    plain mkdir would have (and its files those of a plain open)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            os.chmod(file, 0o666 & ~umask)


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
        make_readable(tmp)
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
