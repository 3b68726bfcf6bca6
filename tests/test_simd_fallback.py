"""The baseline x86-64 path of the vectorised loops (what a CPU without AVX2
runs) against the build under test, which dispatches to AVX2 or AVX-512.

The module builds the extension once more with CALIGN_SIMD=baseline (every
CALIGN_SIMD_CLONES function compiled for baseline x86-64 only) into a
temporary copy of the package, runs `fallback_child.py` with it, and
compares what it computed with the same script run on the build under test:
forward logits and every gradient of GPT-2 (GELU), Llama (SwiGLU) and Motif
(PolyNorm, differential attention) shapes past one attention block, fused
token log-probs, greedy, sampled and bfloat16-weight generation, and an HMM
word aligner's EM. Float32 results may differ in rounding (no FMA in the
baseline), not more."""

import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

import calign

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
CHILD = os.path.join(TESTS, "fallback_child.py")

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64" or not os.path.isfile(os.path.join(ROOT, "setup.py")),
    reason="the clones exist on x86-64 builds from a source tree")


def run_child(package_parent, out):
    # 2 threads: the products' per-thread panels and column blocks run too
    env = dict(os.environ, PYTHONPATH=package_parent, OMP_NUM_THREADS="2")
    done = subprocess.run([sys.executable, CHILD, out], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def baseline_package(tmp_path_factory):
    """A copy of the calign package whose extension has no SIMD clones."""
    root = tmp_path_factory.mktemp("baseline")
    build = root / "build"
    env = dict(os.environ, CALIGN_SIMD="baseline")
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib",
                           str(build / "lib"), "--build-temp", str(build / "temp"), "-j", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    package = root / "pkg" / "calign"
    shutil.copytree(os.path.join(ROOT, "python", "calign"), package,
                    ignore=shutil.ignore_patterns("_C*.so", "libscipy_openblas*.so",
                                                  "__pycache__"))
    for built in (build / "lib" / "calign").iterdir():
        shutil.copy2(built, package / built.name)
    return str(root / "pkg")


@pytest.fixture(scope="module")
def both(baseline_package, tmp_path_factory):
    """(results of the build under test, results of the baseline build)."""
    folder = tmp_path_factory.mktemp("results")
    here = os.path.dirname(os.path.dirname(os.path.abspath(calign.__file__)))
    dispatched = run_child(here, str(folder / "dispatched.npz"))
    baseline = run_child(baseline_package, str(folder / "baseline.npz"))
    return dispatched, baseline


def test_the_baseline_build_is_the_one_the_child_ran(both):
    dispatched, baseline = both
    assert str(baseline["extension"]).startswith(str(baseline["package"]))
    assert str(dispatched["extension"]) != str(baseline["extension"])
    # the build under test carries AVX2 clones of its vectorised loops; the baseline none
    assert dispatched["avx2_clones"] > 0 and baseline["avx2_clones"] == 0
    assert bool(dispatched["simd_clones"]) and not bool(baseline["simd_clones"])


@pytest.mark.parametrize("family", ["gpt2", "llama", "motif"])
def test_forward_and_gradients_agree(both, family):
    dispatched, baseline = both
    for key in (f"{family}_logits", f"{family}_grads", f"{family}_logprobs"):
        scale = max(np.abs(dispatched[key]).max(), 1e-30)
        np.testing.assert_allclose(baseline[key] / scale, dispatched[key] / scale,
                                   rtol=0, atol=2e-5, err_msg=key)


@pytest.mark.parametrize("family", ["gpt2", "llama", "motif"])
def test_generation_agrees(both, family):
    """Greedy tokens and sampled tokens (peaked models: no near ties) are the
    same; their log-probs agree to rounding; so for bfloat16 weights."""
    dispatched, baseline = both
    for key in (f"{family}_greedy", f"{family}_sampled", f"{family}_bf16_greedy"):
        np.testing.assert_array_equal(baseline[key], dispatched[key], err_msg=key)
    for key in (f"{family}_sampled_logprobs", f"{family}_bf16_logprobs"):
        np.testing.assert_allclose(baseline[key], dispatched[key], rtol=0, atol=1e-4,
                                   err_msg=key)


def test_word_alignment_em_agrees(both):
    dispatched, baseline = both
    np.testing.assert_allclose(baseline["hmm_prob"], dispatched["hmm_prob"], rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(baseline["hmm_ll"], dispatched["hmm_ll"], rtol=1e-9)
