"""Model.score_grpo: the GRPO loss inside the fused log-prob kernel gives the
numbers of the three-call path (scores, calign.losses.grpo_loss, score
backward), for every loss type, both importance-sampling levels, masks, the
KL term and a temperature; and bad input raises naming the argument."""

import numpy as np
import pytest

import calign
from calign import losses

VOCAB = 40000  # a chunk holds 208 rows: completion 0 (240 tokens) takes the two-pass route


@pytest.fixture(scope="module")
def model():
    return calign.Model.from_config(dict(
        model_type="llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=24, vocab_size=VOCAB,
        max_position_embeddings=512), seed=0)


def completions(rng):
    """Two prompts with 2 and 3 completions, one longer than a chunk."""
    return [(rng.integers(0, VOCAB, 5).tolist(), [rng.integers(0, VOCAB, n).tolist()
                                                  for n in (240, 3)]),
            (rng.integers(0, VOCAB, 9).tolist(), [rng.integers(0, VOCAB, n).tolist()
                                                  for n in (60, 1, 17)])]


def as_matrix(flat, lengths):
    out = np.zeros((len(lengths), max(lengths)), np.float32)
    for i, (start, n) in enumerate(zip(np.cumsum(lengths) - lengths, lengths)):
        out[i, :n] = flat[start:start + n]
    return out


CASES = [
    ("dapo", "token", dict()),
    ("grpo", "token", dict(beta=0.2)),
    ("bnpo", "sequence", dict(beta=0.1, use_bias_correction_kl=False)),
    ("dr_grpo", "token", dict(delta=1.5)),
    ("cispo", "token", dict(epsilon_high=0.3)),
    ("sapo", "token", dict()),
    ("luspo", "sequence", dict(off_policy_mask_threshold=0.01)),
    ("vespo", "token", dict()),
]


@pytest.mark.parametrize("loss_type,level,extra", CASES, ids=[c[0] for c in CASES])
def test_score_grpo_equals_scores_then_loss_then_backward(model, loss_type, level, extra):
    rng = np.random.default_rng(3)
    examples = completions(rng)
    batch = calign.pack_shared_prefix(examples)
    lengths = np.array([len(c) for _, cs in examples for c in cs])
    M = int(lengths.sum())
    temperature = 0.7
    hidden = model.forward_packed(batch, train=True)
    logps = model.packed_scores(hidden, batch, temperature)
    # old log-probs near the current ones (ratios within and beyond the clip range)
    old = np.minimum(logps + rng.normal(0, 0.3, M).astype(np.float32), 0.0)
    ref = np.minimum(logps + rng.normal(0, 0.5, M).astype(np.float32), 0.0)
    mask = (rng.random(M) > 0.15).astype(np.float32)
    mask[np.cumsum(lengths)[2]:np.cumsum(lengths)[3]] = 0.0  # a completion out of the loss
    advantages = rng.normal(0, 1, lengths.size)
    settings = losses.grpo_settings(loss_type=loss_type, importance_sampling_level=level,
                                    **extra)
    batch_args = dict(max_completion_length=300, num_items_in_batch=500.0,
                      gradient_accumulation_steps=2)
    ref_arg = ref if settings["beta"] != 0 else None

    model.zero_grad()
    fused = model.score_grpo(hidden, batch, lengths, advantages, mask, settings, old_logps=old,
                             ref_logps=ref_arg, temperature=temperature, **batch_args)
    fused_grads = model.grad_buffer.copy()

    model.zero_grad()
    out = losses.grpo_loss(
        as_matrix(logps, lengths), advantages, as_matrix(mask, lengths),
        old_per_token_logps=as_matrix(old, lengths),
        ref_per_token_logps=None if ref_arg is None else as_matrix(ref, lengths),
        **settings, **batch_args)
    grad = np.concatenate([out.grad_logps[i, :n] for i, n in enumerate(lengths)])
    d_hidden, _ = model.score_backward(hidden, batch, grad.astype(np.float64), temperature)

    np.testing.assert_allclose(fused.logprobs, logps, atol=1e-6)
    np.testing.assert_allclose(fused.grad_logps, grad, rtol=1e-5, atol=1e-9)
    assert fused.loss == pytest.approx(out.loss, rel=1e-6, abs=1e-9)
    assert fused.metrics.keys() == out.metrics.keys()
    for key, value in out.metrics.items():
        if value is None:  # a metric TRL does not log for this loss type
            assert fused.metrics[key] is None, key
        else:
            assert fused.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    np.testing.assert_allclose(fused.d_hidden, d_hidden, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fused_grads, model.grad_buffer, rtol=1e-5, atol=1e-7)
    assert np.abs(fused_grads).max() > 1e-6  # the comparison is not between zeros


def test_score_grpo_defaults_are_on_policy(model):
    """Without old log-probs the ratio is 1 (TRL's num_iterations == 1): the
    token gradient of dapo is -A / num_items."""
    batch = calign.pack_shared_prefix([([1, 2, 3], [[4, 5], [6, 7, 8]])])
    hidden = model.forward_packed(batch, train=True)
    model.zero_grad()
    out = model.score_grpo(hidden, batch, [2, 3], [0.5, -1.0], np.ones(5), losses.grpo_settings())
    np.testing.assert_allclose(out.grad_logps, [-0.1, -0.1, 0.2, 0.2, 0.2], rtol=1e-6)
    assert out.loss == pytest.approx((-0.5 * 2 + 1.0 * 3) / 5, rel=1e-6)  # sum -A / tokens


def test_score_grpo_bad_input(model):
    batch = calign.pack_shared_prefix([([1, 2], [[3, 4], [5]])])
    hidden = model.forward_packed(batch, train=True)
    settings = losses.grpo_settings()
    ok = dict(completion_lengths=[2, 1], advantages=[1.0, -1.0], completion_mask=np.ones(3))

    def call(**changes):
        args = dict(ok, **changes)
        return model.score_grpo(hidden, batch, args.pop("completion_lengths"),
                                args.pop("advantages"), args.pop("completion_mask"),
                                args.pop("settings", settings), **args)

    with pytest.raises(ValueError, match="completion_lengths add up to 4 but there are 3"):
        call(completion_lengths=[2, 2])
    with pytest.raises(ValueError, match="advantages"):
        call(advantages=[1.0])
    with pytest.raises(ValueError, match="advantages contains NaN"):
        call(advantages=[1.0, np.nan])
    with pytest.raises(ValueError, match=r"completion_mask\[1\] = 0.5 must be 0 or 1"):
        call(completion_mask=[1.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"old_logps\[0\] = 0.3 must be a finite log-prob"):
        call(old_logps=[0.3, -1.0, -1.0])
    with pytest.raises(ValueError, match="ref_per_token_logps is required when beta != 0"):
        call(settings=losses.grpo_settings(beta=0.1))
    with pytest.raises(ValueError, match="max_completion_length is required by loss_type"):
        call(settings=losses.grpo_settings(loss_type="dr_grpo"))
    with pytest.raises(ValueError, match="GRPO settings lack beta"):
        call(settings={k: v for k, v in settings.items() if k != "beta"})
    with pytest.raises(ValueError, match="keys besides"):
        call(settings=dict(settings, extra=1))
    with pytest.raises(ValueError, match="loss_type must be one of"):
        call(settings=dict(settings, loss_type="nope"))
    with pytest.raises(ValueError, match="temperature"):
        call(temperature=0.0)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        call(gradient_accumulation_steps=0)
    with pytest.raises(FloatingPointError, match="not finite"):  # a ratio ~e^290: float32 overflows
        call(old_logps=[-300.0, -300.0, -300.0], advantages=[-1.0, -1.0])
