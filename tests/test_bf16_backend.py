"""Where bf16 products run (calign.bf16_backend): oneDNN on the CPU's bfloat16
units, or emulated (rounded float32 copies, float32 sgemm). Both must compute
the product of the bfloat16-rounded operands with float32 sums.

The reference is a closed form computed another way: torch rounds the
operands to bfloat16, NumPy multiplies them in float64. Any order of K float32
additions stays within K * 2^-24 * (|A| @ |B|) of that exact product, the
bound every test holds both backends to (test_the_bound_tells_rounding_apart
checks that it is tight enough to tell rounded operands from unrounded ones).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import calign
from calign import bf16_dispatch as backends
from calign.ops import matmul

ONEDNN_MISSING = backends._onednn_unavailable()
needs_onednn = pytest.mark.skipif(ONEDNN_MISSING is not None,
                                  reason=f"oneDNN cannot run here: {ONEDNN_MISSING}")
BACKENDS = ["emulated", pytest.param("onednn", marks=needs_onednn)]


@pytest.fixture
def backend(request):
    """The backend a test runs on; with oneDNN, the test also fails unless
    every product it sent there ran there (a refused one falls back to the
    emulation silently)."""
    previous = calign.set_bf16_backend(request.param)
    done, refused = calign._C.bf16_units_counts()
    yield request.param
    calign.set_bf16_backend(previous)
    if request.param == "onednn":
        now_done, now_refused = calign._C.bf16_units_counts()
        assert now_refused == refused and now_done > done


def rounded(x):
    return torch.tensor(x).bfloat16().double().numpy()


def operands(M, N, K, trans_a, trans_b, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    return a, b


def exact_and_bound(a, b, trans_a, trans_b, alpha=1.0, beta=0.0, c=None):
    """The exact product of the rounded operands, and how far float32 sums
    may stray from it."""
    A = rounded(a).T if trans_a else rounded(a)
    B = rounded(b).T if trans_b else rounded(b)
    exact = alpha * (A @ B)
    scale = abs(alpha) * (np.abs(A) @ np.abs(B))
    if c is not None:
        exact = exact + beta * c.astype(np.float64)
        scale = scale + abs(beta) * np.abs(c)
    K = A.shape[1]
    return exact, (K + 2) * 2.0**-24 * scale + 1e-30


SHAPES = [  # M, N, K: a linear layer, attention-sized blocks, a skinny product, one row
    (256, 384, 96), (64, 70, 16), (3, 5, 1000), (1, 257, 33)]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_product_of_rounded_operands(backend, trans_a, trans_b, shape):
    a, b = operands(*shape, trans_a, trans_b)
    got = matmul(a, b, trans_a=trans_a, trans_b=trans_b, bf16=True)
    exact, bound = exact_and_bound(a, b, trans_a, trans_b)
    assert np.all(np.abs(got - exact) <= bound)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("alpha,beta", [(0.125, 0.0), (1.0, 1.0), (-0.5, 2.0)])
def test_alpha_and_beta(backend, alpha, beta):
    """alpha scales the sum, beta the existing output (attention's 1/sqrt(d),
    the gradients a backward adds into)."""
    a, b = operands(48, 40, 72, False, True, seed=1)
    c = np.random.default_rng(2).standard_normal((48, 40)).astype(np.float32)
    out = c.copy()
    assert matmul(a, b, trans_b=True, bf16=True, alpha=alpha, beta=beta, out=out) is out
    exact, bound = exact_and_bound(a, b, False, True, alpha, beta, c)
    assert np.all(np.abs(out - exact) <= bound)


def test_the_bound_tells_rounding_apart():
    """The float32 product of the unrounded operands breaks the bound almost
    everywhere, so the tests above fail if a backend skips the rounding."""
    a, b = operands(64, 64, 256, False, False, seed=3)
    exact, bound = exact_and_bound(a, b, False, False)
    unrounded = matmul(a, b, bf16=False)
    assert np.mean(np.abs(unrounded - exact) > bound) > 0.9


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_wide_operand_is_blocked_over_the_inner_dimension(backend):
    """Operands larger than the 64 MiB scratch holds at once (the lm_head's
    case) are summed a block of the inner dimension at a time: 2 blocks as
    bfloat16, 3 as float32 copies."""
    a, b = operands(2048, 2048, 8200, False, True, seed=4)
    got = matmul(a, b, trans_b=True, bf16=True)
    exact, bound = exact_and_bound(a, b, False, True)
    assert np.all(np.abs(got - exact) <= bound)


@needs_onednn
@pytest.mark.skipif("CALIGN_BF16_BACKEND" in os.environ, reason="the environment picks it")
def test_onednn_is_the_default_where_it_can_run():
    assert calign.bf16_backend() == "onednn"
    assert calign.build_info()["onednn"].startswith("3.")


@needs_onednn
def test_onednn_runs_its_bfloat16_kernels():
    """oneDNN's own log (ONEDNN_VERBOSE) shows each product ran in one of its
    JIT kernels, not in its scalar reference code, which calign refuses."""
    code = ("import numpy as np, calign\n"
            "a = np.ones((96, 64), np.float32); b = np.ones((96, 80), np.float32)\n"
            "calign.ops.matmul(a, np.ones((64, 80), np.float32), bf16=True)\n"
            "calign.ops.matmul(a, b, trans_a=True, bf16=True)\n"
            "calign.ops.matmul(a, b, trans_a=True, bf16=True, beta=1.0,\n"
            "                  out=np.zeros((64, 80), np.float32))\n")
    out = run_python(code, ONEDNN_VERBOSE="1", ONEDNN_VERBOSE_TIMESTAMP="0")
    assert out.returncode == 0, out.stderr
    kernels = [line.split(",")[4] for line in out.stdout.splitlines() if ",exec,cpu,matmul," in line]
    assert len(kernels) == 3 and not any(k.startswith("ref") for k in kernels)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="bf16 backend must be one of"):
        calign.set_bf16_backend("mkl")


def test_onednn_refused_without_bfloat16_units(monkeypatch):
    monkeypatch.setattr(backends, "_cpu_has_bf16_units", lambda: False)
    before = calign.bf16_backend()
    with pytest.raises(RuntimeError, match="no bfloat16 units"):
        calign.set_bf16_backend("onednn")
    assert calign.bf16_backend() == before


def test_onednn_refused_when_not_installed(monkeypatch):
    monkeypatch.setattr(backends, "_cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(backends, "_onednn_library", lambda: None)
    with pytest.raises(RuntimeError, match="oneDNN is not installed"):
        calign.set_bf16_backend("onednn")


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **env))


def test_environment_variable_picks_the_backend():
    out = run_python("import calign; print(calign.bf16_backend())",
                     CALIGN_BF16_BACKEND="emulated")
    assert out.returncode == 0 and out.stdout.strip() == "emulated"
    out = run_python("import calign", CALIGN_BF16_BACKEND="fast")
    assert out.returncode != 0 and "CALIGN_BF16_BACKEND must be one of" in out.stderr


def test_a_library_that_does_not_load_is_reported():
    """A broken install says what dlopen said and leaves the emulation in place."""
    code = ("import calign\nfrom calign import bf16_dispatch as b\n"
            "b._cpu_has_bf16_units = lambda: True\n"
            "b._onednn_library = lambda: '/nonexistent/libdnnl.so.3'\n"
            "try:\n    calign.set_bf16_backend('onednn')\n"
            "except RuntimeError as e:\n    print(e)\nprint(calign.bf16_backend())\n")
    out = run_python(code, CALIGN_BF16_BACKEND="emulated")
    assert out.returncode == 0, out.stderr
    message, backend = out.stdout.strip().splitlines()
    assert "could not be loaded from /nonexistent/libdnnl.so.3" in message
    assert "No such file" in message and backend == "emulated"


def test_matmul_refuses_an_output_that_overlaps_an_operand():
    a = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        matmul(a, np.ones((4, 4), np.float32), out=a)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(a=np.zeros((2, 3)), b=np.zeros((3, 2), np.float32)), TypeError, "a must have dtype"),
    (dict(a=np.zeros((2, 3), np.float32), b=np.zeros((4, 2), np.float32)), ValueError,
     "inner dimensions differ"),
    (dict(a=np.zeros((2, 3), np.float32), b=np.zeros((3, 2), np.float32), beta=1.0),
     ValueError, "pass out"),
    (dict(a=np.zeros((2, 3), np.float32), b=np.zeros((3, 2), np.float32),
          out=np.zeros((2, 3), np.float32)), ValueError, "out has shape"),
    (dict(a=np.zeros((3, 2), np.float32).T, b=np.zeros((3, 2), np.float32)), ValueError,
     "contiguous"),
    (dict(a=np.zeros((2, 3), np.float32), b=np.zeros((3, 2), np.float32), alpha=np.nan),
     ValueError, "alpha"),
])
def test_matmul_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        matmul(bf16=True, **kwargs)


def test_matmul_writes_into_a_row_block_of_a_wider_output():
    """out may not be a strided view: it must be C-contiguous, so a caller's
    row block works and a column block is refused."""
    a, b = operands(4, 3, 5, False, False, seed=6)
    wide = np.zeros((6, 3), np.float32)
    matmul(a, b, out=wide[1:5])
    np.testing.assert_allclose(wide[1:5], a @ b, rtol=1e-5, atol=1e-6)
    assert not wide[0].any() and not wide[5].any()
    with pytest.raises(ValueError, match="contiguous"):
        matmul(a, b, out=np.zeros((4, 6), np.float32)[:, :3])
