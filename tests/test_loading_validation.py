"""Loading checkpoints, configs and tokenizers (issue 22): no input is taken
without a check and turned into wrong numbers; a refusal is a ValueError
(ConfigError, CheckpointError) whose message names the field or the file.
One test per class of bad input, a property test over random config values,
and transformers as the reference for what loads and what it computes."""

import json
import math
import re
import shutil

import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import calign
from calign.model import config as config_module
from calign.model.checkpoint import CheckpointError, read_tensors
from calign.model.config import ConfigError, engine_config, parameter_count

BASES = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=48, vocab_size=101,
                  max_position_embeddings=64),
    "qwen2": dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=48, vocab_size=101,
                  max_position_embeddings=64),
    "qwen3": dict(model_type="qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, intermediate_size=48, vocab_size=101,
                  max_position_embeddings=64),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=101,
                 n_positions=64),
}
ABSENT = object()  # a case that removes the field


def with_field(family, key, value):
    config = dict(BASES[family])
    if value is ABSENT:
        config.pop(key, None)
    else:
        config[key] = value
    return config


def saved(tmp_path, config, name="model"):
    path = tmp_path / name
    calign.Model.from_config(config, seed=0).save_pretrained(str(path))
    return path


def edit_json(file, **changes):
    content = json.loads(file.read_text())
    content.update(changes)
    file.write_text(json.dumps(content))


# ---- class 1: config values taken without checking --------------------------------------

NAN, INF = float("nan"), float("inf")
UNCHECKED_VALUES = [
    # flags must be JSON booleans: "false" is truthy, 0 is a number
    ("llama", "tie_word_embeddings", "false"), ("gpt2", "tie_word_embeddings", "false"),
    ("llama", "tie_word_embeddings", 0), ("llama", "tie_word_embeddings", None),
    ("llama", "attention_bias", "false"), ("qwen3", "attention_bias", "false"),
    ("llama", "mlp_bias", "no"), ("gpt2", "scale_attn_weights", "true"),
    ("gpt2", "add_cross_attention", "false"), ("qwen2", "use_sliding_window", "false"),
    # sizes must be JSON integers >= 1
    ("llama", "head_dim", 0), ("llama", "head_dim", "8"), ("llama", "head_dim", 8.5),
    ("llama", "head_dim", 8.0), ("llama", "head_dim", -8), ("llama", "head_dim", True),
    ("qwen3", "head_dim", None), ("qwen2", "head_dim", None), ("qwen2", "head_dim", "8"),
    ("llama", "hidden_size", "32"), ("llama", "hidden_size", 32.0), ("llama", "hidden_size", True),
    ("llama", "hidden_size", None), ("llama", "hidden_size", ABSENT), ("llama", "hidden_size", 0),
    ("llama", "vocab_size", 1e12), ("llama", "vocab_size", -1), ("llama", "intermediate_size", 0),
    ("llama", "num_hidden_layers", 2.0), ("llama", "max_position_embeddings", None),
    ("llama", "max_position_embeddings", 64.0), ("llama", "num_key_value_heads", 0),
    ("gpt2", "n_inner", 0), ("gpt2", "n_inner", 128.0), ("gpt2", "n_positions", "64"),
    # divisibility and evenness, as transformers requires them
    ("llama", "num_attention_heads", 5),        # LlamaConfig: hidden_size % heads
    ("gpt2", "n_head", 5),                      # GPT2Attention: n_embd % n_head
    ("llama", "num_key_value_heads", 3),        # heads % kv heads
    ("qwen2", "num_key_value_heads", ABSENT),   # Qwen2Config's default is 32 kv heads
    ("llama", "head_dim", 7), ("qwen2", "head_dim", 7),  # RoPE needs an even head_dim
    ("qwen2", "num_attention_heads", 64),       # 32 // 64 = 0
    # numbers must be finite and in range
    ("llama", "rms_norm_eps", NAN), ("llama", "rms_norm_eps", -1.0),
    ("llama", "rms_norm_eps", INF), ("llama", "rms_norm_eps", "1e-6"),
    ("llama", "rms_norm_eps", None), ("llama", "rms_norm_eps", 1e39),
    ("llama", "rms_norm_eps", 0), ("gpt2", "layer_norm_epsilon", 1),  # transformers: a float
    ("gpt2", "layer_norm_epsilon", NAN),
    ("llama", "rope_theta", NAN), ("llama", "rope_theta", -1.0), ("llama", "rope_theta", 0),
    ("llama", "rope_theta", INF), ("llama", "rope_theta", "10000"), ("llama", "rope_theta", True),
    ("llama", "rope_theta", None), ("llama", "rope_theta", 1e-300),
    ("llama", "rope_parameters", {"rope_type": "default", "rope_theta": NAN}),
    ("llama", "rope_parameters", {"rope_type": "default", "rope_theta": "1e4"}),
    ("llama", "rope_parameters", [10000.0]),
    ("llama", "rope_parameters", {"full_attention": {"rope_type": "default"}}),
    ("llama", "rope_scaling", {"rope_type": "yarn", "factor": 2.0}),
    ("llama", "initializer_range", "0.02"), ("llama", "initializer_range", None),
    ("llama", "initializer_range", 2.0), ("qwen2", "initializer_range", NAN),
    ("qwen3", "initializer_range", 1),
    ("llama", "pad_token_id", "0"), ("llama", "pad_token_id", True),
    # names
    ("llama", "hidden_act", "gelu"), ("gpt2", "activation_function", 5),
    ("qwen2", "layer_types", "full_attention"), ("qwen2", "layer_types", ["full_attention"]),
    ("qwen2", "layer_types", ["full_attention", "sliding_attention"]),
]


@pytest.mark.parametrize("family,key,value", UNCHECKED_VALUES,
                         ids=[f"{f}-{k}-{v!r}"[:60] for f, k, v in UNCHECKED_VALUES])
def test_config_values_are_checked(family, key, value):
    with pytest.raises(ConfigError) as info:
        calign.Model(with_field(family, key, value))
    assert key in str(info.value)


def test_a_string_flag_no_longer_drops_the_checkpoint_s_lm_head(tmp_path):
    """The reported case: tie_word_embeddings "false" made calign tie the head
    and ignore the checkpoint's lm_head (logits off by 0.83)."""
    path = saved(tmp_path, BASES["llama"])
    edit_json(path / "config.json", tie_word_embeddings="false")
    with pytest.raises(ConfigError, match="'tie_word_embeddings' must be True or False, got "
                                          "'false'"):
        calign.Model.from_pretrained(str(path))


def test_transformers_refusals_are_calign_s():
    """Each case above that transformers' config class refuses, calign refuses
    too (it refuses more: NaN and negative epsilons, 0 sizes, which
    transformers takes and computes NaN or crashes with)."""
    refused_by_transformers = 0
    for family, key, value in UNCHECKED_VALUES:
        config = with_field(family, key, value)
        try:
            transformers.AutoConfig.for_model(**config)
        except Exception:  # noqa: BLE001 - any refusal counts
            refused_by_transformers += 1
            with pytest.raises(ConfigError):
                engine_config(config)
    assert refused_by_transformers >= 20


# ---- class 2: integers that wrap in the C int ------------------------------------------

WRAPPING = [("llama", key, 2**32 + BASES["llama"][key]) for key in (
    "hidden_size", "num_hidden_layers", "max_position_embeddings", "vocab_size",
    "intermediate_size", "num_attention_heads", "num_key_value_heads")] + [
    ("llama", "head_dim", 2**32 + 8), ("llama", "vocab_size", 2**63),
    ("llama", "hidden_size", 2**31), ("llama", "vocab_size", -(2**32) + 101),
    ("gpt2", "n_embd", 2**32 + 32), ("gpt2", "n_positions", 2**32 + 64),
    ("gpt2", "n_layer", 2**32 + 2), ("gpt2", "n_inner", 2**32 + 128),
    ("qwen3", "head_dim", 2**64 + 8)]


@pytest.mark.parametrize("family,key,value", WRAPPING,
                         ids=[f"{f}-{k}-{v}" for f, k, v in WRAPPING])
def test_sizes_beyond_a_c_int_are_refused(family, key, value):
    with pytest.raises(ConfigError,
                       match=rf"'{key}' must be (None or )?an integer in \[1, 2147483647\]"):
        calign.Model(with_field(family, key, value))


@pytest.mark.parametrize("changes,names", [
    # (heads + 2 kv heads) x head_dim is a C int in the engine
    (dict(num_attention_heads=2**24, num_key_value_heads=2**24, head_dim=64),
     "num_attention_heads + 2 num_key_value_heads"),
    # so is the fused gate/up projection's width
    (dict(intermediate_size=2**30 + 1), "2 x intermediate_size")])
def test_derived_widths_beyond_a_c_int_are_refused(changes, names):
    with pytest.raises(ConfigError, match=re.escape(names)):
        engine_config(dict(BASES["qwen3"], **changes))


def test_a_wrapping_size_in_a_checkpoint_is_refused_not_loaded_small(tmp_path):
    """hidden_size 2**32 + 32 used to load as the 32-wide model it wraps to."""
    path = saved(tmp_path, BASES["llama"])
    for key in ("hidden_size", "num_hidden_layers", "max_position_embeddings"):
        folder = tmp_path / key
        shutil.copytree(path, folder)
        edit_json(folder / "config.json", **{key: 2**32 + BASES["llama"][key]})
        with pytest.raises(ConfigError, match=key):
            calign.Model.from_pretrained(str(folder))


# ---- class 3: sizes this machine cannot hold ----------------------------------------------

@pytest.mark.parametrize("family,changes", [
    ("llama", dict(hidden_size=10**9)),
    ("llama", dict(vocab_size=2**31 - 1)),
    ("llama", dict(num_hidden_layers=10**8)),
    ("qwen3", dict(num_attention_heads=10**9, num_key_value_heads=1, head_dim=2)),
    ("gpt2", dict(n_positions=2**31 - 1))])
def test_models_beyond_memory_are_refused_with_the_size_they_need(family, changes):
    config = dict(BASES[family], **changes)
    with pytest.raises(ConfigError) as info:
        calign.Model(config)
    message = str(info.value)
    assert "for its float32 parameters and gradients" in message
    assert "this machine has" in message and ("TiB" in message or "GiB" in message)
    assert all(f"{key}={value}" in message for key, value in changes.items())


def test_the_memory_bound_is_the_parameter_count(monkeypatch):
    """With the machine's memory pretended to be 1 MiB, a model whose float32
    parameters and gradients fit loads, and one that needs more is refused
    with its exact parameter count."""
    monkeypatch.setattr(config_module, "physical_memory_bytes", lambda: 2**20)
    small = dict(BASES["llama"], vocab_size=11, num_hidden_layers=1)
    assert 8 * calign.Model(small).num_parameters() < 2**20
    big = dict(BASES["llama"], vocab_size=2000)
    monkeypatch.undo()
    n_big = calign.Model(big).num_parameters()
    monkeypatch.setattr(config_module, "physical_memory_bytes", lambda: 2**20)
    assert 8 * n_big > 2**20
    with pytest.raises(ConfigError, match=rf"\({n_big:,} parameters .*this machine has 1.0 MiB"):
        calign.Model(big)


@pytest.mark.parametrize("family,changes", [
    ("llama", {}), ("llama", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    ("qwen2", {}), ("qwen2", dict(num_attention_heads=5, num_key_value_heads=1)),
    ("qwen3", dict(attention_bias=True)), ("gpt2", {}), ("gpt2", dict(n_inner=72,
                                                                      tie_word_embeddings=False))])
def test_parameter_count_is_the_engine_s(family, changes):
    """parameter_count (the memory bound's) counts the engine's own layout."""
    config = dict(BASES[family], **changes)
    assert parameter_count(engine_config(config)) == calign.Model(config).num_parameters()


def test_vocab_1e12_names_the_field():
    """vocab 1e12 read "model sizes must all be >= 1" (it wrapped negative)."""
    with pytest.raises(ConfigError, match=r"'vocab_size' must be an integer in \[1, 2147483647\], "
                                          r"got 1000000000000"):
        calign.Model(dict(BASES["llama"], vocab_size=10**12))


# ---- class 4: weights that overflow float32 -------------------------------------------------

@pytest.mark.parametrize("value,dtype,match", [
    (1e300, np.float64, "beyond the float32 range"), (-1e39, np.float64, "beyond the float32"),
    (np.inf, np.float16, "NaN or infinity"), (np.nan, np.float64, "NaN or infinity")])
def test_weights_are_checked_after_the_float32_conversion(tmp_path, value, dtype, match):
    path = saved(tmp_path, BASES["llama"])
    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    tensors = {name: t.astype(dtype) for name, t in tensors.items()}
    tensors["model.norm.weight"][3] = value
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"tensor 'model.norm.weight' contains .*{match}"):
        calign.Model.from_pretrained(str(path))


def test_float64_and_float16_weights_load_as_their_float32_values(tmp_path):
    path = saved(tmp_path, BASES["llama"])
    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    rng = np.random.default_rng(0)
    for dtype in (np.float64, np.float16):
        wide = {name: (t + rng.normal(0, 1e-3, t.shape)).astype(dtype)
                for name, t in tensors.items()}
        safetensors.numpy.save_file(wide, str(path / "model.safetensors"))
        model = calign.Model.from_pretrained(str(path))
        for name, view in model.state_dict().items():
            np.testing.assert_array_equal(view, wide[name].astype(np.float32))


# ---- class 5: files whose faults were reported without naming them -----------------------

def word_tokenizer(path, config=None):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>", "<bos>", "<sep>"] + [f"w{i}" for i in range(20)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["<pad>", "<eos>", "<bos>", "<sep>"])
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("files,match", [
    ({"tokenizer_config.json": b"null"}, "tokenizer_config.json.* must hold a JSON object"),
    ({"tokenizer_config.json": b"[1, 2]"}, "tokenizer_config.json.* must hold a JSON object"),
    ({"tokenizer_config.json": b'{"eos_token": 5}'},
     "tokenizer_config.json.*'eos_token' must be a token string"),
    ({"tokenizer_config.json": b'{"pad_token": ["<pad>"]}'}, "'pad_token' must be a token"),
    ({"tokenizer_config.json": b'{"bos_token": {"text": "<bos>"}}'}, "'bos_token' must be a"),
    ({"tokenizer_config.json": b'{"chat_template": 5}'},
     "tokenizer_config.json.*'chat_template' must be a jinja"),
    ({"tokenizer_config.json": b'{"chat_template": [{"name": "default"}]}'}, "'chat_template'"),
    ({"tokenizer_config.json": b'{"eos_token": "\xff<eos>"}'},
     "tokenizer_config.json.* is not UTF-8 text"),
    ({"chat_template.jinja": b"{{ messages \xfe }}"}, "chat_template.jinja.* is not UTF-8 text"),
    ({"additional_chat_templates/tool_use.jinja": b"\xc3("}, "tool_use.jinja.* is not UTF-8"),
    ({"special_tokens_map.json": b"null"}, "special_tokens_map.json.* must hold a JSON object"),
    ({"tokenizer_config.json": b'{"eos_token": ' + b"1" * 5000 + b"}"},
     "tokenizer_config.json.* is not valid JSON: Exceeds the limit"),
    ({"special_tokens_map.json": b'{"eos_token": 3}'},
     "special_tokens_map.json' field 'eos_token' must be a token string")])
def test_tokenizer_files_are_named_in_their_errors(tmp_path, files, match):
    path = word_tokenizer(tmp_path / "tok")
    for name, content in files.items():
        (path / name).parent.mkdir(exist_ok=True)
        (path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match):
        calign.Tokenizer.from_pretrained(str(path))


def sharded(tmp_path, weight_map=None):
    """A llama checkpoint split into two shards with an index."""
    path = saved(tmp_path, BASES["llama"], "sharded")
    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    (path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:5],
              "model-00002-of-00002.safetensors": names[5:]}
    for shard, shard_names in shards.items():
        safetensors.numpy.save_file({n: tensors[n] for n in shard_names}, str(path / shard))
    index = {"metadata": {}, "weight_map": weight_map if weight_map is not None else {
        n: shard for shard, shard_names in shards.items() for n in shard_names}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


def test_a_sharded_checkpoint_loads(tmp_path):
    path = sharded(tmp_path)
    model = calign.Model.from_pretrained(str(path))
    whole = calign.Model.from_config(BASES["llama"], seed=0)
    for name, view in model.state_dict().items():
        np.testing.assert_array_equal(view, whole.state_dict()[name])


@pytest.mark.parametrize("weight_map,match", [
    (["model-00001-of-00002.safetensors"], "'weight_map' must be an object"),
    ("model-00001-of-00002.safetensors", "'weight_map' must be an object"),
    (None, "'weight_map' must be an object"),
    ({"model.norm.weight": "../outside.safetensors"}, "tensor 'model.norm.weight' must be a file "
                                                      "name inside the checkpoint folder"),
    ({"model.norm.weight": "sub/../../outside.safetensors"}, "inside the checkpoint folder"),
    ({"model.norm.weight": "/etc/passwd"}, "inside the checkpoint folder, got '/etc/passwd'"),
    ({"model.norm.weight": 3}, "inside the checkpoint folder, got 3"),
    ({"model.norm.weight": ""}, "inside the checkpoint folder")])
def test_sharded_index_faults_are_named(tmp_path, weight_map, match):
    path = sharded(tmp_path)
    index = path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=match):
        calign.Model.from_pretrained(str(path))


def test_an_index_path_leaving_the_folder_is_not_read(tmp_path):
    """The shard outside the folder exists and holds the right tensors: it is
    refused for where it is, not for what it holds."""
    path = sharded(tmp_path)
    shutil.copy(path / "model-00002-of-00002.safetensors", tmp_path / "outside.safetensors")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"] = {n: "../outside.safetensors" if s.startswith("model-00002") else s
                           for n, s in index["weight_map"].items()}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="inside the checkpoint folder"):
        calign.Model.from_pretrained(str(path))


def test_index_and_config_encoding_and_duplicate_tensors_are_named(tmp_path):
    path = sharded(tmp_path)
    index = path / "model.safetensors.index.json"
    original = index.read_bytes()
    index.write_bytes(b'{"weight_map": {"\xff": 1}}')
    with pytest.raises(CheckpointError, match="model.safetensors.index.json.* not a valid"):
        calign.Model.from_pretrained(str(path))
    index.write_bytes(original)
    # a tensor in two shards: which copy is meant cannot be known
    first = path / "model-00001-of-00002.safetensors"
    second = safetensors.numpy.load_file(str(path / "model-00002-of-00002.safetensors"))
    extra = dict(safetensors.numpy.load_file(str(first)), **{"model.norm.weight":
                                                             second["model.norm.weight"] + 1})
    safetensors.numpy.save_file(extra, str(first))
    with pytest.raises(CheckpointError, match="'model.norm.weight' is in both .*00001.*00002"):
        calign.Model.from_pretrained(str(path))
    config = path / "config.json"
    config.write_bytes(b'{"model_type": "llama\xff"}')
    with pytest.raises(ConfigError, match="config.json .* is not UTF-8 text"):
        calign.Model.from_pretrained(str(path))
    config.write_bytes(b"null")
    with pytest.raises(ConfigError, match="config.json .* must hold a JSON object"):
        calign.Model.from_pretrained(str(path))
    config.write_bytes(b'{"vocab_size": ' + b"1" * 5000 + b"}")
    with pytest.raises(ConfigError, match="config.json .* is not valid JSON: Exceeds the limit"):
        calign.Model.from_pretrained(str(path))
    index.write_bytes(b'{"weight_map": {"a": ' + b"1" * 5000 + b"}}")
    with pytest.raises(CheckpointError, match="index.json.* not a valid .* Exceeds the limit"):
        read_tensors(str(path))


def test_architectures_must_be_a_list_of_names(tmp_path):
    """A string "architectures" would be read letter by letter, so a reward
    model's checkpoint would be taken for a causal LM."""
    path = saved(tmp_path, BASES["llama"])
    edit_json(path / "config.json", architectures="LlamaForSequenceClassification")
    with pytest.raises(ConfigError, match="'architectures' .* must be a list of class names"):
        config_module.load_config_file(str(path))


# ---- class 6: chat templates as a list of named templates -------------------------------

DEFAULT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}"
                    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[assistant]"
                    "{% endif %}")
TOOL_TEMPLATE = ("{{ bos_token }}TOOLS {{ tools | tojson }}\n{% for m in messages %}"
                 "<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}")
RAG_TEMPLATE = "{% for m in messages %}{{ m.content }}{% if not loop.last %} <sep> {% endif %}" \
               "{% endfor %}"
MESSAGES = [{"role": "system", "content": "w1"}, {"role": "user", "content": "w2 w3"},
            {"role": "assistant", "content": "w4"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "finds w5",
                                           "parameters": {"type": "object", "properties": {}}}}]
SELECTIONS = [{}, {"add_generation_prompt": True}, {"chat_template": "tool_use"},
              {"tools": TOOLS}, {"chat_template": "rag"},
              {"chat_template": "X {{ messages[0].content }}"}]


def tokenizer_pair(path):
    from transformers import AutoTokenizer
    return calign.Tokenizer.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


@pytest.fixture
def named_templates(tmp_path):
    return word_tokenizer(tmp_path / "named", {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>", "bos_token": "<bos>",
        "pad_token": "<pad>",
        "chat_template": [{"name": "default", "template": DEFAULT_TEMPLATE},
                          {"name": "tool_use", "template": TOOL_TEMPLATE},
                          {"name": "rag", "template": RAG_TEMPLATE}]})


@pytest.mark.parametrize("selection", SELECTIONS, ids=lambda s: "-".join(s) or "default")
def test_named_chat_templates_render_as_transformers_renders_them(named_templates, selection):
    ours, theirs = tokenizer_pair(named_templates)
    text = ours.apply_chat_template(MESSAGES, **selection)
    assert text == theirs.apply_chat_template(MESSAGES, tokenize=False, **selection)
    ids = ours.apply_chat_template(MESSAGES, tokenize=True, **selection)
    assert ids == ours.encode(text, add_special_tokens=False) and ids


def test_named_templates_round_trip_through_both_save_formats(named_templates, tmp_path):
    """calign's save (the list in tokenizer_config.json) and transformers' save
    (chat_template.jinja + additional_chat_templates/) load as the same templates."""
    ours, theirs = tokenizer_pair(named_templates)
    ours.save_pretrained(str(tmp_path / "ours"))
    theirs.save_pretrained(str(tmp_path / "theirs"))
    assert (tmp_path / "theirs" / "additional_chat_templates" / "tool_use.jinja").is_file()
    for folder in ("ours", "theirs"):
        again, reference = tokenizer_pair(tmp_path / folder)
        assert again.chat_template == reference.chat_template == ours.chat_template
        for selection in SELECTIONS:
            assert again.apply_chat_template(MESSAGES, **selection) == \
                reference.apply_chat_template(MESSAGES, tokenize=False, **selection)


def test_template_files_take_priority_and_missing_default_is_refused(tmp_path):
    path = word_tokenizer(tmp_path / "files", {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>",
        "chat_template": "CONFIG {{ messages | length }}"})
    (path / "chat_template.jinja").write_text("FILE {{ messages | length }}")
    ours, theirs = tokenizer_pair(path)
    assert ours.apply_chat_template(MESSAGES) == \
        theirs.apply_chat_template(MESSAGES, tokenize=False) == "FILE 3"
    path = word_tokenizer(tmp_path / "no_default", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": [{"name": "rag", "template": RAG_TEMPLATE},
                          {"name": "tool_use", "template": TOOL_TEMPLATE}]})
    ours, theirs = tokenizer_pair(path)
    with pytest.raises(ValueError, match=r"several chat templates .* \['rag', 'tool_use'\]"):
        ours.apply_chat_template(MESSAGES)
    with pytest.raises(ValueError):
        theirs.apply_chat_template(MESSAGES, tokenize=False)
    assert ours.apply_chat_template(MESSAGES, chat_template="rag") == \
        theirs.apply_chat_template(MESSAGES, tokenize=False, chat_template="rag")
    with pytest.raises(ValueError, match="chat_template must be a template name"):
        ours.apply_chat_template(MESSAGES, chat_template=5)
    with pytest.raises(ValueError, match="tools must be a list of JSON schemas"):
        ours.apply_chat_template(MESSAGES, tools="lookup")


def test_special_tokens_map_is_read_as_transformers_reads_it(tmp_path):
    """Without added_tokens_decoder, transformers takes special_tokens_map.json's
    tokens over tokenizer_config.json's; with it, tokenizer_config.json's."""
    for legacy in (True, False):
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>",
                  "bos_token": "<bos>"}
        if not legacy:
            config["added_tokens_decoder"] = {}
        path = word_tokenizer(tmp_path / str(legacy), config)
        (path / "special_tokens_map.json").write_text(json.dumps(
            {"eos_token": {"content": "<sep>", "special": True}, "pad_token": "<pad>"}))
        ours, theirs = tokenizer_pair(path)
        for token in ("eos_token", "bos_token", "pad_token"):
            assert getattr(ours, token) == getattr(theirs, token), (legacy, token)
        assert ours.eos_token == ("<sep>" if legacy else "<eos>")


# ---- what transformers accepts loads, and computes what transformers computes -------------

ACCEPTED = {
    # Qwen2 rounds head_dim down: 32 // 5 = 6
    "qwen2 5 heads on width 32": transformers.Qwen2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=5, num_key_value_heads=5,
        intermediate_size=40, vocab_size=97),
    # Qwen2 builds q/k/v biases and nothing else, whatever attention_bias/mlp_bias say
    "qwen2 with bias flags it ignores": transformers.Qwen2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=40, vocab_size=97, attention_bias=True, mlp_bias=True),
    # Qwen3's head_dim defaults to 128 whatever the width
    "qwen3 without head_dim": transformers.Qwen3Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=24, vocab_size=97, mlp_bias=True),
    "llama head_dim 2, tied, rms_norm_eps 0": transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        head_dim=2, intermediate_size=40, vocab_size=97, tie_word_embeddings=True,
        rms_norm_eps=0.0, max_position_embeddings=2**31 - 1),
    "llama legacy rope_scaling with its own rope_theta": dict(
        model_type="llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=40, vocab_size=97, rope_theta=10000,
        rope_scaling={"type": "default", "rope_theta": 50.0}),
    "gpt2 untied with n_inner": transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=2, n_inner=56, vocab_size=97, n_positions=32,
        tie_word_embeddings=False),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_configs_transformers_accepts_load_with_its_numbers(name, tmp_path):
    config = ACCEPTED[name]
    if isinstance(config, dict):
        config = transformers.AutoConfig.for_model(**config)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases and norms, so that ignoring one would show
        for tensor in hf.parameters():
            tensor.normal_(0.0, 0.3)
    hf.save_pretrained(tmp_path)
    model = calign.Model.from_pretrained(str(tmp_path))
    ids = np.random.default_rng(0).integers(0, 97, (2, 9))
    expected = hf(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(model.logits(ids), expected, atol=1e-4)


# ---- the property: a model exactly as given, or a ConfigError naming the field ---------

SIZES = {
    "llama": dict(hidden_size="d_model", num_attention_heads="n_head",
                  num_key_value_heads="n_kv_head", head_dim="head_dim",
                  intermediate_size="d_ff", vocab_size="vocab", num_hidden_layers="n_layer",
                  max_position_embeddings="max_positions"),
    "gpt2": dict(n_embd="d_model", n_head="n_head", n_layer="n_layer", n_inner="d_ff",
                 vocab_size="vocab", n_positions="max_positions"),
}
SIZES["qwen2"] = SIZES["qwen3"] = SIZES["llama"]
NUMBERS = {"rms_norm_eps": "norm_eps", "layer_norm_epsilon": "norm_eps", "rope_theta": "rope_theta"}
FLAGS = {"tie_word_embeddings": "tied_embeddings", "attention_bias": "o_bias",
         "mlp_bias": "mlp_bias"}
IGNORED = {"qwen2": ("attention_bias", "mlp_bias"), "qwen3": ("mlp_bias",),  # as in transformers
           "gpt2": ("attention_bias", "mlp_bias"), "llama": ("use_sliding_window",)}
FIELDS = {family: sorted(SIZES[family]) + sorted(FLAGS) + [
    "initializer_range", "pad_token_id"] + (
    ["layer_norm_epsilon", "scale_attn_weights", "activation_function"] if family == "gpt2" else
    ["rms_norm_eps", "rope_theta", "use_sliding_window", "hidden_act"]) for family in BASES}

INTS = st.one_of(st.integers(-3, 70), st.sampled_from([
    2**31 - 1, 2**31, 2**32, 2**32 + 8, 2**32 + 32, 2**63 - 1, 2**63, 2**64 + 8, -(2**31),
    -(2**63), 10**12, 10**9]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([
    8.0, 8.5, 0.0, -0.0, 1e-6, 1e-300, 5e-324, 3.5e38, 1e39, 1e300, 10000.0, 32.0]))
VALUES = st.one_of(INTS, FLOATS, st.booleans(), st.none(), st.just(ABSENT),
                   st.sampled_from(["8", "false", "true", "", "nan", "1e-6", "silu"]),
                   st.sampled_from([[], [8], {}, {"content": 8}]))


def transformers_value(hf_config, family, key):
    """The value transformers' model reads for `key` (the given one, or its default)."""
    if key == "rope_theta":
        return hf_config.rope_parameters["rope_theta"]
    if key == "head_dim" and family == "qwen2":
        return getattr(hf_config, "head_dim",
                       hf_config.hidden_size // hf_config.num_attention_heads)
    if key == "n_inner" and hf_config.n_inner is None:
        return 4 * hf_config.n_embd
    return getattr(hf_config, key)


def assert_taken_as_given(family, key, value):
    """An accepted value has the type transformers gives the field."""
    if value is ABSENT or key in IGNORED.get(family, ()):
        return
    if key in SIZES[family]:
        assert value is None or (type(value) is int and 1 <= value <= 2**31 - 1), value
    elif key == "pad_token_id":  # any integer, as in transformers (one outside the vocabulary
        assert value is None or type(value) is int, value  # pads nothing)
    elif key == "rope_theta":
        assert type(value) in (int, float) and math.isfinite(value) and value > 0, value
    elif key in NUMBERS or key == "initializer_range":
        assert type(value) is float and math.isfinite(value) and value >= 0, value
    elif key in FLAGS or key in ("use_sliding_window", "scale_attn_weights"):
        assert type(value) is bool, value
    else:
        assert value in ("silu", "gelu_new"), value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_config_values_give_the_model_asked_for_or_a_named_refusal(data):
    """One to three fields of a tiny config set to random values: every outcome
    is a ConfigError naming one of them, or an engine holding exactly the value
    transformers' model reads for each; never another exception, never a value
    read differently. A config calign accepts, transformers' strict config
    class accepts too."""
    family = data.draw(st.sampled_from(sorted(BASES)), label="family")
    keys = data.draw(st.lists(st.sampled_from(FIELDS[family]), min_size=1, max_size=3,
                              unique=True), label="keys")
    changes = {key: data.draw(VALUES, label=key) for key in keys}
    config = dict(BASES[family])
    for key, value in changes.items():
        if value is ABSENT:
            config.pop(key, None)
        else:
            config[key] = value
    try:
        engine = engine_config(config)
    except ConfigError as exc:
        assert any(key in str(exc) for key in keys), str(exc)
        return
    hf_config = transformers.AutoConfig.for_model(**config)
    ignored = [key for key in keys if key in IGNORED.get(family, ())]
    assert engine == engine_config({k: v for k, v in config.items() if k not in ignored})
    for key, value in changes.items():
        assert_taken_as_given(family, key, value)
        engine_key = {**SIZES[family], **NUMBERS, **FLAGS}.get(key)
        if engine_key is not None and key not in ignored:
            expected = transformers_value(hf_config, family, key)
            if key == "rope_theta":  # transformers takes any rope_theta and computes in float
                expected = float(expected)
            assert engine[engine_key] == expected, (engine, key, value)
    if parameter_count(engine) < 10**6:
        model = calign.Model(config)
        assert model.num_parameters() == parameter_count(engine)
        assert ("lm_head.weight" in model.state_dict()) == (not engine["tied_embeddings"])


@pytest.mark.parametrize("ids", [[4.7], ["4"], [True], [-1], [2**40], [[4, 5]]])
def test_decode_refuses_ids_it_would_round_or_wrap(tmp_path, ids):
    """decode took int() of each id: 4.7 and "4" decoded as token 4."""
    tokenizer = calign.Tokenizer.from_pretrained(str(word_tokenizer(tmp_path / "tok", {})))
    with pytest.raises(ValueError, match="ids must be"):
        tokenizer.decode(ids)
    assert tokenizer.decode(np.array([4, 5])) == tokenizer.decode([4, 5]) == "w0 w1"
