"""Backtracking (Zhang et al. 2024, arXiv 2409.14586): a special reset token
added to a tokenizer and a model (Tokenizer.add_special_tokens,
Model.resize_token_embeddings), generation that drops what precedes the reset
(Model.generate(reset_token_id=...)), and the SFT / DPO records that teach it
(calign.safety.backtracking)."""

import json

import numpy as np
import pytest
import torch
import transformers

import calign
import calign.data.sft
from calign.safety.backtracking import backtracking_dpo_records, backtracking_sft_records
from calign.testing import num_threads, tiny_config

# ---- a hand-built model whose greedy output is known ------------------------------------

EOS, RESET = 0, 5
# With every layer's weights zero, the final hidden state is the last token's
# embedding (one-hot here), so the logits depend on the last token only:
# next token -> score. From 3 the model prefers RESET, then 4.
TRANSITIONS = {1: {2: 1.0}, 2: {3: 1.0}, 3: {RESET: 2.0, 4: 1.0}, 4: {9: 1.0},
               RESET: {6: 1.0}, 6: {7: 1.0}, 7: {3: 1.0}, 9: {10: 1.0}, 10: {11: 1.0},
               11: {EOS: 1.0}}


def chain_model():
    model = calign.Model(tiny_config("llama", vocab_size=16, num_hidden_layers=1,
                                     eos_token_id=EOS))
    weights = model.state_dict()
    for view in weights.values():
        view[...] = 0.0
    weights["model.layers.0.input_layernorm.weight"][...] = 1.0
    weights["model.layers.0.post_attention_layernorm.weight"][...] = 1.0
    weights["model.norm.weight"][...] = 1.0
    weights["model.embed_tokens.weight"][:, :16] = np.eye(16)
    for token, successors in TRANSITIONS.items():
        for successor, score in successors.items():
            weights["lm_head.weight"][successor, token] = score
    return model


def greedy(model, **options):
    return model.generate([[1]], max_new_tokens=options.pop("max_new_tokens", 20),
                          do_sample=False, eos_token_id=EOS, return_resets=True, **options)


def test_the_chain_model_emits_the_reset_token_without_backtracking():
    sequences = chain_model().generate([[1]], max_new_tokens=9, do_sample=False, eos_token_id=EOS)
    assert sequences == [[2, 3, RESET, 6, 7, 3, RESET, 6, 7]]


def test_generate_returns_only_what_follows_the_reset():
    sequences, discarded = greedy(chain_model(), reset_token_id=RESET)
    # drawn: 2 3 [RESET] 6 7 3, then the reset is used up: 4 9 10 11 eos
    assert sequences == [[6, 7, 3, 4, 9, 10, 11, EOS]]
    assert discarded == [3]


def test_max_resets_bans_a_further_reset():
    sequences, discarded = greedy(chain_model(), reset_token_id=RESET, max_resets=2)
    # drawn: 2 3 R 6 7 3 R 6 7 3 4 9 10 11 eos: the output follows the last reset
    assert sequences == [[6, 7, 3, 4, 9, 10, 11, EOS]]
    assert discarded == [7]
    sequences, discarded = greedy(chain_model(), reset_token_id=RESET, max_resets=0)
    assert sequences == [[2, 3, 4, 9, 10, 11, EOS]] and discarded == [-1]


def test_a_large_negative_bias_keeps_the_reset_from_appearing():
    sequences, discarded = greedy(chain_model(), reset_token_id=RESET, reset_logit_bias=-50.0)
    assert sequences == [[2, 3, 4, 9, 10, 11, EOS]] and discarded == [-1]
    # a bias too small to change the argmax changes nothing
    assert greedy(chain_model(), reset_token_id=RESET, reset_logit_bias=-1.0) == \
        greedy(chain_model(), reset_token_id=RESET)
    # a positive bias can make the reset the argmax where it was not
    sequences, discarded = greedy(chain_model(), reset_token_id=4, reset_logit_bias=50.0,
                                  max_new_tokens=4)
    assert sequences == [[9, 10, 11]] and discarded == [1]  # 4, then it is banned: 9 10 11
    sequences, discarded = greedy(chain_model(), reset_token_id=4, reset_logit_bias=50.0,
                                  max_new_tokens=3, max_resets=3)
    assert sequences == [[]] and discarded == [3]  # 4 4 4: every drawn token is a reset


def test_max_new_tokens_counts_the_discarded_tokens():
    sequences, discarded = greedy(chain_model(), reset_token_id=RESET, max_new_tokens=5)
    assert sequences == [[6, 7]] and discarded == [3]  # 2 3 R 6 7


def test_logprobs_stay_aligned_with_the_returned_tokens():
    model = chain_model()
    (sequence,), (logprobs,), (discarded,) = model.generate(
        [[1]], max_new_tokens=20, do_sample=False, eos_token_id=EOS, reset_token_id=RESET,
        return_logprobs=True, return_resets=True)
    drawn = [2, 3, RESET, 6, 7, 3, 4, 9, 10, 11, EOS]
    assert drawn[discarded:] == sequence
    ids = np.array([[1] + drawn])
    labels = ids.copy()
    labels[0, 0] = -100
    expected = model.token_logprobs(ids, labels)[0]  # the model's own, without the ban
    assert logprobs.shape == (len(sequence),)
    np.testing.assert_allclose(logprobs, expected[discarded:], atol=1e-6)


def test_sampling_never_draws_a_banned_reset():
    model = chain_model()
    for filters in (dict(), dict(top_k=2), dict(top_p=0.9), dict(top_k=3, top_p=0.5)):
        sequences, discarded = model.generate(
            [[1], [3]], max_new_tokens=12, do_sample=True, temperature=1.0, seed=5,
            num_return_sequences=4, eos_token_id=EOS, reset_token_id=RESET, max_resets=0,
            return_resets=True, **filters)
        assert discarded == [-1] * 8
        assert all(RESET not in sequence for sequence in sequences), filters


def test_sampling_is_the_same_at_one_and_two_threads(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("llama"))
    options = dict(max_new_tokens=12, do_sample=True, temperature=1.0, top_k=40, seed=17,
                   num_return_sequences=6, reset_token_id=7, reset_logit_bias=6.0,
                   return_resets=True, return_logprobs=True)
    with num_threads(1):
        one = model.generate([[3, 8, 1], [4]], **options)
    with num_threads(2):
        two = model.generate([[3, 8, 1], [4]], **options)
    assert one[0] == two[0] and one[2] == two[2]
    for a, b in zip(one[1], two[1], strict=True):  # the forward's sums may round differently
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert any(d >= 0 for d in one[2])  # the bias makes some sequences reset
    assert all(7 not in sequence for sequence in one[0])  # at most one reset: it is gone


def test_a_reset_token_never_drawn_leaves_the_samples_unchanged(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("qwen2"))
    options = dict(max_new_tokens=8, do_sample=True, temperature=1.1, top_p=0.95, seed=2,
                   num_return_sequences=5, repetition_penalty=1.2)
    plain = model.generate([[5, 9, 2]], **options)
    with_reset, discarded = model.generate([[5, 9, 2]], reset_token_id=11, return_resets=True,
                                           **options)
    for before, after, d in zip(plain, with_reset, discarded, strict=True):
        if d < 0:
            assert after == before
    assert model.generate([[5, 9, 2]], return_resets=True, **options) == \
        (plain, [-1] * len(plain))


@pytest.mark.parametrize("options, argument", [
    (dict(reset_token_id=16), "reset_token_id"),
    (dict(reset_token_id=-1), "reset_token_id"),
    (dict(reset_token_id=True), "reset_token_id"),
    (dict(reset_token_id=2.0), "reset_token_id"),
    (dict(reset_token_id=EOS), "reset_token_id"),
    (dict(reset_token_id=RESET, reset_logit_bias=float("nan")), "reset_logit_bias"),
    (dict(reset_token_id=RESET, reset_logit_bias=float("-inf")), "reset_logit_bias"),
    (dict(reset_token_id=RESET, reset_logit_bias="-5"), "reset_logit_bias"),
    (dict(reset_logit_bias=-5.0), "reset_logit_bias"),
    (dict(reset_token_id=RESET, max_resets=-1), "max_resets"),
    (dict(reset_token_id=RESET, max_resets=1.0), "max_resets"),
    (dict(reset_token_id=RESET, return_resets=1), "return_resets"),
])
def test_bad_reset_settings_are_refused_by_name(options, argument):
    with pytest.raises(ValueError, match=argument):
        chain_model().generate([[1]], max_new_tokens=4, eos_token_id=EOS, **options)


def test_a_bias_that_overflows_the_logit_is_refused():
    model = chain_model()
    model.state_dict()["lm_head.weight"][RESET, 3] = 1e37  # a logit of about 7e37
    with pytest.raises(ValueError, match="reset_logit_bias"):
        model.generate([[3]], max_new_tokens=4, reset_token_id=RESET, reset_logit_bias=3.4e38)


# ---- adding the reset token to a tokenizer and a model -----------------------------------

def test_added_special_tokens_load_with_the_same_ids(tiny_tokenizer, tmp_path):
    import tokenizers

    tokenizer = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    size = tokenizer.vocab_size
    assert tokenizer.add_special_tokens(["[RESET]", "<think>"]) == [size, size + 1]
    assert tokenizer.add_special_tokens("[RESET]") == [size]  # already there: its id
    assert tokenizer.vocab_size == size + 2
    assert tokenizer.encode("w1 [RESET] w2") == [3, size, 4]
    assert tokenizer.decode([3, size, 4], skip_special_tokens=True) == "w1 w2"
    tokenizer.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.convert_tokens_to_ids(["[RESET]", "<think>"]) == [size, size + 1]
    assert hf("w1 [RESET] w2")["input_ids"] == [3, size, 4]
    assert "[RESET]" in hf.all_special_tokens
    backend = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert backend.token_to_id("[RESET]") == size
    reloaded = calign.Tokenizer.from_pretrained(str(tmp_path))
    assert reloaded.token_to_id("<think>") == size + 1 and size in reloaded.all_special_ids


def test_a_tokenizer_config_with_added_tokens_decoder_records_them(tiny_tokenizer, tmp_path):
    import shutil

    shutil.copytree(tiny_tokenizer(), tmp_path / "source")
    config_file = tmp_path / "source" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    # as transformers 4 wrote it: the added tokens by id
    config["added_tokens_decoder"] = {
        str(i): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for i, token in enumerate(["<pad>", "<eos>"])}
    config_file.write_text(json.dumps(config))
    tokenizer = calign.Tokenizer.from_pretrained(str(tmp_path / "source"))
    (reset,) = tokenizer.add_special_tokens(["[RESET]"])
    tokenizer.save_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"][str(reset)]["content"] == "[RESET]"
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "out") \
        .convert_tokens_to_ids("[RESET]") == reset


@pytest.mark.parametrize("tokens", [[], [""], ["[RESET]", 3], None, [b"[RESET]"]])
def test_bad_special_tokens_are_refused(tiny_tokenizer, tokens):
    tokenizer = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    with pytest.raises(ValueError, match="tokens"):
        tokenizer.add_special_tokens(tokens)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # an untied head, a tied one
def test_resized_model_round_trips_through_transformers(tiny_model, family, tmp_path):
    model = calign.Model.from_pretrained(tiny_model(family))
    old_vocab = model.vocab_size
    ids = np.array([[5, 9, 2, 7, 3]])
    old_logits = model.logits(ids)
    old_embeddings = {name: model.state_dict()[name].copy()
                      for name in ("lm_head.weight", "model.embed_tokens.weight",
                                   "transformer.wte.weight") if name in model.state_dict()}
    assert model.resize_token_embeddings(old_vocab + 2) is model
    assert model.vocab_size == model.config["vocab_size"] == old_vocab + 2
    for name, old in old_embeddings.items():
        grown = model.state_dict()[name]
        np.testing.assert_array_equal(grown[:old_vocab], old)
        mean = old.mean(axis=0, dtype=np.float64).astype(np.float32)
        np.testing.assert_array_equal(grown[old_vocab:], np.stack([mean, mean]))
    logits = model.logits(ids)
    np.testing.assert_array_equal(logits[..., :old_vocab], old_logits)
    # the old tokens' log-probs change only through the softmax's denominator
    def log_softmax(x):
        x = x.astype(np.float64)
        return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)
    shift = log_softmax(logits)[..., :old_vocab] - log_softmax(old_logits)
    np.testing.assert_allclose(shift, shift[..., :1].repeat(old_vocab, -1), atol=1e-9)
    expected_shift = -np.log1p(np.exp(np.logaddexp.reduce(
        logits[..., old_vocab:].astype(np.float64), axis=-1) - np.logaddexp.reduce(
        old_logits.astype(np.float64), axis=-1)))
    np.testing.assert_allclose(shift[..., 0], expected_shift, atol=1e-9)
    model.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert hf.config.vocab_size == old_vocab + 2
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    np.testing.assert_array_equal(calign.Model.from_pretrained(tmp_path).logits(ids), logits)


def test_a_resized_model_generates_with_its_new_token(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("qwen3"))
    model.resize_token_embeddings(model.vocab_size + 1)
    reset = model.vocab_size - 1
    sequences, discarded = model.generate([[4, 2]], max_new_tokens=6, reset_token_id=reset,
                                          reset_logit_bias=1e3, max_resets=6,
                                          return_resets=True)
    assert sequences == [[]] and discarded == [6]  # the biased reset wins every draw


def test_resize_refuses_a_smaller_vocabulary_and_adapters(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("llama"))
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(model.vocab_size - 1)
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(float(model.vocab_size + 1))
    assert model.resize_token_embeddings(model.vocab_size) is model  # unchanged
    model.add_adapter(calign.LoraConfig(r=2, target_modules="all-linear"))
    with pytest.raises(ValueError, match="adapters"):
        model.resize_token_embeddings(model.vocab_size + 1)


# ---- training records -------------------------------------------------------------------

PROMPTS = ["w1 w2 w3", "w4 w5", "w6"]
UNSAFE = [" w10 w11 w12 w13", " w14 w15", " w16 w17 w18"]
SAFE = [" w20 w21", " w22 w23 w24", " w25"]


def test_sft_records_put_the_unsafe_prefix_on_the_prompt_side():
    records = backtracking_sft_records(PROMPTS, UNSAFE, SAFE, prefix=[2, 1, 3])
    assert records == [
        {"prompt": "w1 w2 w3 w10 w11", "completion": "[RESET] w20 w21"},
        {"prompt": "w1 w2 w3", "completion": " w20 w21"},
        {"prompt": "w4 w5 w14", "completion": "[RESET] w22 w23 w24"},
        {"prompt": "w4 w5", "completion": " w22 w23 w24"},
        {"prompt": "w6 w16 w17 w18", "completion": "[RESET] w25"},
        {"prompt": "w6", "completion": " w25"},
    ]
    full = backtracking_sft_records(PROMPTS, UNSAFE, SAFE, prefix="full",
                                    include_safe=False, reset_token="<r>")
    assert [r["prompt"] for r in full] == [p + u for p, u in zip(PROMPTS, UNSAFE)]
    assert [r["completion"] for r in full] == ["<r>" + s for s in SAFE]


def test_random_prefixes_are_whole_words_and_seeded():
    prompts, unsafe = ["p"] * 400, [" a bb ccc dddd eeeee"] * 400
    records = backtracking_sft_records(prompts, unsafe, ["ok"] * 400, seed=3, include_safe=False)
    prefixes = [r["prompt"][1:] for r in records]
    counts = np.array([len(p.split()) for p in prefixes])
    assert all(unsafe[0].startswith(p) and (p == unsafe[0] or unsafe[0][len(p)] == " ")
               for p in prefixes)
    assert set(counts) == {1, 2, 3, 4, 5}  # uniform over 1 .. all words
    assert np.all(np.abs(np.bincount(counts)[1:] / 400 - 0.2) < 0.08)
    assert records == backtracking_sft_records(prompts, unsafe, ["ok"] * 400, seed=3,
                                               include_safe=False)
    assert records != backtracking_sft_records(prompts, unsafe, ["ok"] * 400, seed=4,
                                               include_safe=False)


def test_dpo_records_as_the_paper_pairs_them():
    records = backtracking_dpo_records(PROMPTS, UNSAFE, SAFE, prefix=[2, 1, 1], seed=0)
    assert len(records) == 6
    for i, (prompt, bad, good) in enumerate(zip(PROMPTS, UNSAFE, SAFE)):
        backtrack, keep = records[2 * i], records[2 * i + 1]
        # prefix(y-) + [RESET] + y+  >  y-
        assert backtrack["prompt"] + backtrack["rejected"] == prompt + bad
        assert backtrack["chosen"] == "[RESET]" + good
        assert backtrack["rejected"].split() and backtrack["prompt"] != prompt
        # y+  >  prefix(y+) + [RESET] + y-
        assert keep["prompt"] + keep["chosen"] == prompt + good
        assert keep["rejected"] == "[RESET]" + bad
        assert keep["chosen"].split()  # a word of y+ is left to prefer
    assert records[0]["prompt"] == "w1 w2 w3 w10 w11" and records[0]["rejected"] == " w12 w13"
    assert records[5]["prompt"] == "w6"  # a one-word safe answer: no prefix
    only = backtracking_dpo_records(PROMPTS, UNSAFE, SAFE, include_safe_pairs=False)
    assert len(only) == 3 and all(r["chosen"].startswith("[RESET]") for r in only)


@pytest.mark.parametrize("call, argument", [
    (lambda f: f(PROMPTS[:2], UNSAFE, SAFE), "unsafe_responses, safe_responses"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE[:1]), "unsafe_responses, safe_responses"),
    (lambda f: f([], [], []), "prompts"),
    (lambda f: f("w1", UNSAFE, SAFE), "prompts"),
    (lambda f: f([1, "a", "b"], UNSAFE, SAFE), r"prompts\[0\]"),
    (lambda f: f(PROMPTS, [" a", " ", " b"], SAFE), r"unsafe_responses\[1\]"),
    (lambda f: f(PROMPTS, UNSAFE, [" a [RESET] b", " c", " d"]), r"safe_responses\[0\]"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, reset_token=""), "reset_token"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, reset_token=5), "reset_token"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, prefix="half"), "prefix"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, prefix=[1, 1]), "prefix"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, prefix=[1, 0, 1]), r"prefix\[1\]"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, prefix=[1, 3, 1]), r"prefix\[1\]"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, prefix=[1, 1.0, 1]), r"prefix\[1\]"),
    (lambda f: f(PROMPTS, UNSAFE, SAFE, seed=-1.5), "seed"),
])
@pytest.mark.parametrize("builder", ["sft", "dpo"])
def test_bad_record_inputs_are_refused_by_name(call, argument, builder):
    function = backtracking_sft_records if builder == "sft" else backtracking_dpo_records
    with pytest.raises(ValueError, match=argument):
        call(function)


def test_dpo_records_need_a_rejected_continuation():
    with pytest.raises(ValueError, match="prefix"):
        backtracking_dpo_records(PROMPTS, UNSAFE, SAFE, prefix="full")
    with pytest.raises(ValueError, match=r"prefix\[0\]"):
        backtracking_dpo_records(PROMPTS, UNSAFE, SAFE, prefix=[4, 1, 1])
    with pytest.raises(ValueError, match=r"unsafe_responses\[1\]"):
        backtracking_dpo_records(PROMPTS, [" a b", " c", " d e"], SAFE)


def test_the_reset_token_must_be_one_token_of_the_tokenizer(tiny_tokenizer):
    tokenizer = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    with pytest.raises(ValueError, match="reset_token"):
        backtracking_sft_records(PROMPTS, UNSAFE, SAFE, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="reset_token"):  # a word: not a token by itself
        backtracking_dpo_records(PROMPTS, UNSAFE, SAFE, reset_token="w9 w8", tokenizer=tokenizer)
    tokenizer.add_special_tokens(["[RESET]"])
    assert backtracking_sft_records(PROMPTS, UNSAFE, SAFE, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def reset_checkpoint(tiny_tokenizer, tiny_model, tmp_path_factory):
    """A tiny llama and its word tokenizer, both grown by the [RESET] token."""
    folder = tmp_path_factory.mktemp("reset_checkpoint")
    tokenizer = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    (reset,) = tokenizer.add_special_tokens(["[RESET]"])
    model = calign.Model.from_pretrained(tiny_model("llama", tokenizer=tiny_tokenizer()))
    model.resize_token_embeddings(tokenizer.vocab_size)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, reset


def test_sft_trains_on_the_reset_and_the_safe_answer_only(reset_checkpoint, tmp_path):
    folder, reset = reset_checkpoint
    tokenizer = calign.Tokenizer.from_pretrained(str(folder))
    records = backtracking_sft_records(PROMPTS, UNSAFE, SAFE, prefix=[2, 1, 3],
                                       tokenizer=tokenizer)
    trainer = calign.SFTTrainer(str(folder), args=calign.SFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
        per_device_eval_batch_size=len(records), save_steps=0, disable_tqdm=True),
        train_dataset=records, processing_class=tokenizer)
    # the loss's tokens: [RESET] + y+ + eos, or y+ + eos; the unsafe prefix is context
    examples = calign.data.sft.prepare_sft_data(records, tokenizer)
    eos = tokenizer.eos_token_id
    for record, example in zip(records, examples, strict=True):
        assert example.prompt_ids == tokenizer.encode(record["prompt"])
        assert example.completions[0] == tokenizer.encode(record["completion"]) + [eos]
    assert examples[0].completions[0][0] == reset
    # the eval loss is the mean NLL of those tokens alone, computed by hand
    model = calign.Model.from_pretrained(str(folder))
    nll = []
    for example in examples:
        ids = np.array([example.prompt_ids + example.completions[0]])
        labels = ids.copy()
        labels[0, :len(example.prompt_ids)] = -100
        logps = model.token_logprobs(ids, labels)[0, len(example.prompt_ids) - 1:]
        nll.extend(-logps.astype(np.float64))
    assert len(nll) == sum(len(tokenizer.encode(r["completion"])) + 1 for r in records)
    np.testing.assert_allclose(trainer.evaluate(records)["eval_loss"], np.mean(nll), rtol=1e-5)
    trainer.train()
    assert trainer.state.global_step == 2


def test_dpo_trainer_takes_the_pairs(reset_checkpoint, tmp_path):
    folder, reset = reset_checkpoint
    tokenizer = calign.Tokenizer.from_pretrained(str(folder))
    records = backtracking_dpo_records(PROMPTS, UNSAFE, SAFE, tokenizer=tokenizer, seed=1)
    trainer = calign.DPOTrainer(str(folder), args=calign.DPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
        per_device_eval_batch_size=len(records), save_steps=0, disable_tqdm=True),
        train_dataset=records, processing_class=tokenizer)
    metrics = trainer.evaluate(records)
    # before training the policy is the reference: the DPO loss is log 2
    np.testing.assert_allclose(metrics["eval_loss"], np.log(2), rtol=1e-6)
    trainer.train()
    assert trainer.state.global_step == 2


def test_trl_masks_the_unsafe_prefix(reset_checkpoint, tmp_path):
    import datasets
    import trl

    folder, reset = reset_checkpoint
    records = backtracking_sft_records(PROMPTS, UNSAFE, SAFE, prefix=[2, 1, 3])
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    trainer = trl.SFTTrainer(
        model=transformers.AutoModelForCausalLM.from_pretrained(folder),
        args=trl.SFTConfig(output_dir=str(tmp_path), report_to=[], max_steps=1, bf16=False,
                           use_cpu=True),
        train_dataset=datasets.Dataset.from_list(records), processing_class=hf_tokenizer)
    tokenizer = calign.Tokenizer.from_pretrained(str(folder))
    for record, row in zip(records, trainer.train_dataset, strict=True):
        prompt = tokenizer.encode(record["prompt"])
        # TRL 1.16 writes the loss mask as labels (-100: no loss)
        assert row["input_ids"][:len(prompt)] == prompt
        assert row["labels"][:len(prompt)] == [-100] * len(prompt)
        assert row["labels"][len(prompt):] == row["input_ids"][len(prompt):] == \
            tokenizer.encode(record["completion"]) + [tokenizer.eos_token_id]


def test_character_prefixes_cut_texts_without_spaces():
    records = backtracking_sft_records(["7*3="], ["abcdef"], ["no"], prefix=[4],
                                       prefix_unit="character", include_safe=False)
    assert records == [{"prompt": "7*3=abcd", "completion": "[RESET]no"}]
    pairs = backtracking_dpo_records(["7*3="], ["abcdef"], ["no!"], prefix_unit="character",
                                     seed=1)
    assert pairs[0]["prompt"] + pairs[0]["rejected"] == "7*3=abcdef"
    assert 1 <= len(pairs[0]["rejected"]) <= 5
    with pytest.raises(ValueError, match="prefix_unit"):
        backtracking_sft_records(["p"], ["ab"], ["c"], prefix_unit="token")
