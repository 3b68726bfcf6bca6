"""Hugging Face config.json -> the engine's configuration, refusing what it cannot run exactly."""

import json
import os

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "qwen2", "qwen3")


class ConfigError(ValueError):
    """A config.json the engine cannot run exactly; the message names the field."""


def load_config_file(path):
    """The dict in `path`/config.json, with clear errors for a missing or malformed file."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {path!r}")
    try:
        with open(file) as f:
            config = json.load(f)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config.json in {path!r} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config.json in {path!r} must hold a JSON object")
    return config


def _get(config, key, default=None, required=False):
    if key in config and config[key] is not None:
        return config[key]
    if required:
        raise ConfigError(f"config lacks {key!r}")
    return default


def _positive_int(config, key, default=None):
    value = _get(config, key, default, required=default is None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"config field {key!r} must be a positive integer, got {value!r}")
    return value


def _rope_theta(config):
    """rope_theta, refusing any rope scaling the engine does not implement."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if not isinstance(params, dict) or not isinstance(scaling, dict):
        raise ConfigError("rope_parameters / rope_scaling must be objects")
    for field, spec in (("rope_parameters", params), ("rope_scaling", scaling)):
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind not in (None, "default"):
            raise ConfigError(f"{field} of type {kind!r} is not implemented (only plain RoPE is); "
                              "calign does not run an approximation")
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or theta <= 0:
        raise ConfigError(f"rope_theta must be a positive number, got {theta!r}")
    return float(theta)


def _refuse(config, key, bad, why):
    if config.get(key) not in (None,) and config.get(key) == bad:
        raise ConfigError(f"config field {key!r} = {bad!r}: {why}")


def engine_config(config):
    """The engine's dict (see csrc/model/model.h) for a transformers config dict."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not supported; calign runs "
                          f"{list(SUPPORTED_MODEL_TYPES)}")
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if config.get(key):
            raise ConfigError(f"config field {key!r}: mixture-of-experts models are not supported")
    if model_type == "gpt2":
        return _gpt2(config)
    return _llama_like(config, model_type)


def _gpt2(config):
    activation = config.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"activation_function {activation!r} is not supported for gpt2 "
                          "(gelu_new is)")
    _refuse(config, "scale_attn_weights", False, "unscaled attention is not supported")
    _refuse(config, "scale_attn_by_inverse_layer_idx", True, "not supported")
    if config.get("add_cross_attention"):
        raise ConfigError("config field 'add_cross_attention': cross-attention is not supported")
    d = _positive_int(config, "n_embd")
    n_head = _positive_int(config, "n_head")
    if d % n_head:
        raise ConfigError(f"n_embd ({d}) must be a multiple of n_head ({n_head})")
    return dict(
        n_layer=_positive_int(config, "n_layer"), d_model=d, n_head=n_head, n_kv_head=n_head,
        head_dim=d // n_head, d_ff=_positive_int(config, "n_inner", 4 * d),
        vocab=_positive_int(config, "vocab_size"), max_positions=_positive_int(config, "n_positions"),
        rmsnorm=0, swiglu=0, conv1d_layout=1, learned_positions=1, rope_theta=0.0, qkv_bias=1,
        o_bias=1, mlp_bias=1, qk_norm=0,
        tied_embeddings=int(bool(config.get("tie_word_embeddings", True))),
        norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
    )


def _llama_like(config, model_type):
    activation = config.get("hidden_act", "silu")
    if activation != "silu":
        raise ConfigError(f"hidden_act {activation!r} is not supported (silu is)")
    if config.get("use_sliding_window") or (
            model_type == "llama" and config.get("sliding_window")):
        raise ConfigError("config field 'use_sliding_window': sliding-window attention is not "
                          "supported")
    layer_types = config.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise ConfigError("config field 'layer_types': only full_attention layers are supported")
    d = _positive_int(config, "hidden_size")
    n_head = _positive_int(config, "num_attention_heads")
    n_kv = _positive_int(config, "num_key_value_heads", n_head)
    if n_head % n_kv:
        raise ConfigError(f"num_attention_heads ({n_head}) must be a multiple of "
                          f"num_key_value_heads ({n_kv})")
    head_dim = config.get("head_dim") or d // n_head
    attention_bias = bool(config.get("attention_bias", False))
    return dict(
        n_layer=_positive_int(config, "num_hidden_layers"), d_model=d, n_head=n_head,
        n_kv_head=n_kv, head_dim=int(head_dim), d_ff=_positive_int(config, "intermediate_size"),
        vocab=_positive_int(config, "vocab_size"),
        max_positions=_positive_int(config, "max_position_embeddings", 2048),
        rmsnorm=1, swiglu=1, conv1d_layout=0, learned_positions=0,
        rope_theta=_rope_theta(config),
        qkv_bias=int(model_type == "qwen2" or attention_bias),
        o_bias=int(model_type != "qwen2" and attention_bias),
        mlp_bias=int(bool(config.get("mlp_bias", False))),
        qk_norm=int(model_type == "qwen3"),
        tied_embeddings=int(bool(config.get("tie_word_embeddings", False))),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
    )
