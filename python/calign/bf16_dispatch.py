"""Where bf16=True's matrix products run.

With bf16 products on (`Model.bf16_products`, a trainer's `bf16=True`) both
operands of every product are rounded to bfloat16 and multiplied with float32
accumulation. Two backends compute that:

- "onednn": the CPU's bfloat16 units (AVX512-BF16 dot products or AMX tiles)
  through oneDNN's matmul primitive. oneDNN comes from the onednn-cpu-gomp
  wheel, a dependency on x86-64 Linux, and is loaded only on a CPU that has
  such units. The default wherever it can run.
- "emulated": the operands rounded into float32 copies and multiplied by the
  float32 sgemm: the same arithmetic at float32 speed, on any CPU.

The two differ in the order in which float32 sums are added up, and the
units flush denormal operands (below 1.2e-38 in magnitude) to zero. The
environment variable CALIGN_BF16_BACKEND ("onednn" or "emulated") picks one at
import; unset, oneDNN is used where it can run.
"""

import importlib.metadata
import os

from calign import _C

BACKENDS = ("onednn", "emulated")


def _onednn_library():
    """The path of libdnnl.so.3 from the onednn-cpu-gomp distribution, or None."""
    try:
        files = importlib.metadata.distribution("onednn-cpu-gomp").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libdnnl.so.3":
            path = str(f.locate())
            if os.path.exists(path):
                return path
    return None


def _cpu_has_bf16_units():
    features = _C.build_info()["cpu_features"]
    return bool(features.get("avx512bf16") or features.get("amx_bf16"))


def _onednn_unavailable():
    """None when oneDNN can run the products here, else why not (loads it once)."""
    if not _cpu_has_bf16_units():
        return "this CPU has no bfloat16 units (neither AVX512-BF16 nor AMX)"
    path = _onednn_library()
    if path is None:
        return "oneDNN is not installed (pip install onednn-cpu-gomp==2023.2.0)"
    failure = _C.load_onednn(path)
    if failure is not None:
        return f"oneDNN could not be loaded from {path}: {failure}"
    return None


def bf16_backend():
    """The backend bf16 products run on now: "onednn" or "emulated"."""
    return "onednn" if _C.bf16_units() else "emulated"


def set_bf16_backend(name):
    """Run bf16 products on `name` ("onednn" or "emulated"); returns the
    previous backend. "onednn" raises RuntimeError saying why where it cannot
    run (no bfloat16 units, oneDNN not installed or not loadable)."""
    if name not in BACKENDS:
        raise ValueError(f"bf16 backend must be one of {BACKENDS}, not {name!r}")
    previous = bf16_backend()
    if name == "onednn":
        why = _onednn_unavailable()
        if why is not None:
            raise RuntimeError(f"bf16 backend 'onednn' cannot run: {why}")
    _C.set_bf16_units(name == "onednn")
    return previous


def _choose_at_import():
    """CALIGN_BF16_BACKEND's backend (raising if it cannot run); unset, oneDNN
    where it can run, else emulated, without a word."""
    asked = os.environ.get("CALIGN_BF16_BACKEND", "")
    if asked:
        if asked not in BACKENDS:
            raise ValueError(f"CALIGN_BF16_BACKEND must be one of {BACKENDS}, not {asked!r}")
        set_bf16_backend(asked)
    elif _onednn_unavailable() is None:
        _C.set_bf16_units(True)


_choose_at_import()
