"""Thread setting, its default, and the GIL being released around the kernels."""

import os
import subprocess
import sys
import threading
import time

import numpy as np

import calign
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


def test_gil_is_released_during_a_long_kernel():
    """While one thread is inside the kernel, another keeps running Python.

    If the GIL were held, the main thread's loop would stall for the whole
    call; we look at the longest pause between its iterations."""
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((1024, 256), dtype=np.float32)
    weight = rng.standard_normal((16000, 256), dtype=np.float32)
    targets = rng.integers(0, 16000, 1024)
    previous = calign.set_num_threads(1)  # leave a core for the main thread
    try:
        start = time.perf_counter()
        ops.token_logprobs_backward(hidden, weight, targets, np.ones(1024))
        call_seconds = time.perf_counter() - start

        done = threading.Event()
        worker = threading.Thread(target=lambda: (ops.token_logprobs_backward(
            hidden, weight, targets, np.ones(1024)), done.set()))
        longest_pause, last = 0.0, time.perf_counter()
        worker.start()
        while not done.is_set():
            now = time.perf_counter()
            longest_pause, last = max(longest_pause, now - last), now
        worker.join()
    finally:
        calign.set_num_threads(previous)
    assert longest_pause < 0.5 * call_seconds, (longest_pause, call_seconds)
