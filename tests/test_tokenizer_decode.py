"""calign.Tokenizer.decode against transformers' decode of the same tokenizer
folder: which tokens skip_special_tokens leaves out (tokenizer.json's special
tokens and those the config names special) and clean_up_tokenization_spaces."""

import json

import pytest
import transformers
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers

import calign
from calign import testing

WORDS = ["<eos>", "<x>", "<img>", "<y>", "a", "b", ".", "n't", "?"]
# (config fields added to the word tokenizer's tokenizer_config.json, a
# special_tokens_map.json or None)
CONFIGS = {
    "tokenizer.json's special tokens": ({}, None),
    "a named token that tokenizer.json holds as a word": (dict(eos_token="<eos>"), None),
    "additional_special_tokens, cleaned up": (
        dict(additional_special_tokens=["<x>"], clean_up_tokenization_spaces=True), None),
    "extra_special_tokens as a list": (dict(extra_special_tokens=["<x>", "<y>"]), None),
    "extra_special_tokens as a mapping, a model's own *_token": (
        dict(extra_special_tokens={"foo_token": "<y>"}, image_token="<img>"), None),
    "added_tokens_decoder": (dict(added_tokens_decoder={
        "2": {"content": "<x>", "special": True}, "4": {"content": "<y>", "special": False}}),
        None),
    "legacy special_tokens_map.json": (
        {}, {"additional_special_tokens": ["<img>"], "mask_token": "<x>"}),
}
IDS = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [6, 2, 4, 9], [1], [10, 8, 7, 9]]


def word_tokenizer(path, fields, special_map):
    folder = testing.save_word_tokenizer(path, WORDS, eos_token="<eos>")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(fields)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if special_map is not None:
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map))
    return folder


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_decode_agrees_with_transformers(tmp_path, case):
    folder = word_tokenizer(tmp_path / "tok", *CONFIGS[case])
    ours = calign.Tokenizer.from_pretrained(str(folder))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.vocab_size == len(theirs)
    for ids in IDS:
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == \
                theirs.decode(ids, skip_special_tokens=skip), (ids, skip)
            for clean in (False, True):
                assert ours.decode(ids, skip, clean_up_tokenization_spaces=clean) == \
                    theirs.decode(ids, skip_special_tokens=skip,
                                  clean_up_tokenization_spaces=clean), (ids, skip, clean)


def test_skip_special_tokens_leaves_out_what_the_config_names(tmp_path):
    folder = word_tokenizer(tmp_path / "tok", dict(additional_special_tokens=["<x>"],
                                                   image_token="<img>"), None)
    ours = calign.Tokenizer.from_pretrained(str(folder))
    ids = [ours.token_to_id(t) for t in ("<pad>", "<eos>", "<x>", "<img>", "<y>", "a")]
    assert ours.decode(ids) == "<pad> <eos> <x> <img> <y> a"
    assert ours.decode(ids, skip_special_tokens=True) == "<y> a"
    assert set(ours.all_special_tokens) >= {"<pad>", "<eos>", "<x>", "<img>"}
    assert "<y>" not in ours.all_special_tokens


def byte_level_bpe(path, config):
    vocab = {"a": 0, "b": 1, ".": 2, "\u0120": 3, "\u0120a": 4, "\u0120.": 5, "<eos>": 6}
    backend = Backend(models.BPE(vocab, [("\u0120", "a"), ("\u0120", ".")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<eos>"])
    path.mkdir()
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        dict(tokenizer_class="PreTrainedTokenizerFast", eos_token="<eos>", **config)))
    return path


@pytest.mark.parametrize("force", [False, True])
def test_a_bpe_model_is_not_cleaned_up_unless_forced(tmp_path, force):
    folder = byte_level_bpe(tmp_path / "bpe", dict(
        clean_up_tokenization_spaces=True,
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=force))
    ours = calign.Tokenizer.from_pretrained(str(folder))
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    ids = [0, 4, 5, 6]  # "a", " a", " .", <eos>
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == \
            theirs.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ids, skip_special_tokens=True) == ("a a." if force else "a a .")


@pytest.mark.parametrize("fields,match", [
    (dict(extra_special_tokens=5), "'extra_special_tokens' must be a list of tokens"),
    (dict(additional_special_tokens=[7]), r"'additional_special_tokens\[0\]' must be a token"),
    (dict(added_tokens_decoder=[1]), "'added_tokens_decoder' must map ids to AddedToken"),
    (dict(mask_token=3), "'mask_token' must be a token string"),
])
def test_bad_special_token_fields_are_named(tmp_path, fields, match):
    folder = word_tokenizer(tmp_path / "tok", fields, None)
    with pytest.raises(ValueError, match=match):
        calign.Tokenizer.from_pretrained(str(folder))
