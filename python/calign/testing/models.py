"""Tiny random checkpoints of each model family calign runs, built by calign
itself (no torch, no transformers), in the folder layout transformers loads.

The default sizes are odd on purpose (vocabularies that are not multiples of 8,
head_dim different from hidden_size / heads, 3 query heads per key/value head),
so that a kernel assuming round shapes fails on them; every family's entry
says what it exercises. Every field the engine and transformers read is
written explicitly, so both see the same model whatever their defaults are.
"""

import copy
import os
import pathlib
import shutil
import tempfile

from calign import checks
from calign.testing.wordtokenizer import TOKENIZER_FILES, save_word_tokenizer

FAMILY_CONFIGS = {
    # GPT-2: Conv1D layout, learned positions, tied head, head_dim 48/4 = 12,
    # a vocabulary that is not a multiple of 8
    "gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=48, n_layer=2,
                 n_head=4, n_positions=160, vocab_size=1003, activation_function="gelu_new",
                 layer_norm_epsilon=1e-5, initializer_range=0.2, tie_word_embeddings=True,
                 bos_token_id=None, eos_token_id=None),
    # Llama: GQA with 3 query heads per kv head, head_dim 12 != 48/6, biases on
    # the attention and MLP projections, rope_theta 500000, an untied head
    "llama": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=48,
                  num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                  head_dim=12, intermediate_size=72, vocab_size=997, attention_bias=True,
                  mlp_bias=True, rope_theta=500000.0, rms_norm_eps=1e-6,
                  max_position_embeddings=512, hidden_act="silu", initializer_range=0.2,
                  tie_word_embeddings=False),
    # Qwen2: biases on q, k and v but not o, 3 query heads per kv head
    "qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=48,
                  num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=1003, rope_theta=10000.0, rms_norm_eps=1e-6,
                  max_position_embeddings=512, hidden_act="silu", initializer_range=0.2,
                  tie_word_embeddings=False, use_sliding_window=False),
    # Qwen3: per-head q/k RMSNorm, head_dim 12 != 40/6
    "qwen3": dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_size=40,
                  num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                  head_dim=12, intermediate_size=56, vocab_size=999, rope_theta=10000.0,
                  rms_norm_eps=1e-6, max_position_embeddings=512, hidden_act="silu",
                  initializer_range=0.2, tie_word_embeddings=False, use_sliding_window=False),
}
FAMILIES = tuple(FAMILY_CONFIGS)


def tiny_config(family="llama", **overrides):
    """The config.json dict of a tiny `family` model: the family's defaults
    (FAMILY_CONFIGS) updated with `overrides`, transformers' field names
    (e.g. vocab_size=37, tie_word_embeddings=True). A value of None is written
    as null, which both calign and transformers read as "not set" (head_dim=None:
    hidden_size / heads)."""
    checks.choice("family", family, FAMILIES)
    if "model_type" in overrides and overrides["model_type"] != family:
        raise ValueError(f"model_type must be the family {family!r}, got "
                         f"{overrides['model_type']!r} (choose the family instead)")
    return dict(copy.deepcopy(FAMILY_CONFIGS[family]), **copy.deepcopy(overrides))


def save_tiny_model(path, family="llama", *, seed=0, tokenizer=None, **overrides):
    """Writes a randomly initialised tiny checkpoint (config.json and
    model.safetensors, calign.Model.from_config(config, seed)) into `path` and
    returns it as a pathlib.Path.

    tokenizer: None (weights only); True (a word-level tokenizer of as many
    tokens as the vocabulary, see save_word_tokenizer); or a folder holding
    tokenizer.json, whose files are copied in. With a tokenizer, vocab_size
    defaults to its size and pad/eos/bos_token_id to its special tokens' ids."""
    from calign.model import Model

    seed = checks.seed("seed", seed)
    config = tiny_config(family, **overrides)
    if tokenizer is None:
        Model.from_config(config, seed=seed).save_pretrained(path)
        return pathlib.Path(path)
    if tokenizer is True:
        with tempfile.TemporaryDirectory() as scratch:
            save_word_tokenizer(scratch, vocab_size=config["vocab_size"])
            return save_tiny_model(path, family, seed=seed, tokenizer=scratch, **overrides)
    checks.require(isinstance(tokenizer, (str, os.PathLike)) and
                   os.path.isfile(os.path.join(tokenizer, "tokenizer.json")), "tokenizer",
                   tokenizer, "None, True or a folder holding tokenizer.json")
    _match_tokenizer(config, overrides, tokenizer)
    Model.from_config(config, seed=seed).save_pretrained(path)
    for name in TOKENIZER_FILES:
        file = os.path.join(tokenizer, name)
        if os.path.isfile(file):
            shutil.copy2(file, os.path.join(path, name))
    return pathlib.Path(path)


def _match_tokenizer(config, overrides, folder):
    """vocab_size and the special token ids from the tokenizer in `folder`,
    unless `overrides` sets them."""
    from calign.tokenizer import Tokenizer

    words = Tokenizer.from_pretrained(os.fspath(folder))
    if "vocab_size" not in overrides:
        config["vocab_size"] = words.vocab_size
    checks.require(config["vocab_size"] >= words.vocab_size, "vocab_size", config["vocab_size"],
                   f"at least the tokenizer's {words.vocab_size} tokens")
    for field, token_id in (("pad_token_id", words.pad_token_id),
                            ("eos_token_id", words.eos_token_id),
                            ("bos_token_id", words.bos_token_id)):
        if field not in overrides and token_id is not None:
            config[field] = token_id
