"""Motif's architecture in the engine (PolyNorm MLP gate, differential
attention) against an independent torch transcription (reference/motif_torch.py),
central differences of the C backward, generation through the KV cache,
thread-count independence, files, trainers, and the configs it refuses."""

import json

import numpy as np
import pytest
import safetensors.numpy
import torch

import calign
from calign.model.checkpoint import CheckpointError
from calign.model.config import ConfigError
from calign.testing import preference_records, sft_records
from reference.motif_torch import causal_lm_loss, decoder_logits, lambda_init

VOCAB = 203
# 3 layers (lambda_init differs: -0.010, 0.2, 0.35), 8 sub-heads on 4 kv
# sub-heads (2 differential heads per kv group), head_dim 6 != 48 / 8, biases
MOTIF = dict(model_type="motif", architectures=["MotifForCausalLM"], hidden_size=48,
             num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4, head_dim=6,
             intermediate_size=40, vocab_size=VOCAB, max_position_embeddings=256,
             hidden_act="poly_norm", rope_theta=500000.0, rms_norm_eps=1e-6,
             attn_rms_norm_eps=1e-5, use_bias=True, tie_word_embeddings=False,
             initializer_range=0.2)
# no biases, tied head, no GQA, head_dim from hidden_size // heads
MOTIF_PLAIN = dict(MOTIF, num_attention_heads=4, num_key_value_heads=4, head_dim=None,
                   use_bias=False, tie_word_embeddings=True, num_hidden_layers=2)
LLAMA = dict(model_type="llama", hidden_size=48, num_hidden_layers=3, num_attention_heads=8,
             num_key_value_heads=4, head_dim=6, intermediate_size=40, vocab_size=VOCAB,
             max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
             initializer_range=0.2, tie_word_embeddings=False)


def batch(T=80, seed=0):
    """Two rows of T tokens (T > 64 crosses the attention block), the second
    right-padded, the first's opening tokens unscored."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (2, T))
    mask = np.ones_like(ids)
    mask[1, T - 23:] = 0
    labels = np.where(mask == 1, ids, -100)
    labels[0, :5] = -100
    return ids, labels, mask


def torch_params(model):
    return {name: torch.tensor(view.copy(), requires_grad=True)
            for name, view in model.state_dict().items()}


def assert_matches_reference(model, config, polynorm=True, differential=True):
    ids, labels, mask = batch()
    params = torch_params(model)
    logits = decoder_logits(params, config, torch.tensor(ids), polynorm, differential)
    real = mask.astype(bool)
    np.testing.assert_allclose(model.logits(ids, mask)[real], logits.detach().numpy()[real],
                               atol=1e-4)
    loss = causal_lm_loss(logits, torch.tensor(labels))
    loss.backward()
    got_loss, grads = model.loss_and_grad(ids, labels, mask)
    assert got_loss == pytest.approx(loss.item(), abs=1e-5)
    assert set(grads) == set(params) - ({"lm_head.weight"} if config.get("tie_word_embeddings")
                                        else set())
    for name, grad in grads.items():
        expected = params[name].grad.numpy()
        # relative to the tensor's largest entry, as test_engine compares with transformers
        assert np.abs(grad - expected).max() <= 1e-3 * np.abs(expected).max() + 1e-7, name


@pytest.mark.parametrize("config", [MOTIF, MOTIF_PLAIN], ids=["gqa_biases", "plain_tied"])
def test_logits_and_gradients_match_the_torch_reference(config):
    model = calign.Model.from_config(config, seed=1)
    assert_matches_reference(model, config)


@pytest.mark.parametrize("hidden_act,attention", [("polynorm", "standard"),
                                                  ("poly_norm", "differential"),
                                                  ("silu", "differential")])
def test_llama_options_are_the_same_layers(hidden_act, attention):
    config = dict(LLAMA, hidden_act=hidden_act, attention=attention)
    model = calign.Model.from_config(config, seed=2)
    names = model.state_dict()
    assert ("model.layers.0.mlp.act_fn.weight" in names) == (hidden_act != "silu")
    assert ("model.layers.2.self_attn.lambda_k2" in names) == (attention == "differential")
    assert_matches_reference(model, config, hidden_act != "silu", attention == "differential")


def test_llama_with_both_options_computes_motif():
    llama = calign.Model.from_config(dict(LLAMA, hidden_act="polynorm",
                                          attention="differential"), seed=3)
    motif = calign.Model(dict(LLAMA, model_type="motif"))
    motif.params[...] = llama.params
    ids, _, _ = batch(T=30)
    np.testing.assert_array_equal(motif.logits(ids), llama.logits(ids))


def test_lambda_init_is_motifs_off_by_one_schedule():
    assert lambda_init(0) == pytest.approx(0.8 - 0.6 * np.exp(0.3))  # -0.0099
    assert lambda_init(1) == pytest.approx(0.2)
    # (the engine's use of it is checked against the reference above, on 3
    # layers); from_config draws the lambda vectors from N(0, 0.1) and sets
    # PolyNorm's weights to 1/3, as Motif's code initialises them
    model = calign.Model.from_config(MOTIF, seed=0)
    lam = model.state_dict()["model.layers.1.self_attn.lambda_q1"]
    assert 0.02 < lam.std() < 0.3
    np.testing.assert_array_equal(model.state_dict()["model.layers.1.mlp.act_fn.weight"],
                                  np.float32(1 / 3))


# ---- central differences of the C backward -------------------------------------------

@pytest.mark.parametrize("pattern", ["mlp.act_fn.", "mlp.gate_proj", "self_attn.lambda_",
                                     "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.subln"])
def test_backward_matches_central_differences(pattern):
    """The directional derivative of the C loss along the C gradient of the
    tensors matching `pattern` (PolyNorm's parameters and input, differential
    attention's lambda, q, k, v and subln), by central differences."""
    model = calign.Model.from_config(MOTIF, seed=4)
    ids, labels, mask = batch(T=70, seed=4)
    _, grads = model.loss_and_grad(ids, labels, mask)
    views = {name: view for name, view in model.state_dict().items() if pattern in name}
    assert len(views) >= 3
    norm = np.sqrt(sum(float((grads[name].astype(np.float64) ** 2).sum()) for name in views))
    direction = {name: grads[name] / norm for name in views}
    original = {name: view.copy() for name, view in views.items()}

    def loss_at(step):
        for name, view in views.items():
            view[...] = original[name] + step * direction[name]
        logprobs = model.token_logprobs(ids, labels, mask)
        return -logprobs[labels[:, 1:] != -100].astype(np.float64).mean()

    h = 1e-2
    numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
    loss_at(0.0)
    assert numeric == pytest.approx(norm, rel=2e-3)


# ---- generation, threads, checkpointing --------------------------------------------------

def test_greedy_generation_follows_the_full_forwards_argmax():
    model = calign.Model.from_config(MOTIF, seed=5)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, VOCAB, 70).tolist(), rng.integers(0, VOCAB, 9).tolist()]
    out = model.generate(prompts, max_new_tokens=12)
    for prompt, new in zip(prompts, out):
        assert len(new) == 12
        full = np.array([prompt + list(new)])
        logits = model.logits(full)[0]
        np.testing.assert_array_equal(logits[len(prompt) - 1:-1].argmax(-1), new)


def test_shared_prefix_branches_equal_separate_rows():
    """Differential attention keeps the branch rule of packed rows (a
    completion sees the prompt, not its sibling), as DPO's packing needs."""
    model = calign.Model.from_config(MOTIF, seed=13)
    rng = np.random.default_rng(13)
    prompt = rng.integers(0, VOCAB, 50).tolist()
    completions = [rng.integers(0, VOCAB, 30).tolist(), rng.integers(0, VOCAB, 7).tolist()]
    packed = calign.pack_shared_prefix([(prompt, completions)])
    logps = model.packed_token_logprobs(packed)
    for k, completion in enumerate(completions):
        logits = model.logits(np.array([prompt + completion]))[0].astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
            -1, keepdims=True)) - logits.max(-1, keepdims=True)
        expected = logp[len(prompt) - 1:-1][np.arange(len(completion)), completion]
        np.testing.assert_allclose(logps[packed.completion_slices[0][k]], expected, atol=1e-4)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_one_and_two_threads_agree(checkpointing):
    ids, labels, mask = batch(T=90, seed=6)
    previous = calign.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            calign.set_num_threads(threads)
            model = calign.Model.from_config(MOTIF, seed=6)
            model.gradient_checkpointing = checkpointing
            loss, grads = model.loss_and_grad(ids, labels, mask)
            runs.append((loss, model.grad_buffer.copy(), model.logits(ids, mask)))
    finally:
        calign.set_num_threads(previous)
    (loss1, grads1, logits1), (loss2, grads2, logits2) = runs
    # the products split their sums by thread (core/gemm.c), so the engine
    # agrees across thread counts to float32 rounding, for Llama as here
    # (~7e-6 on logits of ~2, ~4e-7 on gradients); the reductions Motif adds
    # (PolyNorm's and lambda's parameter gradients) sum in token/task order
    assert loss1 == pytest.approx(loss2, abs=1e-5)
    np.testing.assert_allclose(logits1, logits2, atol=5e-5)
    np.testing.assert_allclose(grads1, grads2, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, labels, mask = batch(seed=7)
    model = calign.Model.from_config(MOTIF, seed=7)
    _, plain = model.loss_and_grad(ids, labels, mask)
    model.gradient_checkpointing = True
    _, again = model.loss_and_grad(ids, labels, mask)
    for name in plain:
        np.testing.assert_allclose(again[name], plain[name], atol=1e-6, err_msg=name)


# ---- files and trainers ------------------------------------------------------------------

def test_saved_motif_reloads_identically(tmp_path):
    model = calign.Model.from_config(MOTIF, seed=8)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "motif" and config["hidden_act"] == "poly_norm"
    tensors = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    assert tensors["model.layers.2.mlp.act_fn.weight"].shape == (3,)
    assert tensors["model.layers.2.mlp.act_fn.bias"].shape == (1,)
    assert tensors["model.layers.2.self_attn.subln.weight"].shape == (12,)
    reloaded = calign.Model.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(reloaded.params, model.params)
    ids, _, _ = batch(T=20)
    np.testing.assert_array_equal(reloaded.logits(ids), model.logits(ids))


def motif_folder(tmp_path):
    config = dict(MOTIF, vocab_size=calign.testing.data.DEFAULT_VOCAB_SIZE)
    calign.Model.from_config(config, seed=9).save_pretrained(tmp_path / "motif")
    return str(tmp_path / "motif")


def losses_of(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_sft_and_dpo_train_a_motif_model(tmp_path):
    path = motif_folder(tmp_path)
    settings = dict(learning_rate=3e-3, per_device_train_batch_size=2, max_steps=4,
                    logging_steps=1, disable_tqdm=True, save_strategy="no")
    sft = calign.SFTTrainer(path, args=calign.SFTConfig(output_dir=str(tmp_path / "sft"),
                                                        **settings),
                            train_dataset=sft_records(8, style="tokenized", seed=1))
    trained = ("model.layers.1.self_attn.lambda_q1", "model.layers.1.mlp.act_fn.weight",
               "model.layers.1.self_attn.subln.weight")
    before = {name: sft.model.state_dict()[name].copy() for name in trained}
    sft.train()
    assert len(losses_of(sft)) == 4 and np.isfinite(losses_of(sft)).all()
    for name in trained:  # Motif's own parameters train too
        assert (sft.model.state_dict()[name] != before[name]).any(), name
    dpo = calign.DPOTrainer(path, args=calign.DPOConfig(output_dir=str(tmp_path / "dpo"),
                                                        beta=0.5, **settings),
                            train_dataset=preference_records(8, style="tokenized", seed=2))
    dpo.train()
    losses = losses_of(dpo)
    assert len(losses) == 4 and losses[0] == pytest.approx(np.log(2), abs=1e-6)
    assert np.isfinite(losses).all()


def test_a_reward_model_trains_on_a_motif_backbone(tmp_path):
    path = motif_folder(tmp_path)
    trainer = calign.RewardTrainer(path, args=calign.RewardConfig(
        output_dir=str(tmp_path / "rm"), learning_rate=3e-3, per_device_train_batch_size=2,
        max_steps=3, logging_steps=1, disable_tqdm=True, save_strategy="no"),
        train_dataset=preference_records(6, style="tokenized", seed=3))
    trainer.train()
    assert len(losses_of(trainer)) == 3 and np.isfinite(losses_of(trainer)).all()
    trainer.model.save_pretrained(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["architectures"] == ["MotifForSequenceClassification"]
    again = calign.RewardModel.from_pretrained(str(tmp_path / "saved"))
    np.testing.assert_array_equal(again.params, trainer.model.params)


def test_lora_adapts_a_motif_model():
    model = calign.Model.from_config(MOTIF, seed=10)
    model.add_adapter(calign.LoraConfig(r=4, target_modules="all-linear"))
    ids, labels, mask = batch(T=40, seed=10)
    model.adapters.params[...] = np.random.default_rng(0).normal(
        0, 0.05, model.adapters.params.shape)
    with_adapters = model.logits(ids, mask)
    merged = model.merge_and_unload()
    np.testing.assert_allclose(merged.logits(ids, mask), with_adapters, atol=1e-4)


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("change,field", [
    (dict(hidden_act="silu"), "hidden_act"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(num_attention_heads=6, num_key_value_heads=3, head_dim=8), "num_key_value_heads"),
    (dict(num_attention_heads=3, num_key_value_heads=1, head_dim=16), "num_attention_heads"),
    (dict(use_sliding_window=True, sliding_window=16), "use_sliding_window"),
    (dict(num_noise_heads=2), "num_noise_heads"),
    (dict(k_ratio=0.5), "k_ratio"),
    (dict(attn_rms_norm_eps=-1e-5), "attn_rms_norm_eps"),
    (dict(attn_rms_norm_eps=1), "attn_rms_norm_eps"),
    (dict(use_bias="false"), "use_bias"),
])
def test_motif_config_refusals_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        calign.Model.from_config(dict(MOTIF, **change))


@pytest.mark.parametrize("change,field", [
    (dict(hidden_act="relu"), "hidden_act"),
    (dict(attention="diff"), "attention"),
    (dict(attention="differential", num_key_value_heads=1, num_attention_heads=8),
     "num_key_value_heads"),
])
def test_llama_option_refusals_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        calign.Model.from_config(dict(LLAMA, **change))


@pytest.mark.parametrize("name,shape", [("model.layers.1.mlp.act_fn.weight", (4,)),
                                        ("model.layers.0.mlp.act_fn.bias", (2,)),
                                        ("model.layers.2.self_attn.lambda_k1", (12,)),
                                        ("model.layers.0.self_attn.subln.weight", (6,))])
def test_wrong_shaped_motif_tensors_are_named(tmp_path, name, shape):
    calign.Model.from_config(MOTIF, seed=11).save_pretrained(tmp_path)
    file = str(tmp_path / "model.safetensors")
    tensors = safetensors.numpy.load_file(file)
    tensors[name] = np.zeros(shape, np.float32)
    safetensors.numpy.save_file(tensors, file)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        calign.Model.from_pretrained(str(tmp_path))


def test_missing_lambda_tensor_is_named(tmp_path):
    calign.Model.from_config(MOTIF, seed=12).save_pretrained(tmp_path)
    file = str(tmp_path / "model.safetensors")
    tensors = safetensors.numpy.load_file(file)
    del tensors["model.layers.1.self_attn.lambda_q2"]
    safetensors.numpy.save_file(tensors, file)
    with pytest.raises(CheckpointError, match="lambda_q2"):
        calign.Model.from_pretrained(str(tmp_path))
