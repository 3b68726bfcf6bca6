"""generate() takes its defaults from a checkpoint's generation_config.json as
transformers does: eos as an int or a list, sampling settings, a repetition
penalty (applied in C), arguments overriding."""

import json

import numpy as np
import pytest
import torch
import transformers

import calign

VOCAB = 97


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory):
    """A tiny llama whose generation config stops at either of two eos ids."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("instruct")
    config = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, vocab_size=VOCAB, initializer_range=0.5, tie_word_embeddings=False)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.save_pretrained(path)
    return path, hf


def hf_generate(hf, prompt, **kwargs):
    out = hf.generate(torch.tensor([prompt]), pad_token_id=0, **kwargs)
    return out[0, len(prompt):].tolist()


def write_generation_config(path, **fields):
    (path / "generation_config.json").write_text(json.dumps(fields))


def test_eos_list_stops_where_transformers_stops(instruct_dir):
    path, hf = instruct_dir
    prompts = [[5, 17, 2], [9], [4, 4, 8, 30, 1], [60, 61]]
    # eos: tokens the greedy continuations of these prompts produce early
    free = [hf_generate(hf, p, max_new_tokens=12, do_sample=False, eos_token_id=None)
            for p in prompts]
    eos = sorted({free[0][3], free[2][1]})
    write_generation_config(path, eos_token_id=eos, max_new_tokens=12, do_sample=False)
    try:
        model = calign.Model.from_pretrained(str(path))
        reference = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        got = model.generate(prompts)
        for prompt, tokens in zip(prompts, got, strict=True):
            assert tokens == hf_generate(reference, prompt)
        assert any(len(t) < 12 for t in got)  # the list did stop some sequences
        # arguments override the file; [] switches its eos off
        assert model.generate(prompts, eos_token_id=[]) == free
        assert model.generate(prompts[:1], max_new_tokens=2) == [free[0][:2]]
    finally:
        (path / "generation_config.json").unlink()


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_repetition_penalty_matches_transformers(instruct_dir, penalty):
    path, hf = instruct_dir
    model = calign.Model.from_pretrained(str(path))
    for prompt in ([5, 17, 2, 5, 5], [9, 9, 9], [4, 4, 8, 30, 1, 8]):
        expected = hf_generate(hf, prompt, max_new_tokens=15, do_sample=False,
                               repetition_penalty=penalty, eos_token_id=None)
        assert model.generate([prompt], max_new_tokens=15,
                              repetition_penalty=penalty)[0] == expected
    plain = model.generate([[9, 9, 9]], max_new_tokens=15)[0]
    assert model.generate([[9, 9, 9]], max_new_tokens=15, repetition_penalty=1.0)[0] == plain


def test_missing_fields_take_transformers_defaults(instruct_dir):
    """A generation_config.json that sets do_sample but not top_k samples with
    transformers' top_k of 50; without the file calign keeps the full
    distribution."""
    path, _ = instruct_dir
    write_generation_config(path, do_sample=True, temperature=5.0, max_new_tokens=1)
    try:
        model = calign.Model.from_pretrained(str(path))
        prompts = [[3]] * 400
        first = {t[0] for t in model.generate(prompts, seed=0)}
        assert 30 < len(first) <= 50  # at most the top 50, and sampling does spread
        no_file = calign.Model.from_pretrained(str(path))
        no_file.generation_config = None
        first = {t[0] for t in no_file.generate(prompts, max_new_tokens=1, do_sample=True,
                                                temperature=5.0, seed=0)}
        assert len(first) > 50
    finally:
        (path / "generation_config.json").unlink()


@pytest.mark.parametrize("fields, match", [
    (dict(eos_token_id="2"), r"eos_token_id \(from generation_config.json\) must be an integer"),
    (dict(temperature=-1.0), r"temperature \(from generation_config.json\) must be"),
    (dict(do_sample="true"), r"do_sample \(from generation_config.json\) must be True or False"),
    (dict(repetition_penalty=0), r"repetition_penalty \(from generation_config.json\)"),
])
def test_bad_generation_config_values_are_named(instruct_dir, fields, match):
    path, _ = instruct_dir
    write_generation_config(path, max_new_tokens=3, **fields)
    try:
        model = calign.Model.from_pretrained(str(path))
        with pytest.raises(ValueError, match=match):
            model.generate([[1, 2]])
    finally:
        (path / "generation_config.json").unlink()


def test_unreadable_generation_config_names_the_file(instruct_dir):
    path, _ = instruct_dir
    (path / "generation_config.json").write_text("[1, 2]")
    try:
        with pytest.raises(ValueError, match="generation_config.json must hold a JSON object"):
            calign.Model.from_pretrained(str(path))
    finally:
        (path / "generation_config.json").unlink()


def test_max_new_tokens_is_required_without_a_generation_config(instruct_dir):
    path, _ = instruct_dir
    model = calign.Model.from_pretrained(str(path))
    with pytest.raises(ValueError, match="max_new_tokens is required"):
        model.generate([[1, 2]])
    assert np.all(np.array(model.generate([[1, 2]], max_new_tokens=2)) >= 0)
