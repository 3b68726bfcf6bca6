"""A checkpoint's generation settings (generation_config.json) and how
Model.generate resolves its arguments against them, as transformers does."""

import os

from calign import checks
from calign.files import read_json_object

GENERATION_CONFIG_NAME = "generation_config.json"

# What generate uses for a setting neither the call nor a generation config
# gives: sampling from the whole distribution, no repetition penalty.
CALIGN_DEFAULTS = dict(do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
                       repetition_penalty=1.0)
# What transformers' GenerationConfig gives a setting that a checkpoint's
# generation_config.json leaves out (its top_k of 50 among them).
TRANSFORMERS_DEFAULTS = dict(do_sample=False, temperature=1.0, top_k=50, top_p=1.0,
                             repetition_penalty=1.0)
SETTINGS = tuple(CALIGN_DEFAULTS) + ("max_new_tokens", "eos_token_id")


def read_generation_config(path):
    """The JSON object in `path`/generation_config.json, or None when there is
    none; a file that is not a JSON object raises ValueError naming it."""
    file = os.path.join(path, GENERATION_CONFIG_NAME)
    return read_json_object(file) if os.path.isfile(file) else None


def eos_token_ids(name, value):
    """An eos setting (one id or a list of ids, as transformers takes it) as a
    list of ids; None or [] means no stop."""
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [checks.integer(name, v, 0, checks.C_INT_MAX) for v in values]


def resolve(arguments, generation_config):
    """(settings, labels) of one generate call. An argument given (not None)
    wins; else the checkpoint's generation_config.json, whose missing fields
    take transformers' defaults; else calign's defaults. max_new_tokens has
    no default; eos_token_id none (no stop). labels[name] names a setting in
    error messages, saying when it came from generation_config.json."""
    settings, labels = {}, {}
    source = generation_config or {}
    defaults = TRANSFORMERS_DEFAULTS if generation_config is not None else CALIGN_DEFAULTS
    for name in SETTINGS:
        labels[name] = name
        if arguments.get(name) is not None:
            settings[name] = arguments[name]
        elif source.get(name) is not None:
            settings[name] = source[name]
            labels[name] = f"{name} (from {GENERATION_CONFIG_NAME})"
        else:
            settings[name] = defaults.get(name)
    if settings["max_new_tokens"] is None:
        raise ValueError(f"max_new_tokens is required (the model has no "
                         f"{GENERATION_CONFIG_NAME} giving it)")
    return settings, labels
