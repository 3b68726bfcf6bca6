"""calign.ops.token_logprobs and its backward against torch autograd on the naive formula."""

import numpy as np
import pytest
import torch

import calign
from calign import ops

IGNORE = -100


def make_problem(N, d, V, seed=0, with_bias=False, ignore_every=0, scale=1.0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((N, d)).astype(np.float32)
    weight = (rng.standard_normal((V, d)) * scale / np.sqrt(d)).astype(np.float32)
    bias = rng.standard_normal(V).astype(np.float32) if with_bias else None
    targets = rng.integers(0, V, N)
    if ignore_every:
        targets[::ignore_every] = IGNORE
    return hidden, weight, bias, targets


def torch_reference(hidden, weight, bias, targets, grad_logprobs, temperature=1.0):
    """The naive formula, float64, with torch autograd for the gradients."""
    h = torch.tensor(hidden, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True) if bias is not None else None
    t = torch.tensor(targets)
    logits = h @ w.T
    if b is not None:
        logits = logits + b
    z = logits / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    mask = t != IGNORE
    logp = torch.where(mask, logp_all.gather(1, t.clamp(min=0)[:, None])[:, 0],
                       torch.zeros((), dtype=torch.float64))
    (logp * torch.tensor(grad_logprobs, dtype=torch.float64)).sum().backward()
    p = logp_all.exp()
    zeros = torch.zeros((), dtype=torch.float64)
    stats = {
        "logsumexp": torch.where(mask, torch.logsumexp(z, -1), zeros),
        "entropy": torch.where(mask, -(p * logp_all).sum(-1), zeros),
        "mean_logit": torch.where(mask, z.mean(-1), zeros),
        "log_sum_sq_probs": torch.where(mask, torch.log((p * p).sum(-1)), zeros),
        "is_top1": mask & (z.argmax(-1) == t),
    }
    grads = (h.grad.numpy(), w.grad.numpy(), b.grad.numpy() if b is not None else None)
    return logp.detach().numpy(), {k: v.detach().numpy() for k, v in stats.items()}, grads


SHAPES = [
    # N, d, V, temperature, bias, ignore_every
    (1, 5, 7, 1.0, False, 0),
    (37, 13, 1003, 0.7, True, 3),
    (64, 12, 50257, 1.0, False, 5),
    (20, 33, 96, 2.5, True, 0),
]


@pytest.mark.parametrize("N,d,V,temperature,with_bias,ignore_every", SHAPES)
def test_forward_and_stats_match_torch(N, d, V, temperature, with_bias, ignore_every):
    hidden, weight, bias, targets = make_problem(N, d, V, with_bias=with_bias,
                                                 ignore_every=ignore_every, scale=3.0)
    ref_logp, ref_stats, _ = torch_reference(hidden, weight, bias, targets, np.zeros(N),
                                             temperature)
    logp, stats = ops.token_logprobs(hidden, weight, targets, bias=bias,
                                     temperature=temperature, return_stats=True)
    assert logp.dtype == np.float32 and logp.shape == (N,)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=2e-5)
    for name in ("logsumexp", "entropy", "mean_logit", "log_sum_sq_probs"):
        np.testing.assert_allclose(stats[name], ref_stats[name], rtol=1e-5, atol=2e-5,
                                   err_msg=name)
    np.testing.assert_array_equal(stats["is_top1"], ref_stats["is_top1"])


@pytest.mark.parametrize("N,d,V,temperature,with_bias,ignore_every", SHAPES)
def test_backward_matches_torch_autograd(N, d, V, temperature, with_bias, ignore_every):
    hidden, weight, bias, targets = make_problem(N, d, V, seed=1, with_bias=with_bias,
                                                 ignore_every=ignore_every, scale=3.0)
    grad_logprobs = np.random.default_rng(2).standard_normal(N)
    ref_logp, _, (ref_gh, ref_gw, ref_gb) = torch_reference(hidden, weight, bias, targets,
                                                            grad_logprobs, temperature)
    out = ops.token_logprobs_backward(hidden, weight, targets, grad_logprobs, bias=bias,
                                      temperature=temperature, return_logprobs=True)
    grad_hidden, grad_weight = out[0], out[1]
    np.testing.assert_allclose(grad_hidden, ref_gh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad_weight, ref_gw, rtol=1e-4, atol=1e-5)
    if with_bias:
        np.testing.assert_allclose(out[2], ref_gb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[-1], ref_logp, rtol=1e-5, atol=2e-5)


def test_all_targets_ignored_gives_zeros():
    hidden, weight, bias, _ = make_problem(6, 8, 11, with_bias=True)
    targets = np.full(6, IGNORE)
    assert not ops.token_logprobs(hidden, weight, targets, bias=bias).any()
    gh, gw, gb = ops.token_logprobs_backward(hidden, weight, targets, np.ones(6), bias=bias)
    assert not gh.any() and not gw.any() and not gb.any()


def test_custom_ignore_index():
    hidden, weight, _, targets = make_problem(5, 4, 9)
    targets[2] = 9999
    logp = ops.token_logprobs(hidden, weight, targets, ignore_index=9999)
    assert logp[2] == 0.0 and (logp[[0, 1, 3, 4]] < 0).all()


def test_empty_batch():
    weight = np.ones((7, 3), np.float32)
    logp = ops.token_logprobs(np.zeros((0, 3), np.float32), weight, np.zeros(0, np.int64))
    assert logp.shape == (0,)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1000])
def test_independent_of_chunk_size(chunk_size):
    hidden, weight, bias, targets = make_problem(45, 10, 301, with_bias=True, ignore_every=4)
    g = np.linspace(-1, 1, 45)
    base = ops.token_logprobs_backward(hidden, weight, targets, g, bias=bias,
                                       return_logprobs=True)
    other = ops.token_logprobs_backward(hidden, weight, targets, g, bias=bias,
                                        chunk_size=chunk_size, return_logprobs=True)
    for a, b in zip(base, other, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_independent_of_thread_count(calign_threads):
    hidden, weight, bias, targets = make_problem(300, 40, 5000, ignore_every=7)
    g = np.ones(300)
    calign_threads(1)
    one = ops.token_logprobs_backward(hidden, weight, targets, g, return_logprobs=True)
    calign_threads(2)
    two = ops.token_logprobs_backward(hidden, weight, targets, g, return_logprobs=True)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_extreme_logits_stay_finite():
    hidden, weight, _, targets = make_problem(8, 6, 50, scale=1e4)
    logp, stats = ops.token_logprobs(hidden, weight, targets, return_stats=True)
    assert np.isfinite(logp).all() and (logp <= 0).all()
    assert all(np.isfinite(v).all() for k, v in stats.items() if k != "is_top1")


# ---- bad input -------------------------------------------------------------

def test_rejects_non_float32_operands():
    hidden, weight, _, targets = make_problem(4, 3, 5)
    with pytest.raises(TypeError, match="hidden must have dtype float32"):
        ops.token_logprobs(hidden.astype(np.float64), weight, targets)
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        ops.token_logprobs(hidden, weight.astype(np.float16), targets)
    with pytest.raises(TypeError, match="hidden must be a numpy.ndarray"):
        ops.token_logprobs(hidden.tolist(), weight, targets)
    with pytest.raises(TypeError, match="targets must have an integer dtype"):
        ops.token_logprobs(hidden, weight, targets.astype(np.float32))


def test_rejects_bad_shapes():
    hidden, weight, bias, targets = make_problem(4, 3, 5, with_bias=True)
    with pytest.raises(ValueError, match="hidden must be 2-dimensional"):
        ops.token_logprobs(hidden[0], weight, targets)
    with pytest.raises(ValueError, match="weight has shape"):
        ops.token_logprobs(hidden, weight[:, :2].copy(), targets)
    with pytest.raises(ValueError, match="targets has length 3 but hidden has length 4"):
        ops.token_logprobs(hidden, weight, targets[:3])
    with pytest.raises(ValueError, match="bias has length 4 but weight has length 5"):
        ops.token_logprobs(hidden, weight, targets, bias=bias[:4].copy())
    with pytest.raises(ValueError, match="hidden must be C-contiguous"):
        ops.token_logprobs(np.asfortranarray(np.ones((4, 3), np.float32)), weight, targets)
    with pytest.raises(ValueError, match="grad_logprobs has length 2"):
        ops.token_logprobs_backward(hidden, weight, targets, np.ones(2))


def test_rejects_targets_out_of_range():
    hidden, weight, _, targets = make_problem(4, 3, 5)
    targets[2] = 5
    with pytest.raises(ValueError, match=r"targets\[2\] = 5 is outside \[0, 5\)"):
        ops.token_logprobs(hidden, weight, targets)
    targets[2] = -1
    with pytest.raises(ValueError, match=r"targets\[2\] = -1"):
        ops.token_logprobs_backward(hidden, weight, targets, np.ones(4))


def test_rejects_bad_settings():
    hidden, weight, _, targets = make_problem(4, 3, 5)
    for temperature in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            ops.token_logprobs(hidden, weight, targets, temperature=temperature)
    with pytest.raises(ValueError, match=r"chunk_size must be an integer in \[1, "):
        ops.token_logprobs(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="grad_logprobs contains NaN"):
        ops.token_logprobs_backward(hidden, weight, targets, np.array([1, np.nan, 1, 1.0]))


def test_non_finite_inputs_raise_instead_of_nan():
    hidden, weight, _, targets = make_problem(4, 3, 5)
    hidden[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity.*row 1"):
        ops.token_logprobs(hidden, weight, targets)
    hidden[1, 0] = 0
    weight[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        ops.token_logprobs_backward(hidden, weight, targets, np.ones(4))


def test_thread_setting_round_trips():
    previous = calign.get_num_threads()
    assert previous >= 1
    assert calign.set_num_threads(1) == previous
    assert calign.get_num_threads() == 1
    calign.set_num_threads(previous)
    for bad in (0, 4097, 2**63, -2**70):  # ints beyond a C long are refused, not wrapped
        with pytest.raises(ValueError, match=r"n must be an integer in \[1, 4096\], got "):
            calign.set_num_threads(bad)
    for bad in ("two", True, 2.0):
        with pytest.raises(TypeError, match="n must be an integer"):
            calign.set_num_threads(bad)
    assert calign.set_num_threads(np.int64(previous)) == previous  # NumPy ints are ints
