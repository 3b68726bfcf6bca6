"""Thread setting, its default, and the GIL being released around the kernels."""

import functools
import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest

import calign
from calign import _C
from calign import ops


def test_default_honours_omp_num_threads():
    code = "import calign; print(calign.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"
    env.pop("OMP_NUM_THREADS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert int(out.stdout) == len(os.sched_getaffinity(0))


def test_build_info_names_blas_and_kernel():
    info = calign.build_info()
    assert "OpenBLAS" in info["blas_config"]
    assert info["blas_core"]
    assert info["threads"] == calign.get_num_threads()


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.isfile("/proc/cpuinfo"),
                    reason="x86-64 Linux reports its CPU flags in /proc/cpuinfo")
def test_cpu_features_agree_with_the_kernels_flags():
    """What the dispatch sees (cpuid through gcc's builtins) against the flags
    Linux lists for the CPU (avx512_bf16 and amx_bf16 are its names; a kernel
    too old to know them lists neither, so those two are checked one way)."""
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    features = calign.build_info()["cpu_features"]
    for name in ("avx2", "fma", "avx512f"):
        assert features[name] == (name in flags), name
    for name, linux in (("avx512bf16", "avx512_bf16"), ("amx_bf16", "amx_bf16")):
        assert features[name] or linux not in flags, name
    assert calign.build_info()["simd_clones"] is True


def released_the_gil(call):
    """Whether `call`, run on a worker thread, lets another thread run Python
    while it is inside C. Deterministic, not timed: with a switch interval of
    an hour the worker keeps the GIL until it gives it up itself, so the main
    thread's wait returns before the call ends only if the call released it."""
    entering, done = threading.Event(), threading.Event()

    def worker():
        entering.set()
        call()
        done.set()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(3600.0)
    thread = threading.Thread(target=worker)
    try:
        thread.start()
        entering.wait()
        released = not done.is_set()
    finally:
        sys.setswitchinterval(previous)
        thread.join()
    return released


@functools.lru_cache(maxsize=1)
def gil_probes():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((1024, 256), dtype=np.float32)
    weight = rng.standard_normal((16000, 256), dtype=np.float32)
    targets = rng.integers(0, 16000, 1024)
    model = calign.Model.from_config(dict(
        model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, vocab_size=3000, max_position_embeddings=512), seed=0)
    ids = rng.integers(0, 3000, (2, 200))
    # the optimizer's buffers large enough that its call outlasts the main
    # thread's wake-up (a call over before it can take the GIL hides a release)
    buffers = [np.zeros(1 << 24, np.float32) for _ in range(4)]
    return {
        "token_logprobs_backward": lambda: ops.token_logprobs_backward(hidden, weight, targets,
                                                                       np.ones(1024)),
        "token_logprobs": lambda: ops.token_logprobs(hidden, weight, targets),
        "model forward and scores": lambda: model.token_logprobs(ids, ids),
        "model training step": lambda: model.lm_loss_backward(ids, ids),
        "generate": lambda: model.generate([[1, 2, 3]], max_new_tokens=20),
        "optimizer step": lambda: _C.adamw_step(*buffers, step=1, lr=1e-3, beta1=0.9,
                                                beta2=0.999, eps=1e-8, weight_decay=0.0),
    }


@pytest.mark.parametrize("name", sorted(gil_probes()))
def test_gil_is_released_during_a_long_kernel(name):
    assert released_the_gil(gil_probes()[name])


def test_gil_probe_detects_a_call_that_holds_it():
    """The probe's negative control: a pure-Python loop never lets go."""
    assert not released_the_gil(lambda: sum(range(200000)))
