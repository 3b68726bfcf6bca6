"""The C engine against transformers + torch: logits, gradients, packed shared-prefix
rows, generation, checkpoints, initialisation, optimizers and bad input."""

import json
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

import calign
from calign.testing import tiny_config

# Each family as tiny_model's arguments (calign.testing's defaults, spelled out so that
# this file states what it tests). tiny_model builds the checkpoint with calign; the
# family fixture loads that folder into transformers for the reference.
FAMILIES = {
    # GPT-2: Conv1D layout, learned positions, tied head, vocab not a multiple of 8
    "gpt2": dict(family="gpt2", n_embd=48, n_layer=2, n_head=4, n_positions=160,
                 vocab_size=1003, activation_function="gelu_new", initializer_range=0.2),
    # Llama: GQA with 3 query heads per kv head, head_dim != hidden/heads, biases,
    # the adaptive base frequency of 500000, untied head
    "llama": dict(family="llama", hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=12, intermediate_size=72, vocab_size=997,
                  attention_bias=True, mlp_bias=True, rope_theta=500000.0,
                  initializer_range=0.2, tie_word_embeddings=False),
    # Llama with a tied head and rope_theta 10000
    "llama_tied": dict(family="llama", hidden_size=40, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=None,
                       intermediate_size=56, vocab_size=1001, attention_bias=False,
                       mlp_bias=False, rope_theta=10000.0, initializer_range=0.2,
                       tie_word_embeddings=True),
    "qwen2": dict(family="qwen2", hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, intermediate_size=64, vocab_size=1003,
                  initializer_range=0.2),
    # Qwen3: per-head q/k norm, explicit head_dim != hidden/heads
    "qwen3": dict(family="qwen3", hidden_size=40, num_hidden_layers=2, num_attention_heads=6,
                  num_key_value_heads=2, head_dim=12, intermediate_size=56, vocab_size=999,
                  initializer_range=0.2),
}


def transformers_model(path):
    """The reference: the checkpoint in `path` as transformers runs it (eager attention)."""
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tiny_model):
    path = tiny_model(**FAMILIES[request.param])
    return request.param, transformers_model(path), str(path)


def ids_batch(vocab, B=3, T=11, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (B, T))


def test_logits_match_transformers(family):
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    ids = ids_batch(model.vocab_size)
    expected = hf(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(model.logits(ids), expected, atol=1e-4)
    # right padding, then left padding (positions count real tokens only)
    mask = np.ones_like(ids)
    mask[0, 7:] = 0
    mask[1, :3] = 0
    position_ids = np.clip(mask.cumsum(-1) - 1, 0, None)
    expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(position_ids)).logits.detach().numpy()
    got = model.logits(ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-4)
    assert not got[~real].any()
    np.testing.assert_allclose(model.hidden_states(ids)[0, -1],
                               hf(torch.tensor(ids), output_hidden_states=True)
                               .hidden_states[-1][0, -1].detach().numpy(), atol=1e-4)


def test_few_token_products_match_transformers(family):
    """1, 2 and 5 tokens: the products with few rows (decoding's) take calign's own
    loops instead of OpenBLAS (core/gemm.c); their logits are transformers'."""
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    for T in (1, 2, 5):
        ids = ids_batch(model.vocab_size, B=1, T=T, seed=10 + T)
        expected = hf(torch.tensor(ids)).logits.detach().numpy()
        np.testing.assert_allclose(model.logits(ids), expected, atol=1e-4)


def test_gradients_match_torch(family):
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    ids = ids_batch(model.vocab_size, seed=1)
    labels = ids.copy()
    labels[0, :4] = -100
    mask = np.ones_like(ids)
    mask[2, 8:] = 0
    labels[2, 8:] = -100
    hf.zero_grad()
    out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    out.loss.backward()
    loss, grads = model.loss_and_grad(ids, labels, mask)
    assert loss == pytest.approx(out.loss.item(), abs=1e-5)
    params = dict(hf.named_parameters())
    assert set(grads) == set(params) - ({"lm_head.weight"} if name in ("gpt2", "llama_tied")
                                        else set())
    for key, grad in grads.items():
        expected = params[key].grad.numpy()
        # relative to the tensor's largest entry: robust where single entries are ~0
        assert np.abs(grad - expected).max() <= 1e-3 * np.abs(expected).max() + 1e-7, key


def test_token_logprobs_are_shifted_like_transformers(family):
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    ids = ids_batch(model.vocab_size, B=2, T=9, seed=2)
    labels = ids.copy()
    labels[1, 5] = -100
    got = model.token_logprobs(ids, labels)
    logp = hf(torch.tensor(ids)).logits.log_softmax(-1)[:, :-1]
    expected = logp.gather(2, torch.tensor(ids[:, 1:])[..., None])[..., 0].detach().numpy()
    expected[1, 4] = 0.0
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_shared_prefix_rows_equal_separate_rows(family):
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    rng = np.random.default_rng(3)
    V = model.vocab_size
    examples = [(rng.integers(0, V, 5).tolist(), [rng.integers(0, V, 3).tolist(),
                                                  rng.integers(0, V, 6).tolist()]),
                (rng.integers(0, V, 2).tolist(), [rng.integers(0, V, 4).tolist(),
                                                  rng.integers(0, V, 1).tolist(),
                                                  rng.integers(0, V, 2).tolist()])]
    batch = calign.pack_shared_prefix(examples)
    logps = model.packed_token_logprobs(batch)
    for i, (prompt, completions) in enumerate(examples):
        for k, completion in enumerate(completions):
            row = torch.tensor([prompt + completion])
            logp = hf(row).logits[0].log_softmax(-1)[len(prompt) - 1:-1]
            expected = logp.gather(1, torch.tensor(completion)[:, None])[:, 0].detach().numpy()
            np.testing.assert_allclose(logps[batch.completion_slices[i][k]], expected, atol=1e-4)


def test_score_backward_gives_the_forward_statistics(family):
    """SFT's one-pass scoring: the backward's log-probs and statistics are the forward's."""
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    rng = np.random.default_rng(6)
    batch = calign.pack_shared_prefix([(rng.integers(0, model.vocab_size, 4).tolist(),
                                        [rng.integers(0, model.vocab_size, 5).tolist()])
                                       for _ in range(3)])
    hidden = model.forward_packed(batch, train=True)
    logps, stats = model.packed_scores(hidden, batch, return_stats=True)
    grad = np.full(logps.size, -0.25)
    d_hidden, logps_b, stats_b = model.score_backward(hidden, batch, grad, return_stats=True)
    np.testing.assert_allclose(logps_b, logps, atol=1e-6)
    for key in ("entropy", "mean_logit", "log_sum_sq_probs"):
        np.testing.assert_allclose(stats_b[key], stats[key], atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(stats_b["is_top1"], stats["is_top1"])
    d_plain, _ = model.score_backward(hidden, batch, grad)
    np.testing.assert_array_equal(d_hidden, d_plain)


@pytest.mark.parametrize("loss_type,extra", [
    ("sigmoid", {}), ("ipo", {}), ("robust", dict(label_smoothing=0.2)),
    (["sigmoid", "bco_pair"], dict(loss_weights=[0.7, 0.3])),
    ("sigmoid", dict(f_divergence_type="js_divergence")), ("scpo", dict(scpo_alpha=0.5))])
def test_score_dpo_pairs_equals_scores_then_loss_then_backward(loss_type, extra):
    """The fused pass (chunks of whole pairs, loss inside) gives the numbers of the
    three-call path: scores, calign.losses.dpo_loss, score backward. With vocab 40000
    a chunk holds 208 rows: the first pair (240 rows) takes the two-pass route, the
    next two share a chunk, the last has one of its own."""
    model = calign.Model.from_config(dict(
        model_type="llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=24, vocab_size=40000,
        max_position_embeddings=512), seed=0)
    rng = np.random.default_rng(7)
    examples = [(rng.integers(0, 40000, P).tolist(), [rng.integers(0, 40000, c).tolist(),
                                                      rng.integers(0, 40000, r).tolist()])
                for P, c, r in ((5, 150, 90), (30, 2, 7), (1, 120, 1), (8, 60, 61))]
    batch = calign.pack_shared_prefix(examples)
    lengths = np.array([len(c) for _, cs in examples for c in cs])
    ref = -np.abs(rng.normal(0, 50, (4, 2))) - lengths.reshape(4, 2) * 10.5
    token_weights = np.where(rng.random(lengths.sum()) < 0.3, 0.5, 1.0)
    weights = np.array([1.0, 0.5, 2.0, 1.5])
    settings = calign.losses.dpo_settings(beta=0.3, loss_type=loss_type, **extra)
    hidden = model.forward_packed(batch)

    model.zero_grad()
    fused = model.score_dpo_pairs(hidden, batch, lengths, ref, settings, token_weights, weights,
                                  grad_scale=0.25)
    fused_grads = model.grad_buffer.copy()

    model.zero_grad()
    logps, stats = model.packed_scores(hidden, batch, return_stats=True)
    ends = np.cumsum(lengths)
    policy = np.add.reduceat(logps * token_weights, ends - lengths).reshape(4, 2)
    out = calign.losses.dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=0.3,
                                 loss_type=loss_type, chosen_lengths=lengths[0::2],
                                 rejected_lengths=lengths[1::2], weights=weights,
                                 return_grad=True, **extra)
    grad = np.stack([out.grad_chosen, out.grad_rejected], axis=1).ravel()
    d_hidden, _ = model.score_backward(hidden, batch,
                                       0.25 * np.repeat(grad, lengths) * token_weights)

    np.testing.assert_allclose(fused.logprobs, logps, atol=1e-6)
    np.testing.assert_allclose(fused.policy, policy, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fused.losses, out.losses, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fused.chosen_rewards, out.chosen_rewards, rtol=1e-9)
    for key in ("entropy", "mean_logit"):
        np.testing.assert_allclose(fused.stats[key], stats[key], atol=1e-5)
    np.testing.assert_allclose(fused.d_hidden, d_hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused_grads, model.grad_buffer, rtol=1e-5, atol=1e-6)
    assert np.abs(fused_grads).max() > 1e-5  # the comparison is not between zeros


def test_score_dpo_pairs_bad_input():
    model = calign.Model.from_config(dict(
        model_type="llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=24, vocab_size=50, max_position_embeddings=64))
    batch = calign.pack_shared_prefix([([1, 2], [[3, 4], [5]])])
    hidden = model.forward_packed(batch)
    settings = calign.losses.dpo_settings()
    ref = np.array([[-3.0, -2.0]])
    with pytest.raises(ValueError, match="completion_lengths add up to 4 but there are 3"):
        model.score_dpo_pairs(hidden, batch, [2, 2], ref, settings)
    with pytest.raises(ValueError, match="chosen and a rejected"):
        model.score_dpo_pairs(hidden, batch, [3], ref, settings)
    with pytest.raises(ValueError, match=r"completion_lengths\[0\] = 4611686018427387904: every completion needs"):
        model.score_dpo_pairs(hidden, batch, [1 << 62, (1 << 62) + 3], ref, settings)  # sum wraps
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        model.score_dpo_pairs(hidden, batch, [2, 1], np.array([[np.nan, -2.0]]), settings)
    with pytest.raises(ValueError, match="weights"):
        model.score_dpo_pairs(hidden, batch, [2, 1], ref, settings, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="loss_type"):
        calign.losses.dpo_settings(loss_type="nope")
    with pytest.raises(ValueError, match="loss_type must be a name or a list of names"):
        calign.losses.dpo_settings(loss_type=None)
    with pytest.raises(ValueError, match="loss_weights must be a list of numbers"):
        calign.losses.dpo_settings(loss_weights=5)
    assert calign.losses.dpo_settings(scpo_alpha=np.float32(0.5))["scpo_alpha"] == 0.5  # NumPy numbers pass
    with pytest.raises(ValueError, match="grad_scale must be a finite number"):
        model.score_dpo_pairs(hidden, batch, [2, 1], ref, settings, grad_scale=float("nan"))
    with pytest.raises(ValueError, match=r"ref_logps must have shape \[pairs, 2\]"):
        model.score_dpo_pairs(hidden, batch, [2, 1], ref[0], settings)
    for coupled in ("aot", "aot_unpaired", "sft"):
        with pytest.raises(ValueError, match="couple a batch's pairs"):
            model.score_dpo_pairs(hidden, batch, [2, 1], ref,
                                  calign.losses.dpo_settings(loss_type=coupled))
    with pytest.raises(ValueError, match="hidden must have hidden_size columns"):
        model.score_dpo_pairs(hidden[:, :8].copy(), batch, [2, 1], ref, settings)
    with pytest.raises(ValueError, match="hidden must have hidden_size columns"):
        model.packed_scores(hidden[:, :8].copy(), batch)
    with pytest.raises(TypeError, match="hidden"):
        model.score_backward(hidden.astype(np.float64), batch, np.ones(3))


def long_examples(V, seed):
    """Rows longer than one attention block (64 query rows): a prompt of 70
    tokens shared by completions of 80 and 45, and a second, shorter example."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V, 70).tolist(), [rng.integers(0, V, 80).tolist(),
                                               rng.integers(0, V, 45).tolist()]),
            (rng.integers(0, V, 9).tolist(), [rng.integers(0, V, 66).tolist(),
                                              rng.integers(0, V, 3).tolist()])]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_long_branched_rows_gradients_match_torch(family, checkpointing):
    """d sum(completion log-probs) of shared-prefix rows spanning several attention
    blocks equals torch's on each prompt + completion row separately, with and
    without activation checkpointing."""
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    model.gradient_checkpointing = checkpointing
    examples = long_examples(model.vocab_size, seed=4)
    batch = calign.pack_shared_prefix(examples)
    model.zero_grad()
    hidden = model.forward_packed(batch, train=True)
    n_scores = batch.score_rows.size
    d_hidden, logps = model.score_backward(hidden, batch, np.ones(n_scores))
    model.backward_packed(batch, d_hidden)
    hf.zero_grad()
    total = 0.0
    for i, (prompt, completions) in enumerate(examples):
        for k, completion in enumerate(completions):
            logp = hf(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
            picked = logp[len(prompt) - 1:-1].gather(1, torch.tensor(completion)[:, None])[:, 0]
            np.testing.assert_allclose(logps[batch.completion_slices[i][k]],
                                       picked.detach().numpy(), atol=1e-4)
            total = total + picked.sum()
    total.backward()
    params = dict(hf.named_parameters())
    for key, grad in model.grads().items():
        expected = params[key].grad.numpy()
        assert np.abs(grad - expected).max() <= 1e-3 * np.abs(expected).max() + 1e-7, key


def test_gradient_checkpointing_same_gradients_less_memory(family):
    name, hf, path = family
    full, checkpointed = calign.Model.from_pretrained(path), calign.Model.from_pretrained(path)
    checkpointed.gradient_checkpointing = True
    ids = ids_batch(full.vocab_size, B=3, T=30, seed=5)
    loss, grads = full.loss_and_grad(ids, ids)
    loss_c, grads_c = checkpointed.loss_and_grad(ids, ids)
    assert loss_c == loss
    for key in grads:  # the same floats: the recomputed forward is the same computation
        np.testing.assert_array_equal(grads_c[key], grads[key], err_msg=key)
    assert checkpointed.activation_arena_bytes() < full.activation_arena_bytes()


def test_greedy_generation_matches_transformers(family):
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    prompts = [[5, 17, 2], [9], [4, 4, 8, 30, 1]]
    got = model.generate(prompts, max_new_tokens=6)
    for prompt, tokens in zip(prompts, got, strict=True):
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                               pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
        assert tokens == expected
    eos = got[0][2]
    stopped = model.generate([prompts[0]], max_new_tokens=6, eos_token_id=eos)[0]
    assert stopped == got[0][:got[0].index(eos) + 1]


def test_sampling_is_seeded(family):
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.9, top_k=20, top_p=0.9,
              num_return_sequences=3)
    a = model.generate([[1, 2, 3], [4]], seed=7, **kw)
    assert a == model.generate([[1, 2, 3], [4]], seed=7, **kw)
    assert a != model.generate([[1, 2, 3], [4]], seed=8, **kw)
    assert len(a) == 6 and all(len(s) == 8 for s in a)
    assert model.generate([[1, 2, 3]], max_new_tokens=5, do_sample=True, top_k=1, seed=3) == \
        model.generate([[1, 2, 3]], max_new_tokens=5)


def test_a_shard_of_a_batch_given_its_place_samples_what_the_batch_does(family):
    """Prompts 2..4 of a batch, generated alone with first_prompt_index=2, draw
    the batch's tokens for them (the ranks of an online RL run share out a
    generation batch so); their log-probs agree to float32 rounding (rows
    batched otherwise)."""
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    prompts = [[1, 2, 3], [4], [6, 7, 8, 9], [3, 3], [2]]
    kw = dict(max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=11,
              return_logprobs=True)
    tokens, logps = model.generate(prompts, **kw)
    shard, shard_logps = model.generate(prompts[2:], first_prompt_index=2, **kw)
    assert shard == tokens[6:]
    for a, b in zip(shard_logps, logps[6:], strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert model.generate(prompts[2:], **kw)[0] != tokens[6:]  # its place matters
    with pytest.raises(ValueError, match="first_prompt_index"):
        model.generate(prompts, first_prompt_index=-1, **kw)


@pytest.fixture(scope="module")
def sampling_model(tiny_model):
    """A GPT-2 with peaked next-token distributions (large initial weights)."""
    path = tiny_model(**dict(FAMILIES["gpt2"], initializer_range=0.5), seed=1)
    return transformers_model(path), calign.Model.from_pretrained(path)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.6, 0, 1.0), (0.8, 40, 1.0), (1.0, 0, 0.7), (0.7, 100, 0.9), (1.3, 3, 1.0),
    (4.0, 0, 0.95)])  # the last: a flat distribution whose nucleus holds many small tokens
def test_sampling_follows_transformers_warpers(sampling_model, temperature, top_k, top_p):
    """20000 one-token samples of one prompt against the distribution that
    transformers' temperature, top-k and top-p warpers leave: no token outside
    it, every token of mass >= 0.002 drawn, frequencies within 4.5 sigma."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    hf, model = sampling_model
    prompt, N = [5, 17, 2], 20000
    scores = hf(torch.tensor([prompt])).logits[:, -1].detach().double()
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    q = torch.softmax(scores, -1)[0].numpy()
    samples = model.generate([prompt], max_new_tokens=1, do_sample=True, temperature=temperature,
                             top_k=top_k, top_p=top_p, num_return_sequences=N, seed=11)
    counts = np.bincount([s[0] for s in samples], minlength=q.size)
    assert counts[q == 0].sum() == 0
    assert (counts[q >= 0.002] > 0).all()
    frequency = counts / N
    assert (np.abs(frequency - q) <= 4.5 * np.sqrt(q * (1 - q) / N) + 2 / N).all()


def test_save_pretrained_loads_in_transformers(family, tmp_path):
    name, hf, path = family
    model = calign.Model.from_pretrained(path)
    model.params += 0.01  # something transformers has not seen
    model.save_pretrained(tmp_path / "saved")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = ids_batch(model.vocab_size, seed=4)
    np.testing.assert_allclose(model.logits(ids), again(torch.tensor(ids)).logits.detach().numpy(),
                               atol=1e-4)
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".")]


def test_loads_what_transformers_saves(family, tmp_path):
    """The family's checkpoint was written by calign; transformers' own
    save_pretrained of it (its config.json spelling, e.g. rope_parameters, and
    its weight files) loads into the same tensors."""
    name, hf, path = family
    hf.save_pretrained(tmp_path / "saved")
    ours = calign.Model.from_pretrained(path).state_dict()
    again = calign.Model.from_pretrained(str(tmp_path / "saved")).state_dict()
    assert again.keys() == ours.keys()
    for key, tensor in ours.items():
        np.testing.assert_array_equal(again[key], tensor, err_msg=key)


def test_from_config_initialises_like_transformers():
    config = tiny_config(**FAMILIES["llama"])
    a = calign.Model.from_config(config, seed=0)
    b = calign.Model.from_config(config, seed=0)
    np.testing.assert_array_equal(a.params, b.params)
    sd = a.state_dict()
    assert sd["model.layers.0.self_attn.q_proj.weight"].std() == pytest.approx(0.2, rel=0.05)
    assert (sd["model.layers.1.input_layernorm.weight"] == 1).all()
    assert (sd["model.layers.0.self_attn.q_proj.bias"] == 0).all()
    assert not np.array_equal(calign.Model.from_config(config, seed=1).params, a.params)


# ---- optimizers ---------------------------------------------------------------------------

def test_adamw_and_sgd_match_torch():
    """One family is enough: the optimizers only see the flat buffers."""
    config = tiny_config(**FAMILIES["llama"])
    rng = np.random.default_rng(5)
    for make_ours, make_theirs in [
        (lambda m: calign.optim.AdamW(m, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
         lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)),
        (lambda m: calign.optim.SGD(m, lr=1e-2, momentum=0.9, weight_decay=0.01, nesterov=True),
         lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.01, nesterov=True)),
    ]:
        model = calign.Model.from_config(config, seed=0)
        params = {n: torch.nn.Parameter(torch.tensor(v.copy())) for n, v in
                  model.state_dict().items()}
        ours, theirs = make_ours(model), make_theirs(list(params.values()))
        for _ in range(5):
            for n, g in model.grads().items():
                g[...] = rng.standard_normal(g.shape)
                params[n].grad = torch.tensor(g.copy())
            ours.step()
            theirs.step()
        for n, v in model.state_dict().items():
            np.testing.assert_allclose(v, params[n].detach().numpy(), rtol=1e-5, atol=1e-6)
    # clipping
    model.grad_buffer[...] = rng.standard_normal(model.grad_buffer.size)
    flat = torch.nn.Parameter(torch.zeros(model.grad_buffer.size))
    flat.grad = torch.tensor(model.grad_buffer.copy())
    norm = calign.optim.clip_grad_norm(model, 1.0)
    assert norm == pytest.approx(torch.nn.utils.clip_grad_norm_([flat], 1.0).item(), rel=1e-5)
    np.testing.assert_allclose(model.grad_buffer, flat.grad.numpy(), rtol=1e-5)


def test_optimizer_state_round_trips(tmp_path):
    config = tiny_config(**FAMILIES["llama_tied"])
    a, b = calign.Model.from_config(config), calign.Model.from_config(config)
    opt_a, opt_b = calign.optim.AdamW(a), calign.optim.AdamW(b)
    rng = np.random.default_rng(0)
    for _ in range(3):
        a.grad_buffer[...] = rng.standard_normal(a.grad_buffer.size)
        opt_a.step()
    opt_a.save(str(tmp_path / "opt.safetensors"))
    b.params[...] = a.params
    opt_b.load(str(tmp_path / "opt.safetensors"))
    g = rng.standard_normal(a.grad_buffer.size).astype(np.float32)
    a.grad_buffer[...] = g
    b.grad_buffer[...] = g
    opt_a.step()
    opt_b.step()
    np.testing.assert_array_equal(a.params, b.params)
    with pytest.raises(ValueError, match="holds 'adamw' state, not 'sgd'"):
        calign.optim.SGD(b, momentum=0.9).load(str(tmp_path / "opt.safetensors"))


# ---- bad input ----------------------------------------------------------------------------

@pytest.fixture
def saved(tiny_model):
    return tiny_model(**FAMILIES["gpt2"])


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_bad_config_files(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        calign.Model.from_pretrained(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        calign.Model.from_pretrained(str(broken))
    for changes, match in [(dict(model_type="mamba"), "model_type 'mamba'"),
                           (dict(model_type="llama", hidden_size=48, num_hidden_layers=1,
                                 num_attention_heads=4, intermediate_size=8, vocab_size=10,
                                 rope_scaling={"rope_type": "yarn", "factor": 2.0}),
                            "rope_scaling of type 'yarn'"),
                           (dict(model_type="qwen2", hidden_size=48, num_hidden_layers=1,
                                 num_attention_heads=4, intermediate_size=8, vocab_size=10,
                                 use_sliding_window=True), "use_sliding_window"),
                           (dict(model_type="llama", hidden_size=48, num_hidden_layers=1,
                                 num_attention_heads=4, intermediate_size=8, vocab_size=10,
                                 num_local_experts=8), "num_local_experts")]:
        with pytest.raises(ValueError, match=match):
            calign.Model(dict(json.loads((saved / "config.json").read_text()), **changes))


def test_bad_weight_files(saved, tmp_path):
    tensors = safetensors.numpy.load_file(str(saved / "model.safetensors"))
    cases = {
        "missing": ({k: v for k, v in tensors.items() if k != "transformer.ln_f.bias"},
                    "lacks tensor 'transformer.ln_f.bias'"),
        "extra": (dict(tensors, **{"transformer.h.9.foo": np.zeros(3, np.float32)}),
                  "unexpected tensor 'transformer.h.9.foo'"),
        "shape": (dict(tensors, **{"transformer.wpe.weight": np.zeros((5, 48), np.float32)}),
                  r"'transformer.wpe.weight' has shape \(5, 48\)"),
    }
    for name, (content, match) in cases.items():
        folder = tmp_path / name
        shutil.copytree(saved, folder)
        safetensors.numpy.save_file(content, str(folder / "model.safetensors"))
        with pytest.raises(ValueError, match=match):
            calign.Model.from_pretrained(str(folder))
    truncated = tmp_path / "truncated"
    shutil.copytree(saved, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cannot read safetensors file"):
        calign.Model.from_pretrained(str(truncated))
    (truncated / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="cannot read safetensors file"):
        calign.Model.from_pretrained(str(truncated))
    (truncated / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        calign.Model.from_pretrained(str(truncated))


def test_bad_token_input(saved):
    model = calign.Model.from_pretrained(str(saved))
    with pytest.raises(ValueError, match="token id 1003, outside"):
        model.logits([[1, 2, 1003]])
    with pytest.raises(ValueError, match="token id -1"):
        model.logits([[1, -1, 3]])
    with pytest.raises(ValueError, match="longer than the model's maximum positions"):
        model.logits([list(range(161))])
    with pytest.raises(ValueError, match="empty"):
        model.logits(np.zeros((0, 4), np.int64))
    with pytest.raises(ValueError, match="different lengths; pad them and pass attention_mask"):
        model.logits([[1, 2, 3], [4, 5]])
    with pytest.raises(TypeError, match="integer token ids"):
        model.logits([[1.0, 2.0]])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.logits([[1, 2, 3]], attention_mask=[[1, 1]])
    with pytest.raises(ValueError, match="exceeds the model's maximum positions"):
        model.generate([[1, 2]], max_new_tokens=159)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate([[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer in \[1, 159\]"):
        model.generate([[1, 2]], max_new_tokens=10**12)  # beyond a C int too
    with pytest.raises(ValueError, match="num_return_sequences must be an integer in"):
        model.generate([[1, 2]], max_new_tokens=2, do_sample=True, num_return_sequences=2**40)
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate([[1, 2]], max_new_tokens=2, do_sample=True, num_return_sequences=True)
    for temperature in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            model.generate([[1, 2]], max_new_tokens=2, do_sample=True, temperature=temperature)
    with pytest.raises(ValueError, match="divided by the temperature .* overflow float32"):
        model.generate([[1, 2]], max_new_tokens=2, do_sample=True, temperature=1e-45)
    broken = calign.Model.from_pretrained(str(saved))
    broken.state_dict()["transformer.wte.weight"][5, :] = np.nan  # one token's logit NaN
    for do_sample in (False, True):
        with pytest.raises(FloatingPointError, match="logits at new token 1 are not finite"):
            broken.generate([[1, 2]], max_new_tokens=2, do_sample=do_sample)
    # NumPy scalars are numbers like any other
    out = model.generate([[1, 2]], max_new_tokens=np.int64(3), do_sample=True,
                         temperature=np.float32(0.5), top_p=np.float64(0.9),
                         num_return_sequences=np.int32(2), seed=0)
    assert [len(s) for s in out] == [3, 3]
    for temperature in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            model.token_logprobs([[1, 2, 3]], [[1, 2, 3]], temperature=temperature)
    with pytest.raises(TypeError, match="gradient_checkpointing must be True or False"):
        model.gradient_checkpointing = "yes"
    with pytest.raises(RuntimeError, match="needs a training forward"):
        batch = calign.pack_shared_prefix([([1, 2], [[3]])])
        model.backward_packed(batch, np.zeros((3, 48), np.float32))


def test_backward_refuses_another_batch_of_the_same_length():
    """The arena is carved for the forward's batch: a backward on a batch with
    as many tokens but longer rows must be refused, not overrun it."""
    model = calign.Model.from_config(dict(
        model_type="llama", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=24, vocab_size=50, max_position_embeddings=512))
    short_rows = calign.pack_shared_prefix([([t], [[1]]) for t in range(1, 41)])  # 40 rows of 2
    one_row = calign.pack_shared_prefix([(list(range(1, 41)), [list(range(1, 41))])])
    assert one_row.num_tokens == short_rows.num_tokens
    hidden = model.forward_packed(short_rows, train=True)
    with pytest.raises(RuntimeError, match="same batch"):
        model.backward_packed(one_row, np.ones_like(hidden))
    model.backward_packed(short_rows, np.ones_like(hidden))  # the batch it saw is fine


@pytest.mark.parametrize("checkpointing", [False, True])
def test_more_threads_for_the_backward_than_the_forward(checkpointing):
    """Raising the thread count between a training forward and its backward
    (the per-thread scratch was sized for the forward's) gives the same
    gradients as one thread throughout."""
    config = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=48, vocab_size=101,
                  max_position_embeddings=512)
    rng = np.random.default_rng(0)
    batch = calign.pack_shared_prefix([(rng.integers(0, 101, 150).tolist(),
                                        [rng.integers(0, 101, 100).tolist(),
                                         rng.integers(0, 101, 30).tolist()])])

    def grads(forward_threads, backward_threads):
        model = calign.Model.from_config(config, seed=0)
        model.gradient_checkpointing = checkpointing
        calign.set_num_threads(forward_threads)
        hidden = model.forward_packed(batch, train=True)
        d_hidden, _ = model.score_backward(hidden, batch, np.ones(batch.score_rows.size))
        calign.set_num_threads(backward_threads)
        model.backward_packed(batch, d_hidden)
        return model.grad_buffer.copy()

    previous = calign.get_num_threads()
    try:
        single, raised = grads(1, 1), grads(1, 4)
    finally:
        calign.set_num_threads(previous)
    assert np.isfinite(raised).all()
    np.testing.assert_allclose(raised, single, atol=1e-5)


def test_sharded_checkpoint_loads(tiny_model, tmp_path):
    hf = transformers_model(tiny_model(**FAMILIES["qwen2"]))
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = calign.Model.from_pretrained(str(tmp_path))
    ids = ids_batch(model.vocab_size, seed=6)
    np.testing.assert_allclose(model.logits(ids), hf(torch.tensor(ids)).logits.detach().numpy(),
                               atol=1e-4)
