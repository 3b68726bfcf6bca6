"""A quick check that the fused log-prob kernel agrees with NumPy on this machine."""

import time

import numpy as np

from calign import ops


def numpy_token_logprobs(hidden, weight, targets):
    """log softmax(hidden @ weight.T)[target] with full logits, in float64."""
    logits = hidden.astype(np.float64) @ weight.astype(np.float64).T
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return logits[np.arange(len(targets)), targets] - lse


def run(N=256, d=96, V=5003, seed=0):
    """Returns (max abs error of log-probs, max abs error of grad_hidden, seconds)."""
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((N, d)).astype(np.float32)
    weight = (rng.standard_normal((V, d)) / np.sqrt(d)).astype(np.float32)
    targets = rng.integers(0, V, N)
    start = time.perf_counter()
    grad_hidden, _, logprobs = ops.token_logprobs_backward(
        hidden, weight, targets, np.ones(N), return_logprobs=True)
    seconds = time.perf_counter() - start
    ref = numpy_token_logprobs(hidden, weight, targets)
    logits = hidden.astype(np.float64) @ weight.astype(np.float64).T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(N), targets] -= 1.0
    ref_grad_hidden = -probs @ weight.astype(np.float64)
    return (float(np.abs(logprobs - ref).max()), float(np.abs(grad_hidden - ref_grad_hidden).max()),
            seconds)
