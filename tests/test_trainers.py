"""Trainers against a PyTorch reference loop, plus data handling, checkpoints and resume."""

import json
import math
import os

import numpy as np
import pytest
import torch
import transformers

import calign
from reference import trainers_torch as ref

VOCAB = 37
STEPS = 20
LR = 5e-3
COMMON = dict(learning_rate=LR, per_device_train_batch_size=2, max_steps=STEPS, shuffle=False,
              logging_steps=1, save_steps=0, warmup_steps=3, weight_decay=0.01,
              max_grad_norm=1.0, disable_tqdm=True)


@pytest.fixture(scope="module")
def llama_dir(tiny_model):
    return str(tiny_model("llama", hidden_size=24, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=2, head_dim=6, intermediate_size=40,
                          vocab_size=VOCAB, pad_token_id=0, attention_bias=False,
                          mlp_bias=False, rope_theta=10000.0))


def random_ids(rng, low, high):
    return rng.integers(1, VOCAB, rng.integers(low, high)).tolist()


def pairs(n, seed=0, margin=False):
    rng = np.random.default_rng(seed)
    out = [{"prompt_input_ids": random_ids(rng, 2, 6), "chosen_input_ids": random_ids(rng, 1, 5),
            "rejected_input_ids": random_ids(rng, 1, 5)} for _ in range(n)]
    if margin:
        for i, record in enumerate(out):
            record["margin"] = 0.25 * (i % 3)
    return out


def losses_of(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path)


def reference_losses(path, batch_loss, data, with_ref=False):
    policy = hf_model(path)
    frozen = hf_model(path) if with_ref else None
    loss = (lambda batch: batch_loss(policy, frozen, batch)) if with_ref else \
        (lambda batch: batch_loss(policy, batch))
    return ref.train_loop(list(policy.parameters()), loss, data, STEPS, 2, LR, 3, 0.01, 1.0)


# ---- fidelity: 20 steps against the torch loop -----------------------------------------

def test_dpo_matches_torch_loop(llama_dir, tmp_path):
    data = pairs(8)
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), beta=0.5, **COMMON), train_dataset=data)
    trainer.train()
    expected = reference_losses(llama_dir, lambda p, r, b: ref.dpo_batch_loss(p, r, b, 0.5),
                                data, with_ref=True)
    assert losses_of(trainer)[0] == pytest.approx(math.log(2), abs=1e-6)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)
    assert losses_of(trainer)[-1] < 0.5  # it learns the preferences


@pytest.mark.parametrize("n", [8, 7])
def test_kto_matches_torch_loop(llama_dir, tmp_path, n):
    """With 7 records every fourth micro-batch holds one example, whose KL pair
    is itself (TRL's rotation of a batch of one)."""
    rng = np.random.default_rng(1)
    data = [{"prompt_input_ids": random_ids(rng, 2, 6), "completion_input_ids":
             random_ids(rng, 1, 5), "label": bool(i % 3)} for i in range(n)]
    trainer = calign.KTOTrainer(llama_dir, args=calign.KTOConfig(
        output_dir=str(tmp_path), beta=0.5, desirable_weight=1.0, undesirable_weight=1.5,
        **COMMON), train_dataset=data)
    trainer.train()
    expected = reference_losses(
        llama_dir, lambda p, r, b: ref.kto_batch_loss(p, r, b, 0.5, 1.0, 1.5), data,
        with_ref=True)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)


def test_orpo_matches_torch_loop(llama_dir, tmp_path):
    data = pairs(8, seed=2)
    trainer = calign.ORPOTrainer(llama_dir, args=calign.ORPOConfig(
        output_dir=str(tmp_path), beta=0.2, **COMMON), train_dataset=data)
    trainer.train()
    expected = reference_losses(llama_dir, lambda p, b: ref.orpo_batch_loss(p, b, 0.2), data)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)


def test_simpo_matches_torch_loop(llama_dir, tmp_path):
    data = pairs(8, seed=3)
    trainer = calign.CPOTrainer(llama_dir, args=calign.CPOConfig(
        output_dir=str(tmp_path), loss_type="simpo", beta=2.0, simpo_gamma=0.5, cpo_alpha=0.3,
        **COMMON), train_dataset=data)
    trainer.train()
    expected = reference_losses(
        llama_dir, lambda p, b: ref.simpo_batch_loss(p, b, 2.0, 0.5, 0.3), data)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)


def test_sft_matches_torch_loop(llama_dir, tmp_path):
    rng = np.random.default_rng(4)
    data = [{"input_ids": random_ids(rng, 3, 9)} for _ in range(8)]
    trainer = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(output_dir=str(tmp_path),
                                                                 **COMMON), train_dataset=data)
    trainer.train()
    expected = reference_losses(llama_dir, ref.sft_batch_loss, data)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)
    assert losses_of(trainer)[-1] < losses_of(trainer)[0]


def test_reward_matches_torch_loop(llama_dir, tmp_path):
    data = pairs(8, seed=5, margin=True)
    data[0]["chosen_input_ids"] = data[0]["chosen_input_ids"] + [0, 0]  # trailing pad tokens
    trainer = calign.RewardTrainer(llama_dir, args=calign.RewardConfig(output_dir=str(tmp_path),
                                                                       **COMMON),
                                   train_dataset=data)
    head0 = torch.tensor(trainer.model.state_dict()["score.weight"][0].copy(),
                         requires_grad=True)
    trainer.train()
    backbone = hf_model(llama_dir)
    expected = ref.train_loop(
        list(backbone.parameters()) + [head0],
        lambda batch: ref.reward_batch_loss(backbone, head0, batch, pad_token_id=0),
        data, STEPS, 2, LR, 3, 0.01, 1.0)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)


# ---- accumulation, resume, checkpoints ---------------------------------------------------

def test_gradient_accumulation_does_not_change_the_run(llama_dir, tmp_path):
    data = pairs(8, seed=6)
    settings = dict(COMMON, max_steps=4)
    one = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path / "a"), **dict(settings, per_device_train_batch_size=4)),
        train_dataset=data)
    one.train()
    two = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path / "b"), gradient_accumulation_steps=2, **settings),
        train_dataset=data)
    two.train()
    np.testing.assert_allclose(one.model.params, two.model.params, atol=1e-6)


def test_sft_accumulation_weights_tokens_not_micro_batches(llama_dir, tmp_path):
    rng = np.random.default_rng(7)
    data = [{"input_ids": random_ids(rng, 2, 12)} for _ in range(8)]
    settings = dict(COMMON, max_steps=3)
    one = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(
        output_dir=str(tmp_path / "a"), **dict(settings, per_device_train_batch_size=4)),
        train_dataset=data)
    one.train()
    two = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(
        output_dir=str(tmp_path / "b"), gradient_accumulation_steps=2, **settings),
        train_dataset=data)
    two.train()
    np.testing.assert_allclose(one.model.params, two.model.params, atol=1e-6)


def test_resume_reproduces_the_uninterrupted_run(llama_dir, tmp_path):
    data = pairs(10, seed=8)
    settings = dict(COMMON, max_steps=6, save_steps=3, shuffle=True)
    full = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path / "full"),
                                                              **settings), train_dataset=data)
    full.train()
    resumed = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path / "full"), **settings), train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert losses_of(resumed)[3:] == losses_of(full)[3:]
    np.testing.assert_array_equal(resumed.model.params, full.model.params)


def test_checkpoints_are_complete_limited_and_load_in_transformers(llama_dir, tmp_path):
    trainer = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(
        output_dir=str(tmp_path), **dict(COMMON, max_steps=4, save_steps=1, save_total_limit=2)),
        train_dataset=[{"input_ids": [1, 2, 3, 4]}, {"input_ids": [5, 6, 7]}])
    trainer.train()
    names = sorted(os.listdir(tmp_path))
    assert [n for n in names if n.startswith("checkpoint")] == ["checkpoint-3", "checkpoint-4"]
    assert not [n for n in names if n.startswith(".")]  # no temporary folder left
    ckpt = tmp_path / "checkpoint-4"
    for name in ("model.safetensors", "config.json", "optimizer.safetensors",
                 "trainer_state.json"):
        assert (ckpt / name).is_file()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    expected = trainer.model.logits(ids.numpy())
    got = transformers.AutoModelForCausalLM.from_pretrained(ckpt)(ids).logits.detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "loss" in json.loads(lines[-1])


def test_reward_model_loads_as_sequence_classification(llama_dir, tmp_path):
    trainer = calign.RewardTrainer(llama_dir, args=calign.RewardConfig(
        output_dir=str(tmp_path), **dict(COMMON, max_steps=2)), train_dataset=pairs(4, seed=9))
    trainer.train()
    trainer.save_model(str(tmp_path / "rm"))
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    sequences = [[3, 4, 5, 6], [7, 8, 9, 10]]
    expected = hf(torch.tensor(sequences)).logits[:, 0].detach().numpy()
    ours = calign.RewardModel.from_pretrained(str(tmp_path / "rm")).score(sequences)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


# ---- data ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer):
    template = ("{% for m in messages %}< {{ m['role'] }} > {{ m['content'] }} <eos> "
                "{% endfor %}{% if add_generation_prompt %}< assistant > {% endif %}")
    return str(tiny_tokenizer(["<", ">", "user", "assistant", "the", "sky", "is", "blue",
                               "green", "red", "what", "color", "?", ".", "grass", "sun",
                               "yellow"], pre_tokenizer="whitespace", chat_template=template))


def test_text_formats_tokenize_like_trl(tokenizer_dir, llama_dir, tmp_path):
    tok = calign.Tokenizer.from_pretrained(tokenizer_dir)
    explicit = {"prompt": "the sky is", "chosen": " blue .", "rejected": " green ."}
    implicit = {"chosen": "the sky is blue .", "rejected": "the sky is green ."}
    conversational = {"prompt": [{"role": "user", "content": "what color is the sky ?"}],
                      "chosen": [{"role": "assistant", "content": "blue ."}],
                      "rejected": [{"role": "assistant", "content": "red ."}]}
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                                train_dataset=[explicit, implicit, conversational],
                                processing_class=tok)
    e0, e1, e2 = trainer.train_examples
    the, sky, is_, blue, green, dot, eos = (tok.token_to_id(w) for w in
                                             ["the", "sky", "is", "blue", "green", ".", "<eos>"])
    assert e0.prompt_ids == [the, sky, is_] and e0.completions == [[blue, dot, eos],
                                                                   [green, dot, eos]]
    assert e1.prompt_ids == e0.prompt_ids and e1.completions == e0.completions
    rendered = tok.apply_chat_template(conversational["prompt"], add_generation_prompt=True,
                                       tokenize=True)
    assert e2.prompt_ids == rendered
    assert tok.decode(e2.completions[0]).split() == ["blue", ".", "<eos>"]


def test_truncation_skips_and_counts_instead_of_nan(llama_dir, tmp_path):
    data = pairs(4, seed=10)
    data.append({"prompt_input_ids": list(range(1, 20)), "chosen_input_ids": [1],
                 "rejected_input_ids": [2]})
    with pytest.warns(UserWarning, match="skipped 1 of 5 records.*prompt alone reaches max_length"):
        trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
            output_dir=str(tmp_path), max_length=10, **dict(COMMON, max_steps=2)),
            train_dataset=data)
    assert len(trainer.train_examples) == 4
    trainer.train()
    assert all(np.isfinite(losses_of(trainer)))
    assert all(len(e.prompt_ids) + max(map(len, e.completions)) <= 10
               for e in trainer.train_examples)


def test_jsonl_source_and_its_errors(llama_dir, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in pairs(3)) + "\n\n")
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                                train_dataset=str(path))
    assert len(trainer.train_examples) == 3
    path.write_text(json.dumps(pairs(1)[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"data.jsonl:2: not valid JSON"):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                          train_dataset=str(path))


@pytest.mark.parametrize("field,value,error,match", [
    ("weight", -1.0, ValueError, "record 1: 'weight' must be a finite number >= 0, got -1.0"),
    ("weight", float("nan"), ValueError, "record 1: 'weight' must be a finite number"),
    ("weight", "high", ValueError, "record 1: 'weight' must be a finite number >= 0, got 'high'"),
    ("weight", "0.5", ValueError, "record 1: 'weight' must be a finite number >= 0, got '0.5'"),
    ("weight", True, ValueError, "record 1: 'weight' must be a finite number >= 0, got True"),
    ("margin", float("inf"), ValueError, "record 1: 'margin' must be a finite number"),
    ("ref_chosen_logps", 0.5, ValueError, "record 1: 'ref_chosen_logps' must be a finite number "
                                          "<= 0, got 0.5"),
])
def test_bad_optional_numbers_name_record_and_field(llama_dir, tmp_path, field, value, error,
                                                    match):
    """A negative weight would flip a pair's preference; NaN would poison a batch."""
    data = pairs(2, seed=20)
    data[1] = dict(data[1], **{field: value})
    if field == "ref_chosen_logps":
        data[1]["ref_rejected_logps"] = -3.0
    with pytest.raises(error, match=match):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                          train_dataset=data)


def test_damaged_reference_cache_is_computed_again(llama_dir, tmp_path):
    data = pairs(4, seed=21)
    config = calign.DPOConfig(output_dir=str(tmp_path), precompute_ref_log_probs=True,
                              **dict(COMMON, max_steps=1))
    first = calign.DPOTrainer(llama_dir, args=config, train_dataset=data)
    expected = [e.ref_logps for e in first.train_examples]
    [cache] = tmp_path.glob("ref_logps-train-*.npy")
    for damage in (lambda: np.save(cache, np.zeros((2, 5))),  # another shape
                   lambda: cache.write_bytes(cache.read_bytes()[:40])):  # truncated
        damage()
        with pytest.warns(UserWarning, match="reference log-prob cache .* computing it again"):
            again = calign.DPOTrainer(llama_dir, args=config, train_dataset=data)
        assert [e.ref_logps for e in again.train_examples] == expected
        assert np.load(cache).shape == (4, 2)  # rewritten


def test_missing_field_names_record_and_field(llama_dir, tmp_path, tokenizer_dir):
    with pytest.raises(KeyError, match="record 1 lacks the field 'rejected': it is missing"):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                          train_dataset=[{"prompt": "the", "chosen": "sky", "rejected": "sun"},
                                         {"prompt": "the", "chosen": "sky"}],
                          processing_class=tokenizer_dir)


@pytest.mark.parametrize("trainer,record,field", [
    ("DPOTrainer", {"prompt": "the", "chosen": "sky", "rejected": None}, "rejected"),
    ("DPOTrainer", {"prompt_input_ids": [1], "chosen_input_ids": None,
                    "rejected_input_ids": [2]}, "chosen_input_ids"),
    ("KTOTrainer", {"prompt": "the", "completion": "sky", "label": None}, "label"),
    ("KTOTrainer", {"prompt": "the", "chosen": None, "rejected": "sun"}, "chosen"),
    ("SFTTrainer", {"prompt": "the", "completion": None}, "completion"),
])
def test_a_field_set_to_none_is_named_as_none(llama_dir, tmp_path, tokenizer_dir, trainer,
                                              record, field):
    """datasets.Dataset fills a row's missing column with None: the message says
    the field is None, and does not list it among the fields with a value."""
    config_class = getattr(calign, trainer).config_class
    with pytest.raises(KeyError) as raised:
        getattr(calign, trainer)(llama_dir, args=config_class(output_dir=str(tmp_path)),
                                 train_dataset=[record], processing_class=tokenizer_dir)
    message = raised.value.args[0]
    assert f"train_dataset record 0 lacks the field {field!r}: it is None" in message
    assert repr(field) not in message.split("with a value are")[1]


@pytest.fixture(scope="module")
def short_llama_dir(tmp_path_factory):
    """A model with 16 positions (the bundled demo's size)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=24, num_hidden_layers=1, num_attention_heads=6, num_key_value_heads=2,
        head_dim=6, intermediate_size=40, vocab_size=VOCAB, initializer_range=0.2,
        max_position_embeddings=16)
    path = tmp_path_factory.mktemp("short_llama")
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return str(path)


def too_long(method):
    """Two records of a trainer's format; record 1 needs 10 + 7 = 17 positions
    (the completions share positions after the prompt: 7 is the longest)."""
    prompt, long, short = list(range(1, 11)), list(range(11, 18)), [3]
    if method == "sft":
        return [{"input_ids": [1, 2, 3]}, {"input_ids": list(range(1, 18))}]
    if method == "kto":
        return [{"prompt_input_ids": [1], "completion_input_ids": [2], "label": True},
                {"prompt_input_ids": prompt, "completion_input_ids": long, "label": False}]
    return [{"prompt_input_ids": [1], "chosen_input_ids": [2], "rejected_input_ids": [3]},
            {"prompt_input_ids": prompt, "chosen_input_ids": short, "rejected_input_ids": long}]


@pytest.mark.parametrize("method,trainer", [
    ("dpo", "DPOTrainer"), ("kto", "KTOTrainer"), ("orpo", "ORPOTrainer"),
    ("cpo", "CPOTrainer"), ("sft", "SFTTrainer"), ("rm", "RewardTrainer")])
def test_records_longer_than_the_model_are_refused_when_the_trainer_is_built(
        short_llama_dir, tmp_path, method, trainer):
    """Not six steps later when the record's batch comes up: every prepared
    example is checked against the model's positions, naming the record."""
    trainer_class = getattr(calign, trainer)
    build = lambda **options: trainer_class(  # noqa: E731
        short_llama_dir, args=trainer_class.config_class(
            output_dir=str(tmp_path), **dict(COMMON, max_steps=1, **options)),
        train_dataset=too_long(method))
    if method == "sft":
        match = (r"train_dataset record 1: the prompt \(1 tokens\) plus its longest completion "
                 r"\(16 tokens\) needs 17 positions, more than the model's maximum positions "
                 r"\(16\): set max_length to at most 16")
    else:
        match = (r"train_dataset record 1: the prompt \(10 tokens\) plus its longest completion "
                 r"\(7 tokens\) needs 17 positions, more than the model's maximum positions "
                 r"\(16\)")
    with pytest.raises(ValueError, match=match):
        build()
    trainer = build(max_length=16)  # truncated to fit, it trains
    trainer.train()
    assert np.isfinite(losses_of(trainer)).all()


def test_a_reference_or_eval_set_that_does_not_fit_is_refused_when_built(llama_dir,
                                                                       short_llama_dir, tmp_path):
    data = too_long("dpo")
    config = calign.DPOConfig(output_dir=str(tmp_path), max_length=None)
    for options in (dict(), dict(precompute_ref_log_probs=True, max_length=None)):
        with pytest.raises(ValueError, match=r"train_dataset record 1: .* more than the "
                                             r"ref_model's maximum positions \(16\)"):
            calign.DPOTrainer(llama_dir, ref_model=short_llama_dir, train_dataset=data,
                              args=calign.DPOConfig(output_dir=str(tmp_path), **options))
    with pytest.raises(ValueError, match=r"train_dataset record 1: .* ref_model's maximum"):
        calign.KTOTrainer(llama_dir, ref_model=short_llama_dir, train_dataset=too_long("kto"),
                          args=calign.KTOConfig(output_dir=str(tmp_path), max_length=None))
    trainer = calign.DPOTrainer(short_llama_dir, train_dataset=data[:1], args=config)
    with pytest.raises(ValueError, match=r"eval_dataset record 1: .* model's maximum positions"):
        trainer.evaluate(data)


def test_token_ids_outside_the_vocabulary_are_refused_when_built(llama_dir, tmp_path):
    data = pairs(2, seed=30)
    data[1]["rejected_input_ids"] = [1, VOCAB + 4]
    with pytest.raises(ValueError, match=rf"train_dataset record 1: completion 1 holds token id "
                                         rf"{VOCAB + 4}, outside the model's vocabulary "
                                         rf"\[0, {VOCAB}\)"):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                          train_dataset=data)
    data[1]["rejected_input_ids"] = [1, -2]
    with pytest.raises(ValueError, match="train_dataset record 1: rejected_input_ids holds a "
                                         "negative token id"):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                          train_dataset=data)
    data[1]["rejected_input_ids"] = np.array([1, 2], np.int64)  # NumPy ids are ids
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                                train_dataset=data)
    assert trainer.train_examples[1].completions[1] == [1, 2]


def test_kto_cuts_the_borrowed_completion_of_a_kl_pair_to_fit(short_llama_dir, tmp_path):
    """Prompt 0 (10 tokens) borrows record 1's 12-token completion for the KL
    estimate: cut to the model's 16 positions (and max_length), as TRL cuts its
    KL sequences, instead of failing in the engine."""
    data = [{"prompt_input_ids": list(range(1, 11)), "completion_input_ids": [3] * 5,
             "label": True},
            {"prompt_input_ids": [1], "completion_input_ids": [4] * 12, "label": False}]
    for max_length, own, room in ((None, 5, 6), (14, 4, 4)):
        trainer = calign.KTOTrainer(short_llama_dir, args=calign.KTOConfig(
            output_dir=str(tmp_path), max_length=max_length, **dict(COMMON, max_steps=1)),
            train_dataset=data)
        paired = trainer._with_mismatched(trainer.train_examples)
        assert paired[0].completions == [[3] * own, [4] * room]
        assert paired[1].completions == [[4] * 12, [3] * own]
        trainer.train()
        assert np.isfinite(losses_of(trainer)).all()


def test_dpo_refuses_what_its_data_and_settings_cannot_do_together(llama_dir, tmp_path):
    weighted = [dict(r, weight=0.5) for r in pairs(2, seed=31)]
    with pytest.raises(ValueError, match="train_dataset record 0: the field 'weight' cannot be "
                                         "used with loss_type 'aot'"):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path),
                                                           loss_type=["sigmoid", "aot"]),
                          train_dataset=weighted)
    columns = [dict(r, ref_chosen_logps=-3.0, ref_rejected_logps=-4.0) for r in pairs(2)]
    with pytest.raises(ValueError, match="sync_ref_model must be False when every "
                                         "train_dataset record gives ref_chosen_logps"):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path),
                                                           sync_ref_model=True),
                          train_dataset=columns)


# ---- configs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(beta=0.0), "beta"),
    (dict(loss_type="nope"), "loss_type"),
    (dict(lr_scheduler_type="step"), "lr_scheduler_type"),
    (dict(per_device_train_batch_size=0), "per_device_train_batch_size"),
    (dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0]), "loss_weights"),
    (dict(truncation_mode="middle"), "truncation_mode"),
    (dict(loss_type="scpo", scpo_alpha=-1.0), "scpo_alpha must be .*>= 0"),
    (dict(scpo_alpha="1"), "scpo_alpha"),
    (dict(reference_free="False"), "reference_free must be True or False"),
    (dict(precompute_ref_log_probs=1), "precompute_ref_log_probs must be True or False"),
])
def test_bad_config_values_raise_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        calign.DPOConfig(**kwargs)


def test_configs_take_numpy_values_and_trl_defaults():
    config = calign.DPOConfig(loss_type=np.array(["sigmoid", "hinge"]),
                              loss_weights=np.array([1.0, 0.5]), use_weighting=np.True_,
                              beta=np.float32(0.25))
    assert config.loss_weights == [1.0, 0.5] and config.use_weighting is True
    assert config.loss_types == ["sigmoid", "hinge"] and config.beta == 0.25
    # TRL's default None means "completion only for prompt/completion data": True here
    assert calign.SFTConfig(completion_only_loss=None).completion_only_loss is True
    with pytest.raises(ValueError, match="completion_only_loss must be True, False or None"):
        calign.SFTConfig(completion_only_loss="no")
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        calign.DPOConfig(learning_rate=10**400)  # beyond a double: named, not OverflowError


@pytest.mark.parametrize("config_class,name,value", [
    (calign.DPOConfig, "max_steps", True), (calign.DPOConfig, "seed", True),
    (calign.DPOConfig, "seed", -1), (calign.DPOConfig, "per_device_train_batch_size", 2.0),
    (calign.DPOConfig, "save_steps", np.float64(1)), (calign.DPOConfig, "max_length", True),
    (calign.DPOConfig, "eval_steps", False), (calign.DPOConfig, "ref_model_sync_steps", True),
    (calign.DPOConfig, "learning_rate", True), (calign.DPOConfig, "warmup_ratio", np.nan),
    (calign.DPOConfig, "beta", True), (calign.DPOConfig, "label_smoothing", False),
    (calign.DPOConfig, "ld_alpha", True), (calign.DPOConfig, "shuffle", 1),
    (calign.OnlineDPOConfig, "max_new_tokens", True),
    (calign.OnlineDPOConfig, "temperature", True),
    (calign.KTOConfig, "desirable_weight", True), (calign.CPOConfig, "cpo_alpha", True),
    (calign.CPOConfig, "simpo_gamma", float("inf")), (calign.ORPOConfig, "beta", "0.1"),
    (calign.RewardConfig, "center_rewards_coefficient", True),
    (calign.SFTConfig, "logging_steps", np.bool_(True)),
])
def test_config_numbers_refuse_bools_and_other_types(config_class, name, value):
    """An integer field takes integers, a float field finite reals, a flag True or
    False: never a bool for a number (True is not a count) nor a number for a flag."""
    with pytest.raises(ValueError, match=f"^{name} must be"):
        config_class(**{name: value})


def test_config_numbers_take_numpy_scalars_as_python_numbers():
    config = calign.DPOConfig(per_device_train_batch_size=np.int64(4), max_steps=np.int32(3),
                              seed=np.uint8(7), max_length=np.int64(64),
                              num_train_epochs=np.float32(2), ld_alpha=np.float64(0.5),
                              gradient_checkpointing=np.True_)
    for name, value in (("per_device_train_batch_size", 4), ("max_steps", 3), ("seed", 7),
                        ("max_length", 64), ("num_train_epochs", 2.0), ("ld_alpha", 0.5),
                        ("gradient_checkpointing", True)):
        assert getattr(config, name) == value and type(getattr(config, name)) is type(value)
    online = calign.OnlineDPOConfig(max_new_tokens=np.int64(3), temperature=np.float32(0.5))
    assert type(online.max_new_tokens) is int and online.temperature == 0.5


@pytest.mark.parametrize("config_class,kwargs,name", [
    # the loss library's rules, run by the config (not first by the trainer)
    (calign.DPOConfig, dict(loss_type="robust", label_smoothing=0.6), "label_smoothing"),
    (calign.DPOConfig, dict(loss_type="exo_pair"), "label_smoothing"),
    (calign.DPOConfig, dict(discopop_tau=0.0, loss_type="discopop"), "discopop_tau"),
    # settings no chosen loss uses
    (calign.DPOConfig, dict(label_smoothing=0.1), "label_smoothing"),
    (calign.DPOConfig, dict(loss_type="listwise", label_smoothing=0.1), "label_smoothing"),
    (calign.DPOConfig, dict(loss_type="nca_pair", f_divergence_type="js_divergence"),
     "f_divergence_type"),
    (calign.DPOConfig, dict(f_alpha_divergence_coef=0.3), "f_alpha_divergence_coef"),
    (calign.DPOConfig, dict(discopop_tau=0.1), "discopop_tau"),
    (calign.DPOConfig, dict(scpo_alpha=0.5), "scpo_alpha"),
    (calign.DPOConfig, dict(ref_model_sync_steps=8), "ref_model_sync_steps"),
    (calign.DPOConfig, dict(ref_model_mixup_alpha=0.5), "ref_model_mixup_alpha"),
    # listwise is one loss of its own
    (calign.DPOConfig, dict(loss_type=["listwise", "sigmoid"]), "loss_type"),
    (calign.DPOConfig, dict(loss_type="listwise", loss_weights=[1.0]), "loss_weights"),
    (calign.DPOConfig, dict(loss_type="listwise", rpo_alpha=0.5), "rpo_alpha"),
    (calign.DPOConfig, dict(loss_type="listwise", use_weighting=True), "use_weighting"),
    # combinations whose numbers would be wrong or which cannot run
    (calign.DPOConfig, dict(loss_type="aot", use_weighting=True), "use_weighting"),
    (calign.DPOConfig, dict(ld_alpha=0.5, rpo_alpha=0.5), "ld_alpha"),
    (calign.DPOConfig, dict(ld_alpha=0.5, loss_type=["sigmoid", "sft"]), "ld_alpha"),
    (calign.DPOConfig, dict(sync_ref_model=True, precompute_ref_log_probs=True),
     "sync_ref_model"),
    (calign.DPOConfig, dict(sync_ref_model=True, reference_free=True), "sync_ref_model"),
    (calign.DPOConfig, dict(precompute_ref_log_probs=True, reference_free=True),
     "precompute_ref_log_probs"),
    (calign.OnlineDPOConfig, dict(loss_type="listwise"), "loss_type"),
    (calign.OnlineDPOConfig, dict(max_completion_length=8), "max_completion_length"),
    (calign.OnlineDPOConfig, dict(precompute_ref_log_probs=True), "precompute_ref_log_probs"),
    (calign.KTOConfig, dict(per_device_train_batch_size=1), "per_device_train_batch_size"),
    (calign.CPOConfig, dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing"),
    (calign.CPOConfig, dict(loss_type="sigmoid", simpo_gamma=1.0), "simpo_gamma"),
    (calign.CPOConfig, dict(label_smoothing=0.6), "label_smoothing"),
])
def test_configs_refuse_contradicting_or_unused_settings(config_class, kwargs, name):
    """Every combination is checked when the config is built, naming the field."""
    with pytest.raises(ValueError, match=f"^{name} must be"):
        config_class(**kwargs)


def test_configs_accept_the_settings_a_loss_uses():
    calign.DPOConfig(loss_type="robust", label_smoothing=0.3)
    calign.DPOConfig(loss_type=["sigmoid", "aot"], label_smoothing=0.1)
    calign.DPOConfig(loss_type="ipo", f_divergence_type="alpha_divergence",
                     f_alpha_divergence_coef=0.5)
    calign.DPOConfig(loss_type="discopop", discopop_tau=0.1)
    calign.DPOConfig(loss_type="scpo", scpo_alpha=0.5)
    calign.DPOConfig(sync_ref_model=True, ref_model_sync_steps=8, ref_model_mixup_alpha=0.5)
    calign.DPOConfig(loss_type="listwise", ld_alpha=0.5)
    calign.DPOConfig(ld_alpha=0.5, use_weighting=True)
    calign.KTOConfig(loss_type="apo_zero_unpaired", per_device_train_batch_size=1)
    calign.CPOConfig(loss_type="simpo", label_smoothing=0.1, simpo_gamma=1.0)


def test_truncation_settings_are_one_value_the_data_functions_take():
    from calign.data import Truncation

    config = calign.SFTConfig(max_length=np.int64(8), max_prompt_length=3,
                              truncation_mode="keep_end")
    assert Truncation.of(config) == Truncation(8, 3, None, "keep_end")
    assert Truncation().apply([1, 2, 3], [[4, 5]]) == ([1, 2, 3], [[4, 5]], None)
    assert Truncation(max_length=4).apply([1, 2, 3], [[4, 5]]) == ([1, 2, 3], [[4]], None)
    assert Truncation(max_length=3).apply([1, 2, 3], [[4]])[2] == "prompt alone reaches max_length"
    for kwargs, name in ((dict(max_length=1), "max_length"),
                         (dict(max_prompt_length=True), "max_prompt_length"),
                         (dict(max_completion_length=2.5), "max_completion_length"),
                         (dict(truncation_mode="middle"), "truncation_mode")):
        with pytest.raises(ValueError, match=f"^{name} must be"):
            Truncation(**kwargs)


def test_unknown_config_field_raises():
    with pytest.raises(TypeError, match="betta"):
        calign.DPOConfig(betta=0.1)


def test_listwise_dpo_first_loss_is_log_k_factorial(llama_dir, tmp_path, tokenizer_dir):
    """With the reference equal to the policy every implicit reward is 0, and the
    Plackett-Luce loss of a ranking of K responses is log K!."""
    data = [{"prompt": "the sky is", "responses": [" blue .", " green .", " red ."]},
            {"prompt": "the grass is", "responses": [" green .", " blue .", " yellow ."]}]
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), loss_type="listwise", **dict(COMMON, max_steps=3)),
        train_dataset=data, processing_class=tokenizer_dir)
    trainer.train()
    assert losses_of(trainer)[0] == pytest.approx(math.log(6), abs=1e-6)
    assert losses_of(trainer)[-1] < losses_of(trainer)[0]
    with pytest.raises(KeyError, match="responses"):
        calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path),
                                                           loss_type="listwise"),
                          train_dataset=pairs(2))


# ---- reference options, DPO variants, SFT formats ------------------------------------------

def test_precomputed_reference_equals_live_reference(llama_dir, tmp_path):
    data = pairs(6, seed=12)
    settings = dict(COMMON, max_steps=4)
    live = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path / "a"),
                                                              **settings), train_dataset=data)
    live.train()
    pre = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path / "b"), precompute_ref_log_probs=True, **settings),
        train_dataset=data)
    assert all(e.ref_logps is not None for e in pre.train_examples)
    assert list((tmp_path / "b").glob("ref_logps-train-*.npy"))  # cached for the next run
    assert pre.ref_model is None  # the policy scored the data itself: no copy of the weights
    pre.train()
    np.testing.assert_allclose(losses_of(pre), losses_of(live), atol=1e-6)
    with pytest.raises(ValueError, match="give eval_dataset to the trainer"):
        pre.evaluate(pairs(2, seed=99))  # the policy has moved: it is no reference any more
    # dataset columns are used as given
    columns = [dict(r, ref_chosen_logps=e.ref_logps[0], ref_rejected_logps=e.ref_logps[1])
               for r, e in zip(data, pre.train_examples, strict=True)]
    given = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path / "c"),
                                                               **settings),
                              train_dataset=columns)
    assert given.ref_model is None
    given.train()
    np.testing.assert_allclose(losses_of(given), losses_of(live), atol=1e-6)


def test_a_separate_reference_model_live_and_precomputed(llama_dir, tmp_path):
    """An explicit ref_model (here: perturbed weights) is what the rewards are measured
    against, live or precomputed."""
    data = pairs(4, seed=15)
    settings = dict(COMMON, max_steps=2)
    reference = calign.Model.from_pretrained(llama_dir)
    reference.params += np.random.default_rng(0).normal(0, 0.02, reference.params.size)
    live = calign.DPOTrainer(llama_dir, ref_model=reference, args=calign.DPOConfig(
        output_dir=str(tmp_path / "a"), **settings), train_dataset=data)
    live.train()
    pre = calign.DPOTrainer(llama_dir, ref_model=reference, args=calign.DPOConfig(
        output_dir=str(tmp_path / "b"), precompute_ref_log_probs=True, **settings),
        train_dataset=data)
    assert pre.ref_model is None
    pre.train()
    np.testing.assert_allclose(losses_of(pre), losses_of(live), atol=1e-6)
    # the first step of a self-referenced run starts at ln 2; this one does not
    assert abs(losses_of(live)[0] - np.log(2)) > 1e-3


def test_gradient_checkpointing_trains_the_same(llama_dir, tmp_path):
    data = pairs(4, seed=16)
    runs = []
    for checkpointing in (False, True):
        trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
            output_dir=str(tmp_path / str(checkpointing)), gradient_checkpointing=checkpointing,
            **dict(COMMON, max_steps=3)), train_dataset=data)
        assert trainer.model.gradient_checkpointing is checkpointing
        trainer.train()
        runs.append((losses_of(trainer), trainer.model.params.copy()))
    assert runs[1][0] == runs[0][0]
    np.testing.assert_array_equal(runs[1][1], runs[0][1])
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        calign.DPOConfig(gradient_checkpointing="yes")


@pytest.mark.parametrize("options", [dict(), dict(ld_alpha=0.5, loss_type="ipo"),
                                     dict(reference_free=True, loss_type="hinge"),
                                     dict(gradient_accumulation_steps=2)])
def test_fused_pair_scoring_trains_as_the_three_call_path(llama_dir, tmp_path, options):
    data = [dict(r, weight=w) for r, w in zip(pairs(8, seed=17), [1.0, 0.5] * 4, strict=True)]
    runs = []
    for fused in (True, False):
        trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
            output_dir=str(tmp_path / str(fused)), **dict(COMMON, max_steps=3, **options)),
            train_dataset=data)
        assert trainer.fused_pairs
        trainer.fused_pairs = fused
        trainer.train()
        runs.append(([h for h in trainer.state.log_history if "loss" in h],
                     trainer.model.params.copy()))
    for fused_log, plain_log in zip(*(r[0] for r in runs), strict=True):
        for key, value in plain_log.items():
            assert fused_log[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-6)


def test_fused_pair_scoring_is_off_where_pairs_are_coupled(llama_dir, tmp_path):
    for options in (dict(loss_type="aot"), dict(rpo_alpha=0.5), dict(use_weighting=True),
                    dict(loss_type=["sigmoid", "sft"])):
        trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
            output_dir=str(tmp_path), **dict(COMMON, **options)), train_dataset=pairs(2))
        assert not trainer.fused_pairs, options


def test_reference_free_and_variants_match_the_loss_library(llama_dir, tmp_path):
    """One step's logged loss equals calign.losses on the logged log-probs."""
    data = pairs(4, seed=13)
    settings = dict(COMMON, max_steps=1, per_device_train_batch_size=4)
    free = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), reference_free=True, beta=0.2, **settings), train_dataset=data)
    free.train()
    row = free.state.log_history[0]
    # with a uniform reference the rewards are beta * policy log-probs
    assert row["rewards/chosen"] == pytest.approx(0.2 * row["logps/chosen"], rel=1e-9)
    for extra in (dict(ld_alpha=0.5), dict(rpo_alpha=0.7), dict(use_weighting=True),
                  dict(loss_type=["sigmoid", "ipo"], loss_weights=[1.0, 0.5]),
                  dict(f_divergence_type="js_divergence")):
        trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
            output_dir=str(tmp_path), **extra, **settings), train_dataset=data)
        trainer.train()
        assert np.isfinite(losses_of(trainer)[0]), extra


def test_tr_dpo_moves_the_reference(llama_dir, tmp_path):
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), sync_ref_model=True, ref_model_sync_steps=2,
        ref_model_mixup_alpha=0.5, **dict(COMMON, max_steps=2)), train_dataset=pairs(4, seed=14))
    initial = trainer.ref_model.params.copy()
    trainer.train()
    # synced once, after step 2 (TRL's callback runs once global_step counts the step)
    np.testing.assert_allclose(trainer.ref_model.params,
                               0.5 * trainer.model.params + 0.5 * initial, atol=1e-6)


def test_sft_text_formats(tokenizer_dir, llama_dir, tmp_path):
    tok = calign.Tokenizer.from_pretrained(tokenizer_dir)
    records = [{"text": "the sky is blue ."},
               {"prompt": "the sky is", "completion": " blue ."},
               {"messages": [{"role": "user", "content": "what color is the sky ?"},
                             {"role": "assistant", "content": "blue ."}]}]
    trainer = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(output_dir=str(tmp_path),
                                                                 **dict(COMMON, max_steps=2)),
                                train_dataset=records, processing_class=tok)
    text, prompt_completion, chat = trainer.train_examples
    eos = tok.eos_token_id
    assert text.prompt_ids + text.completions[0] == tok.encode("the sky is blue .") + [eos]
    assert prompt_completion.prompt_ids == tok.encode("the sky is")
    assert prompt_completion.completions[0] == tok.encode("blue .") + [eos]  # loss on these only
    assert chat.prompt_ids + chat.completions[0] == tok.apply_chat_template(
        records[2]["messages"], tokenize=True)
    trainer.train()
    assert np.isfinite(losses_of(trainer)).all()


def test_datasets_dataset_and_kto_from_pairs(llama_dir, tmp_path):
    import datasets

    data = datasets.Dataset.from_list(pairs(4, seed=15))
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(output_dir=str(tmp_path)),
                                train_dataset=data)
    assert len(trainer.train_examples) == 4
    kto = calign.KTOTrainer(llama_dir, args=calign.KTOConfig(output_dir=str(tmp_path)),
                            train_dataset=[{"prompt_input_ids": [1, 2], "completion_input_ids": [3],
                                            "label": True},
                                           {"prompt_input_ids": [4], "completion_input_ids": [5, 6],
                                            "label": False}])
    assert [e.label for e in kto.train_examples] == [True, False]
    with pytest.raises(TypeError, match="label must be true or false"):
        calign.KTOTrainer(llama_dir, args=calign.KTOConfig(output_dir=str(tmp_path)),
                          train_dataset=[{"prompt_input_ids": [1], "completion_input_ids": [3],
                                          "label": 1}])


def test_evaluate_logs_eval_metrics(llama_dir, tmp_path):
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), eval_strategy="steps", eval_steps=2,
        **dict(COMMON, max_steps=4)),
        train_dataset=pairs(4, seed=16), eval_dataset=pairs(3, seed=17))
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert {"eval_rewards/accuracies", "eval_logps/chosen"} <= set(evals[0])
    again = trainer.evaluate()
    assert again["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], abs=1e-12)


def test_keep_end_truncation_keeps_completions_whole(llama_dir, tmp_path):
    data = [{"prompt_input_ids": list(range(1, 11)), "chosen_input_ids": [11, 12, 13],
             "rejected_input_ids": [14, 15]}]
    trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), max_length=8, truncation_mode="keep_end"), train_dataset=data)
    example = trainer.train_examples[0]
    assert example.prompt_ids == [6, 7, 8, 9, 10] and example.completions == [[11, 12, 13],
                                                                               [14, 15]]


def test_kto_converts_paired_records_and_reward_model_scores_text(tokenizer_dir, llama_dir,
                                                                  tmp_path):
    paired = [{"prompt": "the sky is", "chosen": " blue .", "rejected": " green ."},
              {"prompt": "the grass is", "chosen": " green .", "rejected": " red ."}]
    kto = calign.KTOTrainer(llama_dir, args=calign.KTOConfig(output_dir=str(tmp_path)),
                            train_dataset=paired, processing_class=tokenizer_dir)
    assert [e.label for e in kto.train_examples] == [True, False, True, False]
    tok = calign.Tokenizer.from_pretrained(tokenizer_dir)
    reward_model = calign.RewardModel.from_causal_lm(llama_dir, pad_token_id=0)
    by_text = reward_model.score(["the sky is blue ."], tokenizer=tok)
    by_ids = reward_model.score([tok.encode("the sky is blue .")])
    np.testing.assert_allclose(by_text, by_ids)
    with pytest.raises(ValueError, match="tokenizer="):
        reward_model.score(["the sky"])


def test_training_is_independent_of_thread_count(llama_dir, tmp_path):
    data = pairs(6, seed=18)
    losses_by_threads, params = [], []
    previous = calign.get_num_threads()
    try:
        for threads in (1, 2):
            calign.set_num_threads(threads)
            trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
                output_dir=str(tmp_path / str(threads)), **dict(COMMON, max_steps=4)),
                train_dataset=data)
            trainer.train()
            losses_by_threads.append(losses_of(trainer))
            params.append(trainer.model.params.copy())
    finally:
        calign.set_num_threads(previous)
    np.testing.assert_allclose(losses_by_threads[0], losses_by_threads[1], atol=1e-6)
    np.testing.assert_allclose(params[0], params[1], atol=1e-5)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_steps_allocate_no_workspace_once_sized(llama_dir, tmp_path, checkpointing):
    """The engine's arena and logits scratch grow to the largest batch seen; the
    second epoch over the same batches (shuffle off) allocates neither, for the
    policy or the reference."""
    seen = []

    class Counting(calign.DPOTrainer):
        def _after_optimizer_step(self):
            super()._after_optimizer_step()
            seen.append((self.model.workspace_allocations(),
                         self.ref_model.workspace_allocations()))

    trainer = Counting(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), gradient_checkpointing=checkpointing,
        **dict(COMMON, max_steps=6)), train_dataset=pairs(6, seed=19))
    trainer.train()
    assert len(seen) == 6 and min(seen[0]) >= 1
    assert seen[3:] == [seen[2]] * 3, seen


def test_functional_dpo_defaults_are_the_configs():
    """calign.losses.dpo_loss and DPOConfig share one set of defaults (TRL's)."""
    import inspect

    config = calign.DPOConfig(output_dir="unused")
    for function in (calign.losses.dpo_settings, calign.losses.dpo_loss):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.default is not inspect.Parameter.empty and hasattr(config, name):
                value = getattr(config, name)
                if name == "loss_type":  # the config keeps a list of loss types
                    value, = value
                assert parameter.default == value, (function.__name__, name)
