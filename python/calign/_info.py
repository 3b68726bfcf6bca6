"""What calign was built with and runs on (for `python -m calign` and benchmarks)."""

import os
import platform

from calign import _C
from calign.bf16_dispatch import bf16_backend


def cpu_model():
    """The CPU's model name as the kernel reports it, or the platform string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_info():
    """A dict: BLAS library, its kernel (core type), threads, cores, CPU model,
    the CPU's features the dispatch cares about (cpu_features: avx2, fma,
    avx512f, avx512bf16, amx_bf16) and whether the vectorised loops were built
    with their AVX2/AVX-512 clones (simd_clones; False for CALIGN_SIMD=baseline),
    the version of oneDNN when it is loaded for bf16 products (onednn, else
    None) and where those products run (bf16_backend: "onednn" or
    "emulated", calign.bf16_backend())."""
    info = dict(_C.build_info())
    info["threads"] = _C.get_num_threads()
    info["cpu"] = cpu_model()
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "")
    info["bf16_backend"] = bf16_backend()
    return info
