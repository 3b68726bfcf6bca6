"""Hugging Face config.json -> the engine's configuration, refusing what it cannot run exactly.

Every field the engine reads is checked the way transformers 5.x types it (its
config classes are strict dataclasses): a flag is a JSON boolean ("false" is
refused, not read as true), a size a JSON integer (8.0 is refused), a number
finite. Absent optional fields take the defaults of transformers' config class
for the family, so calign builds the model transformers would build; where
transformers refuses a config, or builds a model that cannot run, calign
refuses it with the field named. The sizes are then checked against what the
C engine holds (C ints, an int64 parameter count) and against this machine's
memory, before anything is allocated.
"""

import json
import math
import os

import numpy as np

from calign import checks

SUPPORTED_MODEL_TYPES = ("gpt2", "llama", "qwen2", "qwen3", "motif")

FLOAT32_MAX = float(np.finfo(np.float32).max)
INT64_MAX = 2**63 - 1

# transformers' defaults for the optional fields the engine reads (the
# families' config classes); the architecture sizes have none here: calign
# requires them, as a config.json without them is surely not what was meant
_DEFAULTS = {
    "gpt2": dict(layer_norm_epsilon=1e-5, tie_word_embeddings=True, initializer_range=0.02),
    "llama": dict(num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                  mlp_bias=False, initializer_range=0.02),
    # Qwen2Config and Qwen3Config default num_key_value_heads to 32 (None means
    # the number of query heads) and Qwen3Config head_dim to 128
    # (Qwen2Config has no head_dim field: without one the attention takes
    # hidden_size // num_attention_heads, given one it takes it)
    "qwen2": dict(num_key_value_heads=32, head_dim=None, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.02),
    "qwen3": dict(num_key_value_heads=32, head_dim=128, max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                  initializer_range=0.02),
    # Motif (Motif-Technologies/Motif-2.6B, trust_remote_code): its config class
    # was not readable, so these are the defaults of the ports of its modeling
    # code (vLLM's motif.py, the MLX port): no num_key_value_heads means as many
    # as query heads, max_position_embeddings 8192, subln eps 1e-5, no biases
    "motif": dict(num_key_value_heads=None, head_dim=None, max_position_embeddings=8192,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
                  use_bias=False, attn_rms_norm_eps=1e-5, initializer_range=0.02),
}
# Llama-family options for ablations (calign's, not transformers'): the MLP
# gate's activation and the attention kind; Motif is PolyNorm + differential
HIDDEN_ACTS = {"silu": "silu", "polynorm": "polynorm", "poly_norm": "polynorm"}
ATTENTION_KINDS = ("standard", "differential")
_REQUIRED = object()


class ConfigError(ValueError):
    """A config.json the engine cannot run exactly; the message names the field."""


def load_config_file(path):
    """The dict in `path`/config.json, with clear errors for a missing or malformed file."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {path!r}")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config.json in {path!r} is not UTF-8 text: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise ConfigError(f"config.json in {path!r} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config.json in {path!r} must hold a JSON object, got "
                          f"{type(config).__name__}")
    architectures = config.get("architectures")
    if architectures is not None and not (isinstance(architectures, list) and all(
            isinstance(a, str) for a in architectures)):
        raise ConfigError(f"config field 'architectures' in {file!r} must be a list of class "
                          f"names, got {architectures!r}")
    return config


def _field(config, key, check, default=_REQUIRED, *, label=None, **requirement):
    """config[key] through calign.checks' `check` (its requirement as keyword
    arguments), `default` when the field is absent; ConfigError naming the
    field (as `label` when it sits in a nested object)."""
    label = label or key
    if key not in config:
        if default is _REQUIRED:
            raise ConfigError(f"config lacks {label!r}")
        return default
    try:
        return check(f"config field {label!r}", config[key], **requirement)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _size(config, key, default=_REQUIRED, allow_none=False):
    """A size the engine holds in a C int: an integer in [1, 2**31 - 1]."""
    return _field(config, key, checks.integer, default, low=1, high=checks.C_INT_MAX,
                  allow_none=allow_none)


def _json_float(name, value, **bounds):
    """checks.real for a field transformers types `float`: its strict config
    classes refuse an integer there (rms_norm_eps 0, initializer_range 1)."""
    checks.require(not checks.is_int(value), name, value,
                   "a float, not an integer (transformers' config classes refuse one)")
    return checks.real(name, value, **bounds)


def _family_field(config, model_type, key, check, **requirement):
    return _field(config, key, check, _DEFAULTS[model_type].get(key, _REQUIRED), **requirement)


def engine_config(config):
    """The engine's dict (see csrc/model/model.h) for a transformers config dict,
    after checking every field it reads and the memory the model needs."""
    if not isinstance(config, dict):
        raise ConfigError(f"a model config must be a dict, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not supported; calign runs "
                          f"{list(SUPPORTED_MODEL_TYPES)}")
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if config.get(key):
            raise ConfigError(f"config field {key!r}: mixture-of-experts models are not supported")
    engine = _gpt2(config) if model_type == "gpt2" else _llama_like(config, model_type)
    # read by Model.from_config's initialisation, typed as transformers types them
    _family_field(config, model_type, "initializer_range", _json_float, low=0.0,
                  high=1.0 if model_type == "llama" else None)
    _field(config, "pad_token_id", checks.integer, None, allow_none=True)
    check_engine_sizes(engine, config)
    return engine


def _refuse(config, key, bad, why):
    if _field(config, key, checks.flag, not bad) == bad:
        raise ConfigError(f"config field {key!r} = {bad!r}: {why}")


def _gpt2(config):
    _field(config, "activation_function", checks.choice, "gelu_new",
           choices=("gelu_new", "gelu_pytorch_tanh"))
    _refuse(config, "scale_attn_weights", False, "unscaled attention is not supported")
    _refuse(config, "scale_attn_by_inverse_layer_idx", True, "not supported")
    _refuse(config, "add_cross_attention", True, "cross-attention is not supported")
    d = _size(config, "n_embd")
    n_head = _size(config, "n_head")
    if d % n_head:
        # GPT2Attention refuses it too
        raise ConfigError(f"config field 'n_embd' ({d}) must be a multiple of n_head ({n_head})")
    d_ff = _size(config, "n_inner", None, allow_none=True)
    return dict(
        n_layer=_size(config, "n_layer"), d_model=d, n_head=n_head, n_kv_head=n_head,
        head_dim=d // n_head, d_ff=4 * d if d_ff is None else d_ff,
        vocab=_size(config, "vocab_size"), max_positions=_size(config, "n_positions"),
        rmsnorm=0, swiglu=0, conv1d_layout=1, learned_positions=1, rope_theta=0.0, qkv_bias=1,
        o_bias=1, mlp_bias=1, qk_norm=0,
        tied_embeddings=int(_family_field(config, "gpt2", "tie_word_embeddings", checks.flag)),
        norm_eps=_norm_eps(config, "gpt2", "layer_norm_epsilon"), polynorm=0, differential=0,
        attn_norm_eps=0.0,
    )


def _norm_eps(config, model_type, key):
    """A norm's epsilon: >= 0 and finite in float32, the type the engine adds it in."""
    return _family_field(config, model_type, key, _json_float, low=0.0, high=FLOAT32_MAX)


def _llama_like(config, model_type):
    polynorm, differential = _layer_variants(config, model_type)
    _refuse_sliding_window(config, model_type)
    d = _size(config, "hidden_size")
    n_head = _size(config, "num_attention_heads")
    n_kv = _family_field(config, model_type, "num_key_value_heads", checks.integer, low=1,
                         high=checks.C_INT_MAX, allow_none=True)
    n_kv = n_head if n_kv is None else n_kv
    if n_head % n_kv:
        raise ConfigError(f"config field 'num_key_value_heads' ({n_kv}"
                          f"{', the default' if 'num_key_value_heads' not in config else ''}) "
                          f"must divide num_attention_heads ({n_head})")
    if differential:
        for key, count in (("num_attention_heads", n_head), ("num_key_value_heads", n_kv)):
            if count % 2:
                raise ConfigError(f"config field {key!r} ({count}) must be even: differential "
                                  "attention pairs heads 2i and 2i+1")
    n_layer = _size(config, "num_hidden_layers")
    _check_layer_types(config, n_layer)
    engine = dict(
        n_layer=n_layer, d_model=d, n_head=n_head, n_kv_head=n_kv,
        head_dim=_head_dim(config, model_type, d, n_head),
        d_ff=_size(config, "intermediate_size"), vocab=_size(config, "vocab_size"),
        max_positions=_family_field(config, model_type, "max_position_embeddings",
                                    checks.integer, low=1, high=checks.C_INT_MAX),
        rmsnorm=1, swiglu=1, conv1d_layout=0, learned_positions=0,
        rope_theta=_rope_theta(config), **_biases(config, model_type),
        qk_norm=int(model_type == "qwen3"),
        tied_embeddings=int(_family_field(config, model_type, "tie_word_embeddings",
                                          checks.flag)),
        norm_eps=_norm_eps(config, model_type, "rms_norm_eps"),
        polynorm=int(polynorm), differential=int(differential),
        attn_norm_eps=_attn_norm_eps(config, model_type) if differential else 0.0,
    )
    _check_rope_angles(engine)
    return engine


def _layer_variants(config, model_type):
    """(polynorm, differential) for a llama-like config: Motif has both (its
    hidden_act must be "poly_norm"); Llama takes them as options, hidden_act
    "polynorm" (or "poly_norm") and attention "differential"; Qwen has neither."""
    if model_type == "motif":
        _field(config, "hidden_act", checks.choice, "poly_norm", choices=("poly_norm",))
        for key in ("num_noise_heads", "k_ratio"):
            if config.get(key) is not None:
                raise ConfigError(f"config field {key!r} = {config[key]!r}: grouped differential "
                                  "attention (Motif 12.7B) is not supported")
        return True, True
    if model_type != "llama":
        _field(config, "hidden_act", checks.choice, "silu", choices=("silu",))
        return False, False
    act = _field(config, "hidden_act", checks.choice, "silu", choices=tuple(HIDDEN_ACTS))
    attention = _field(config, "attention", checks.choice, "standard", choices=ATTENTION_KINDS)
    return HIDDEN_ACTS[act] == "polynorm", attention == "differential"


def _attn_norm_eps(config, model_type):
    """The differential attention's subln epsilon (attn_rms_norm_eps, 1e-5)."""
    return _field(config, "attn_rms_norm_eps", _json_float,
                  _DEFAULTS[model_type].get("attn_rms_norm_eps", 1e-5), low=0.0,
                  high=FLOAT32_MAX)


def _biases(config, model_type):
    """Which linears have biases, as each family's modeling code builds them:
    Qwen2 always has q/k/v biases and no others; Qwen3 reads attention_bias;
    Llama reads attention_bias and mlp_bias."""
    if model_type == "qwen2":
        return dict(qkv_bias=1, o_bias=0, mlp_bias=0)
    if model_type == "motif":
        # as Motif's modeling code (vLLM's port): o_proj has a bias when
        # attention_bias or use_bias is set, q/k/v too unless qkv_bias says
        # otherwise; the MLP's projections when use_bias is
        use_bias = _family_field(config, model_type, "use_bias", checks.flag)
        attention = _family_field(config, model_type, "attention_bias", checks.flag) or use_bias
        qkv = _field(config, "qkv_bias", checks.flag, attention)
        return dict(qkv_bias=int(qkv), o_bias=int(attention), mlp_bias=int(use_bias))
    attention = int(_family_field(config, model_type, "attention_bias", checks.flag))
    mlp = int(_family_field(config, model_type, "mlp_bias", checks.flag)) \
        if model_type == "llama" else 0
    return dict(qkv_bias=attention, o_bias=attention, mlp_bias=mlp)


def _head_dim(config, model_type, d, n_head):
    """head_dim as transformers' attention takes it: the field when present,
    else hidden_size // num_attention_heads (Qwen3Config's default is 128).
    LlamaConfig refuses a hidden_size that is not a multiple of the heads even
    with head_dim given; Qwen2 and Qwen3 round down."""
    if model_type == "llama" and d % n_head:
        raise ConfigError(f"config field 'hidden_size' ({d}) must be a multiple of "
                          f"num_attention_heads ({n_head}) (LlamaConfig requires it)")
    head_dim = _family_field(config, model_type, "head_dim", checks.integer, low=1,
                             high=checks.C_INT_MAX,
                             allow_none=model_type in ("llama", "motif"))
    if head_dim is None:
        head_dim = d // n_head
        if head_dim < 1:
            raise ConfigError(f"config field 'num_attention_heads' ({n_head}) must be at most "
                              f"hidden_size ({d}) when head_dim is not given")
    if head_dim % 2:
        source = "" if "head_dim" in config else ", hidden_size // num_attention_heads"
        raise ConfigError(f"config field 'head_dim' ({head_dim}{source}) must be even for "
                          "rotary embeddings")
    return head_dim


def _refuse_sliding_window(config, model_type):
    """Llama has no switch: a sliding_window is on. Qwen2, Qwen3 and Motif
    (whose modeling code is Qwen2's) use it only under use_sliding_window."""
    if model_type == "llama":
        if config.get("sliding_window"):
            raise ConfigError("config field 'sliding_window': sliding-window attention is not "
                              "supported")
    elif _field(config, "use_sliding_window", checks.flag, False):
        raise ConfigError("config field 'use_sliding_window': sliding-window attention is not "
                          "supported")


def _check_layer_types(config, n_layer):
    layer_types = config.get("layer_types")
    if layer_types is None:
        return
    if not isinstance(layer_types, list) or len(layer_types) != n_layer:
        raise ConfigError(f"config field 'layer_types' must be a list of num_hidden_layers "
                          f"({n_layer}) names, got {layer_types!r}")
    if any(t != "full_attention" for t in layer_types):
        raise ConfigError("config field 'layer_types': only full_attention layers are supported")


def _rope_theta(config):
    """The RoPE base, as transformers reads it: rope_scaling (the legacy name)
    or rope_parameters, whose rope_theta comes before a top-level one (default
    10000); any rope type but plain RoPE is refused, not approximated."""
    for key in ("rope_scaling", "rope_parameters"):
        spec = config.get(key)
        if spec is not None and not isinstance(spec, dict):
            raise ConfigError(f"config field {key!r} must be an object, got {spec!r}")
    key = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
    spec = config.get(key) or {}
    kind = spec.get("rope_type", spec.get("type", "default"))
    if kind not in (None, "default"):
        raise ConfigError(f"{key} of type {kind!r} is not implemented (only plain RoPE is); "
                          "calign does not run an approximation")
    nested = [name for name, value in spec.items() if isinstance(value, dict)]
    if nested:
        raise ConfigError(f"config field {key!r}: per-layer-type RoPE parameters ({nested[0]!r}) "
                          "are not supported")
    if "rope_theta" in spec:
        return _field(spec, "rope_theta", checks.real, label=f"{key}.rope_theta", low=0.0,
                      open_low=True)
    return _field(config, "rope_theta", checks.real, 10000.0, low=0.0, open_low=True)


def _check_rope_angles(engine):
    """Refuses a base so small that a rotary angle, position * theta^(-2k /
    head_dim) computed in float32 as transformers computes it, overflows to
    infinity (and its cosine to NaN) within max_position_embeddings."""
    theta, head_dim = engine["rope_theta"], engine["head_dim"]
    largest_exponent = (head_dim - 2) / head_dim  # of 1 / theta, at k = head_dim / 2 - 1
    log_angle = math.log(max(engine["max_positions"] - 1, 1)) - largest_exponent * math.log(theta)
    if log_angle > math.log(FLOAT32_MAX / 2):
        raise ConfigError(f"config field 'rope_theta' ({theta!r}) is too small: the rotary "
                          f"angles overflow float32 within max_position_embeddings "
                          f"({engine['max_positions']})")


# ---- sizes --------------------------------------------------------------------------------

def parameter_count(engine):
    """Parameters of the engine's layout for an engine dict (as csrc/model/model.c
    plans them), in Python integers: nothing can overflow."""
    d, hd, ff = engine["d_model"], engine["head_dim"], engine["d_ff"]
    qkv = (engine["n_head"] + 2 * engine["n_kv_head"]) * hd
    up = 2 * ff if engine["swiglu"] else ff
    norms = 1 if engine["rmsnorm"] else 2
    layer = (2 * norms * d + qkv * d + qkv * engine["qkv_bias"] + 2 * hd * engine["qk_norm"]
             + d * engine["n_head"] * hd + d * engine["o_bias"] + up * d + d * ff
             + (up + d) * engine["mlp_bias"] + 4 * engine["polynorm"]
             + 6 * hd * engine["differential"])
    return (engine["vocab"] * d * (1 if engine["tied_embeddings"] else 2)
            + engine["max_positions"] * d * engine["learned_positions"]
            + engine["n_layer"] * layer + norms * d)


def physical_memory_bytes():
    """This machine's RAM, None where the OS does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n):
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_engine_sizes(engine, config):
    """Refuses, before any allocation, widths the engine's C ints cannot hold,
    a parameter count beyond int64 and a model whose float32 parameters and
    gradients exceed this machine's memory; the message lists the sizes."""
    sizes = ", ".join(f"{key}={config[key]}" for key in (
        "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
        "intermediate_size", "n_inner", "num_attention_heads", "n_head", "num_key_value_heads",
        "head_dim", "n_positions") if config.get(key) is not None)
    qkv_dim = (engine["n_head"] + 2 * engine["n_kv_head"]) * engine["head_dim"]
    up_dim = 2 * engine["d_ff"] if engine["swiglu"] else engine["d_ff"]
    gpt2 = config["model_type"] == "gpt2"
    for what, width in (
            ("3 x n_embd" if gpt2 else
             "(num_attention_heads + 2 num_key_value_heads) x head_dim", qkv_dim),
            ("n_inner (by default 4 x n_embd)" if gpt2 else "2 x intermediate_size", up_dim)):
        if width > checks.C_INT_MAX:
            raise ConfigError(f"config sizes: {what} = {width} exceeds what the engine holds "
                              f"(a C int, {checks.C_INT_MAX}); the sizes: {sizes}")
    n_params = parameter_count(engine)
    if n_params > INT64_MAX:
        raise ConfigError(f"config sizes ({sizes}) imply {n_params} parameters, more than an "
                          "int64 counts")
    needed = 8 * n_params  # float32 parameters and their float32 gradients
    memory = physical_memory_bytes()
    if memory is not None and needed > memory:
        raise ConfigError(f"the model needs {_bytes(needed)} for its float32 parameters and "
                          f"gradients ({n_params:,} parameters from the config's sizes: {sizes}); "
                          f"this machine has {_bytes(memory)}")
