"""Steering (calign.steering): the engine's per-block hidden states and
control rows against transformers with forward hooks, control vectors
against a scikit-learn PCA of transformers' states, the GGUF and .npz files,
and a vector that moves greedy outputs monotonically with its strength."""

import numpy as np
import pytest
import torch
import transformers

import calign
from calign import steering
from calign.testing.wordtokenizer import save_word_tokenizer

CONFIG = dict(model_type="llama", hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=48, vocab_size=40,
              max_position_embeddings=64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("steer") / "model"
    calign.Model.from_config(CONFIG, seed=1).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = save_word_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=CONFIG["vocab_size"])
    return calign.Tokenizer.from_pretrained(str(path))


def ids(seed, shape=(3, 9)):
    return np.random.default_rng(seed).integers(2, CONFIG["vocab_size"], shape)


def block_outputs(hf, input_ids, attention_mask=None):
    """Every block's output (the residual stream after it) from forward hooks."""
    seen, hooks = [], []
    for block in hf.model.layers:
        hooks.append(block.register_forward_hook(
            lambda mod, inp, out: seen.append((out[0] if isinstance(out, tuple) else out)
                                              .detach().numpy())))
    try:
        hf(torch.tensor(input_ids), attention_mask=None if attention_mask is None else
           torch.tensor(attention_mask))
    finally:
        for h in hooks:
            h.remove()
    return np.stack(seen)


def hooked(hf, rows):
    """transformers' model with rows[l] added after block l (repeng's ControlModule)."""
    def add(row):
        return lambda mod, inp, out: ((out[0] + row,) + tuple(out[1:])
                                      if isinstance(out, tuple) else out + row)
    return [block.register_forward_hook(add(torch.tensor(row)))
            for block, row in zip(hf.model.layers, rows) if np.any(row)]


# ---- the engine ----------------------------------------------------------------------------

def test_layer_hidden_states_are_transformers_block_outputs(folder):
    model = calign.Model.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    x = ids(0)
    mask = np.ones(x.shape, bool)
    mask[1, 6:] = False  # ragged rows: zeros at padding
    expected = block_outputs(hf, x[:1])
    got = model.layer_hidden_states(x[:1], [2, 0, -2])
    np.testing.assert_allclose(got, expected[[2, 0, 1]], atol=1e-5)
    padded = model.layer_hidden_states(x, [1], attention_mask=mask)
    np.testing.assert_allclose(padded[0, 1, :6], model.layer_hidden_states(x[1:2, :6], 1)[0, 0],
                               atol=1e-6)
    assert not padded[0, 1, 6:].any()


@pytest.mark.parametrize("layers", [[3], [-4], [], [0.5], "0"])
def test_block_indices_out_of_range_are_named(folder, layers):
    model = calign.Model.from_pretrained(folder)
    with pytest.raises(ValueError, match="layers"):
        model.layer_hidden_states(ids(0), layers)


def test_control_rows_equal_transformers_hooks(folder):
    model = calign.Model.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    rows = np.random.default_rng(2).normal(0, 0.5, (3, CONFIG["hidden_size"])).astype(np.float32)
    rows[0] = 0.0
    x = ids(3)
    model.set_control(rows)
    steered_logits = model.logits(x)
    steered_tokens = model.generate(x.tolist(), max_new_tokens=6, do_sample=False)
    handles = hooked(hf, rows)
    try:
        expected = hf(torch.tensor(x)).logits.detach().numpy()
        greedy = hf.generate(torch.tensor(x), max_new_tokens=6, do_sample=False,
                             attention_mask=torch.ones(x.shape, dtype=torch.long),
                             pad_token_id=0)[:, x.shape[1]:].tolist()
    finally:
        for h in handles:
            h.remove()
    np.testing.assert_allclose(steered_logits, expected, atol=1e-4)
    assert steered_tokens == greedy
    model.set_control(None)
    np.testing.assert_allclose(model.logits(x), hf(torch.tensor(x)).logits.detach().numpy(),
                               atol=1e-4)


def test_control_acts_in_training_gradients(folder):
    model = calign.Model.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    rows = np.random.default_rng(4).normal(0, 0.5, (3, CONFIG["hidden_size"])).astype(np.float32)
    x = ids(5, (2, 7))
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.set_control(rows)
        loss, grads = model.loss_and_grad(x, x)
        model.set_control(None)
        handles = hooked(hf, rows)
        hf.zero_grad()
        expected = hf(torch.tensor(x), labels=torch.tensor(x)).loss
        expected.backward()
        for h in handles:
            h.remove()
        assert loss == pytest.approx(expected.item(), abs=1e-5)
        for name, p in hf.named_parameters():
            np.testing.assert_allclose(grads[name], p.grad.numpy(), atol=1e-4, err_msg=name)


def test_strength_zero_is_exactly_unsteered(folder, tokenizer):
    model = calign.Model.from_pretrained(folder)
    vector = steering.ControlVector("llama", {1: np.ones(CONFIG["hidden_size"])})
    x = ids(6)
    plain = model.logits(x)
    tokens = model.generate(x.tolist(), max_new_tokens=5, do_sample=True, seed=3)
    with steering.steered(model, vector, 0.0):
        np.testing.assert_array_equal(model.logits(x), plain)
        assert model.generate(x.tolist(), max_new_tokens=5, do_sample=True, seed=3) == tokens
    with steering.steered(model, vector, 2.0):
        assert not np.array_equal(model.logits(x), plain)
    np.testing.assert_array_equal(model.logits(x), plain)  # the block put everything back


def test_generate_takes_a_control_for_one_call(folder):
    model = calign.Model.from_pretrained(folder)
    rng = np.random.default_rng(9)
    vector = steering.ControlVector("llama", {1: rng.normal(size=CONFIG["hidden_size"]),
                                              2: rng.normal(size=CONFIG["hidden_size"])})
    prompts = ids(10).tolist()
    with steering.steered(model, vector, 3.0):
        expected = model.generate(prompts, max_new_tokens=6, do_sample=False)
    assert model.generate(prompts, max_new_tokens=6, do_sample=False,
                          control=(vector, 3.0)) == expected
    own = steering.ControlVector("llama", {0: rng.normal(size=CONFIG["hidden_size"])})
    with steering.steered(model, own, 1.0):
        before = model.logits(ids(11))
        model.generate(prompts, max_new_tokens=2, do_sample=False, control=(vector, 3.0))
        np.testing.assert_array_equal(model.logits(ids(11)), before)  # its own control is back
        # a call's control replaces the model's: strength 0 is the unsteered model
        plain = model.generate(prompts, max_new_tokens=4, do_sample=False, control=(vector, 0))
    assert plain == model.generate(prompts, max_new_tokens=4, do_sample=False)
    with pytest.raises(ValueError, match="control"):
        model.generate(prompts, max_new_tokens=2, control=vector)


# ---- control vectors -------------------------------------------------------------------

def random_pairs(n, seed):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(10)]
    return [(" ".join(["w1"] + list(rng.choice(words, k))), " ".join(["w2"] + list(
        rng.choice(words, k)))) for k in rng.integers(1, 6, n)]


@pytest.mark.parametrize("method", ["pca_diff", "pca_center", "mean_diff"])
def test_directions_equal_a_pca_of_transformers_states(folder, tokenizer, method):
    from sklearn.decomposition import PCA
    model = calign.Model.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    pairs = random_pairs(24, seed=7)
    vector = steering.ControlVector.train(model, tokenizer, pairs, method=method, batch_size=5)
    assert sorted(vector.directions) == [1, 2]  # repeng's default: every block but the first
    states = []
    for text in (t for pair in pairs for t in pair):
        token_ids = np.array([tokenizer.encode(text)])
        states.append(block_outputs(hf, token_ids)[:, 0, -1])
    states = np.stack(states, axis=1).astype(np.float64)  # [blocks, 2n, d]
    for layer, direction in vector.directions.items():
        pos, neg = states[layer, 0::2], states[layer, 1::2]
        if method == "pca_diff":
            expected = PCA(n_components=1).fit(pos - neg).components_[0]
        elif method == "pca_center":
            centre = (pos + neg) / 2
            expected = PCA(n_components=1).fit(np.concatenate([pos - centre, neg - centre])) \
                .components_[0]
        else:
            expected = (pos - neg).mean(axis=0)
        cosine = direction @ expected / np.linalg.norm(direction) / np.linalg.norm(expected)
        assert abs(cosine) >= 0.999
        assert np.linalg.norm(direction) == pytest.approx(1.0, abs=1e-5)
        # the sign: positives project higher for most pairs
        assert np.mean(pos @ direction > neg @ direction) >= 0.5


def test_files_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    vector = steering.ControlVector("qwen2", {1: rng.normal(size=16), 4: rng.normal(size=16)})
    vector.save(tmp_path / "v.npz")
    vector.export_gguf(tmp_path / "v.gguf")
    for loaded in (steering.ControlVector.load(tmp_path / "v.npz"),
                   steering.ControlVector.import_gguf(tmp_path / "v.gguf")):
        assert loaded.model_type == "qwen2" and sorted(loaded.directions) == [1, 4]
        for layer in (1, 4):
            np.testing.assert_array_equal(loaded.directions[layer], vector.directions[layer])
    import gguf
    reader = gguf.GGUFReader(str(tmp_path / "v.gguf"))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.4"]
    combined = (vector + vector * 2 - vector / 2) * -1
    np.testing.assert_allclose(combined.directions[1], -2.5 * vector.directions[1], rtol=1e-6)


def test_steering_moves_greedy_outputs_monotonically(tmp_path):
    """A tiny model learns two personas: after "A" it says words w0-w4, after
    "B" words w5-w9, after "x" either. The vector trained on A-vs-B prompts,
    applied with a growing strength to neutral "x" prompts, makes the share of
    w0-w4 in the greedy continuations grow monotonically."""
    words = ["A", "B", "x"] + [f"w{i}" for i in range(10)]
    tokenizer = calign.Tokenizer.from_pretrained(str(save_word_tokenizer(tmp_path / "t", words)))
    rng = np.random.default_rng(0)
    low, high = words[3:8], words[8:]
    records = []
    for _ in range(400):
        persona = rng.choice(["A", "B", "x"])
        pool = low if persona == "A" else high if persona == "B" else low + high
        records.append({"text": persona + " " + " ".join(rng.choice(pool, 8))})
    model = calign.Model.from_config(dict(
        CONFIG, hidden_size=48, intermediate_size=96, vocab_size=tokenizer.vocab_size,
        eos_token_id=1, pad_token_id=0, tie_word_embeddings=True), seed=0)
    calign.SFTTrainer(model, args=calign.SFTConfig(
        output_dir=str(tmp_path / "run"), max_steps=100, per_device_train_batch_size=16,
        learning_rate=3e-3, warmup_steps=10, save_strategy="no", disable_tqdm=True),
        train_dataset=records, processing_class=tokenizer).train()
    suffixes = [" ".join(rng.choice(low + high, k)) for k in range(6) for _ in range(4)]
    pairs = [(f"A {s}".strip(), f"B {s}".strip()) for s in suffixes]
    vector = steering.ControlVector.train(model, tokenizer, pairs)
    low_ids = {tokenizer.token_to_id(w) for w in low}
    prompts = [[tokenizer.token_to_id(w) for w in ["x"] + list(rng.choice(low + high, 2))]
               for _ in range(8)]
    shares = []
    for strength in (-4, -1, 0, 1, 2, 4, 8):
        with steering.steered(model, vector, strength):
            outputs = model.generate(prompts, max_new_tokens=8, do_sample=False,
                                     eos_token_id=[])
        shares.append(np.mean([t in low_ids for out in outputs for t in out]))
    assert all(a <= b for a, b in zip(shares, shares[1:])), shares
    assert shares[-1] - shares[0] >= 0.75, shares


# ---- bad input ---------------------------------------------------------------------------

def test_bad_vectors_and_strengths_are_named(folder, tokenizer):
    model = calign.Model.from_pretrained(folder)
    wide = steering.ControlVector("llama", {1: np.ones(CONFIG["hidden_size"] + 1)})
    with pytest.raises(ValueError, match="hidden size"):
        with steering.steered(model, wide):
            pass
    deep = steering.ControlVector("llama", {7: np.ones(CONFIG["hidden_size"])})
    with pytest.raises(ValueError, match="blocks within"):
        deep.rows(model)
    fine = steering.ControlVector("llama", {1: np.ones(CONFIG["hidden_size"])})
    for strength in (float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="strength"):
            fine.rows(model, strength)
    with pytest.raises(ValueError, match="control"):
        model.set_control(np.ones((2, CONFIG["hidden_size"])))
    with pytest.raises(ValueError, match="control"):
        model.set_control(np.full((3, CONFIG["hidden_size"]), np.nan))
    with pytest.raises(ValueError, match=r"directions\[1\]"):
        steering.ControlVector("llama", {1: np.array([np.nan, 1.0])})
    with pytest.raises(ValueError, match="method"):
        steering.ControlVector.train(model, tokenizer, random_pairs(3, 0), method="umap")
    with pytest.raises(ValueError, match="pairs"):
        steering.ControlVector.train(model, tokenizer, [("w1", "")])
    with pytest.raises(ValueError, match="layers"):
        steering.ControlVector.train(model, tokenizer, random_pairs(3, 0), layers=[5])
    with pytest.raises(ValueError, match="template"):
        steering.persona_pairs("no placeholder", ["a"], ["b"], ["s"])
    with pytest.raises(ValueError, match="negative_personas"):
        steering.persona_pairs("{persona}", ["a", "b"], ["c"], ["s"])


def test_persona_pairs_are_repengs():
    pairs = steering.persona_pairs("Act as if you're extremely {persona}.", ["happy"], ["sad"],
                                   ["I", "I feel"], user_tag="[INST]", asst_tag="[/INST]")
    assert pairs == [("[INST] Act as if you're extremely happy. [/INST] I",
                      "[INST] Act as if you're extremely sad. [/INST] I"),
                     ("[INST] Act as if you're extremely happy. [/INST] I feel",
                      "[INST] Act as if you're extremely sad. [/INST] I feel")]
