"""Saved word-alignment models: one .npz of arrays plus JSON metadata,
written atomically and checked when read."""

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

FORMAT = "calign.wordalign/1"


def check_state(path, model, arrays, meta, prefix, keys):
    """That a saved model's meta has `keys` and its table arrays fit its
    vocabularies; else ValueError "<path> is not a saved <model> model: ..."."""
    def fail(why):
        raise ValueError(f"{path!r} is not a saved {model} model: {why}")

    where = f"{prefix[:-1]!r} " if prefix else ""
    if not isinstance(meta, dict):
        fail(f"its {where}metadata are not a JSON object")
    missing = [key for key in keys if key not in meta]
    if missing:
        fail(f"its {where}metadata lack {', '.join(map(repr, missing))}")
    missing = [prefix + name for name in ("row_start", "cols", "prob") if name not in arrays]
    if missing:
        fail(f"it lacks the array{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
    for key in ("source_vocab", "target_vocab"):
        ids = meta[key]
        if not isinstance(ids, dict) or not all(type(i) is int for i in ids.values()) or \
                sorted(ids.values()) != list(range(1, len(ids) + 1)):
            fail(f"its {where}{key} is not a map of tokens to the ids 1, 2, ...")
    row_start, cols, prob = arrays["row_start"], arrays["cols"], arrays["prob"]
    for name, array, dtype in (("row_start", row_start, np.int64), ("cols", cols, np.int32),
                               ("prob", prob, np.float64)):
        if array.dtype != dtype or array.ndim != 1:
            fail(f"the array {prefix + name!r} is not a {np.dtype(dtype).name} vector")
    if len(row_start) != len(meta["source_vocab"]) + 2 or len(prob) != len(cols) or \
            row_start[0] != 0 or row_start[-1] != len(cols):
        fail(f"the arrays {prefix}row_start, {prefix}cols and {prefix}prob do not fit its "
             f"vocabularies")


def write_npz(path, arrays, meta):
    """arrays and the JSON of meta (tagged with FORMAT) in one .npz, written
    atomically (a temporary file in the same folder, then renamed)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    os.close(fd)
    try:
        np.savez(tmp, **arrays, meta=np.frombuffer(json.dumps({"format": FORMAT, **meta}).encode(),
                                                   np.uint8))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_npz(path):
    """(arrays, meta) of a file write_npz wrote; ValueError naming the path
    for anything else."""
    try:
        data = np.load(path)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with data:
            if "meta" not in data.files:
                raise ValueError("the archive has no 'meta' entry")
            meta = json.loads(data["meta"].tobytes().decode())
            arrays = {name: data[name] for name in data.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # a truncated or damaged archive raises BadZipFile, zlib.error or EOFError
        raise ValueError(f"{path!r} is not a saved calign.wordalign model: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a saved calign.wordalign model")
    return arrays, meta
