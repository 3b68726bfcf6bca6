"""Reading and writing Hugging Face checkpoint folders (safetensors + config.json)."""

import json
import os
import shutil
import tempfile

import numpy as np

from calign.model import dtypes
from calign.model.generation import GENERATION_CONFIG_NAME

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A weights file that is missing tensors, has extra or mis-shaped ones, or is corrupt."""


class CheckpointTensors:
    """The tensors of a checkpoint, read one at a time (a model's weights are
    never held twice in memory): names, shape(name), dtype(name) (safetensors'
    code: F32, BF16, F16, ...), get(name) (the stored values, bfloat16 as its
    uint16 bits: see dtypes.convert_into)."""

    def __init__(self, files):
        from safetensors import SafetensorError, safe_open

        self._where = {}  # name -> (file, offset of the file's data, the header's entry)
        for file in files:
            try:
                # safetensors checks the header (offsets, sizes, the file's length)
                with safe_open(file, framework="np") as handle:
                    names = list(handle.keys())
                data_start, header = read_header(file)
            except (SafetensorError, OSError, ValueError, TypeError) as exc:
                raise CheckpointError(f"cannot read safetensors file {file!r} (truncated or "
                                      f"corrupt?): {exc}") from None
            for name in names:
                if name in self._where:  # which copy would be read is not for us to guess
                    raise CheckpointError(f"tensor {name!r} is in both "
                                          f"{self._where[name][0]!r} and {file!r}")
                self._where[name] = (file, data_start, header[name])

    def __contains__(self, name):
        return name in self._where

    def __iter__(self):
        return iter(self._where)

    def shape(self, name):
        return tuple(self._where[name][2]["shape"])

    def dtype(self, name):
        return self._where[name][2]["dtype"]

    def get(self, name):
        """The tensor as stored (dtypes.STORED_TYPES[dtype(name)]), read from
        its file into memory of its own."""
        file, data_start, entry = self._where[name]
        stored = dtypes.STORED_TYPES.get(entry["dtype"])
        if stored is None:
            raise CheckpointError(unsupported_dtype(name, entry["dtype"]))
        tensor = np.empty(entry["shape"], stored)
        begin, end = entry["data_offsets"]
        try:
            with open(file, "rb") as f:
                f.seek(data_start + begin)
                read = f.readinto(tensor.reshape(-1).view(np.uint8))
        except OSError as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {file!r}: {exc}") from None
        if read != end - begin or read != tensor.nbytes:
            raise CheckpointError(f"cannot read tensor {name!r} from {file!r} (truncated or "
                                  f"corrupt?): {read} of its {end - begin} bytes")
        return tensor


def read_header(file):
    """(where the data begins, {tensor name: {"dtype", "shape", "data_offsets"}})
    of a safetensors file: an 8-byte little-endian length, then that many bytes
    of JSON (offsets count from the end of it)."""
    with open(file, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def unsupported_dtype(name, code):
    return (f"tensor {name!r} has dtype {code}; calign reads float32, bfloat16, float16 and "
            f"float64 checkpoints (convert a quantized or integer one to one of them first)")


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
        if tensors.dtype(name) not in dtypes.STORED_TYPES:
            raise CheckpointError(unsupported_dtype(name, tensors.dtype(name)))


def copy_into(views, tensors):
    """Converts each tensor into its float32 view (of a model being built),
    one at a time, refusing NaN or infinity after the conversion (a float64
    1e300 becomes inf in float32). Beyond the views, only the tensor being
    read is held."""
    for name, view in views.items():
        stored, code = tensors.get(name), tensors.dtype(name)
        dtypes.convert_into(view, stored, code)
        if not np.all(np.isfinite(view)):
            beyond = code == "F64" and np.isfinite(stored).all()
            raise CheckpointError(f"tensor {name!r} contains "
                                  + (f"values beyond the float32 range (stored as "
                                     f"{stored.dtype})" if beyond else "NaN or infinity"))


def loaded_dtype(tensors, names):
    """The dtype a model loaded from these of the tensors is saved in by default."""
    return dtypes.checkpoint_dtype(tensors.dtype(name) for name in names)


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


def save_safetensors(file, tensors, dtype, metadata=None):
    """Writes float32 tensors {name: array} to a safetensors file in `dtype`
    (dtypes.SAVE_DTYPES), converting and writing one tensor at a time: the
    only copy made is one tensor's, in the new dtype. A value may also be
    lazy, an object with .shape whose __array__ computes the tensor when it
    is written (calign.merge streams averages this way)."""
    code = dtypes.CODES[dtype]
    itemsize = dtypes.STORED_TYPES[code].itemsize
    names = sorted(tensors)
    header, offset = {"__metadata__": dict(metadata or {})}, 0
    for name in names:
        size = int(np.prod(tensors[name].shape)) * itemsize
        header[name] = {"dtype": code, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name in names:  # a lazy tensor (an object with shape and __array__) is made here
            values = np.asarray(tensors[name], np.float32)
            f.write(dtypes.from_float32(name, values, dtype).reshape(-1).view(np.uint8))


def write_checkpoint(path, tensors, config, dtype="float32", extra_files=None):
    """Writes model.safetensors (the float32 `tensors` in `dtype`), config.json
    (its "dtype" saying so, as transformers 5 writes it) and `extra_files`
    ({file name: JSON object}, e.g. generation_config.json) into `path` without
    ever leaving a half-written checkpoint: a new folder is written in full
    under a temporary name and renamed; in an existing folder each file is
    replaced atomically (weights first, config.json last), and a sharded index
    or a generation_config.json an earlier save left is removed (the folder
    then loads as the model saved)."""
    extra_files = dict(extra_files or {})
    config = dict(config, dtype=dtype)
    config.pop("torch_dtype", None)  # transformers 5 reads it as "dtype" and writes only that
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        save_safetensors(os.path.join(tmp, WEIGHTS_NAME), tensors, dtype, {"format": "pt"})
        for name, content in list(extra_files.items()) + [("config.json", config)]:
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(content, f, indent=2, sort_keys=True)
        make_readable(tmp)
        if not os.path.exists(path):
            os.rename(tmp, path)
            return
        for name in [WEIGHTS_NAME] + list(extra_files) + ["config.json"]:
            os.replace(os.path.join(tmp, name), os.path.join(path, name))
        for name in (INDEX_NAME, GENERATION_CONFIG_NAME):
            stale = os.path.join(path, name)
            if name not in extra_files and os.path.exists(stale):
                os.remove(stale)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
