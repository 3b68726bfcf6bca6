"""Fused kernels on NumPy arrays.

`token_logprobs` computes log softmax(hidden @ weight.T / temperature)[target]
a chunk of rows at a time, so the (tokens x vocab) logits never exist in full:
memory is O(chunk_size * vocab + tokens * hidden_size).
"""

import numpy as np

from calign import _C


def matmul(a, b, *, trans_a=False, trans_b=False, bf16=False, alpha=1.0, beta=0.0, out=None):
    """alpha * op(a) @ op(b) + beta * out, computed as a model's products are.

    op(a) is `a`, or `a.T` with `trans_a` (then `a` is stored [K, M]); the same
    for `b`. With `bf16` both operands are rounded to bfloat16 and multiplied
    with float32 sums, on the backend `calign.bf16_backend()` names; without,
    it is the float32 sgemm. a, b (and out) are C-contiguous float32
    matrices; `out` must not overlap a or b (ValueError). Returns `out` (a new [M, N]
    array when none is given; beta != 0 needs one).
    """
    if out is not None and any(np.may_share_memory(out, x) for x in (a, b)):
        raise ValueError("out must not overlap a or b (the product reads them after writing out)")
    return _C.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bf16=bf16, alpha=alpha, beta=beta,
                     out=out)


def token_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, ignore_index=-100,
                   chunk_size=None, return_stats=False):
    """Log-probability of each target token under the lm_head.

    Args:
        hidden: float32 [N, d], C-contiguous (the final hidden states).
        weight: float32 [V, d] (the lm_head, or the tied input embedding).
        targets: integer [N]; each in [0, V) or equal to `ignore_index`.
        bias: float32 [V] or None.
        temperature: logits are divided by it (> 0).
        ignore_index: target value of rows that are not scored (their outputs are 0).
        chunk_size: rows of logits computed at a time; None picks it from V.
        return_stats: also return a dict of per-row statistics of the tempered
            distribution p = softmax(z): `logsumexp`, `entropy`, `mean_logit`
            (mean of z over the vocabulary), `log_sum_sq_probs` (log sum p^2)
            and `is_top1` (the target has the largest logit), as TRL logs them.

    Returns:
        float32 [N] log-probabilities, or `(logprobs, stats)` with `return_stats`.
    """
    return _C.token_logprobs(hidden, weight, targets, bias=bias, temperature=temperature,
                             ignore_index=ignore_index, chunk_size=chunk_size,
                             return_stats=return_stats)


def token_logprobs_backward(hidden, weight, targets, grad_logprobs, *, bias=None,
                            temperature=1.0, ignore_index=-100, chunk_size=None,
                            return_logprobs=False):
    """Gradients of sum_i grad_logprobs[i] * logprobs[i], recomputing logits chunk-wise.

    Takes the arguments of `token_logprobs` plus `grad_logprobs` (floats [N]).

    Returns:
        `(grad_hidden, grad_weight)`, with `grad_bias` appended when `bias` is
        given, and the forward `logprobs` appended when `return_logprobs` is
        True (they come for free: one call is a fused forward + backward with
        three matrix products in all).
    """
    grad_hidden, grad_weight, grad_bias, logprobs = _C.token_logprobs_backward(
        hidden, weight, targets, grad_logprobs, bias=bias, temperature=temperature,
        ignore_index=ignore_index, chunk_size=chunk_size, return_logprobs=return_logprobs)
    result = (grad_hidden, grad_weight)
    if bias is not None:
        result += (grad_bias,)
    if return_logprobs:
        result += (logprobs,)
    return result
