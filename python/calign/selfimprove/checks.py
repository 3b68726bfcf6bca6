"""Argument checks of the self-improvement builders, run before any sampling."""

import os
import reprlib

import numpy as np

from calign.checks import is_finite_real, is_int
from calign.model import Model, RewardModel
from calign.tokenizer import Tokenizer


def _check_int(value, name, minimum):
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_n(n, minimum=2):
    return _check_int(n, "n", minimum)


def _check_real(value, name, low, high, requirement):
    """value as a float when it is a finite real number in [low, high]."""
    if not (is_finite_real(value) and low <= value <= high):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return float(value)


def _check_seed(seed):
    """None (unseeded: fresh randomness each call, as Model.generate) or an integer."""
    if seed is not None and not is_int(seed):
        raise ValueError(f"seed must be an integer or None (unseeded), got {seed!r}")
    return None if seed is None else int(seed)


def _check_model(model, name="model"):
    if not isinstance(model, Model):
        raise TypeError(f"{name} must be a calign.Model, not {type(model).__name__}")


def _tokenizer(tokenizer):
    """None, a tokenizer object (calign.Tokenizer, or anything with encode,
    decode and eos_token_id, such as a transformers tokenizer), or a folder
    holding tokenizer.json (loaded)."""
    if tokenizer is None or isinstance(tokenizer, Tokenizer) or \
            all(hasattr(tokenizer, name) for name in ("encode", "decode", "eos_token_id")):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
            raise ValueError(f"tokenizer {os.fspath(tokenizer)!r} is not a folder holding "
                             "tokenizer.json")
        return Tokenizer.from_pretrained(os.fspath(tokenizer))
    raise TypeError("tokenizer must be a calign.Tokenizer (or an object with encode, decode "
                    f"and eos_token_id), a folder with tokenizer.json, or None, not "
                    f"{type(tokenizer).__name__}")


def _check_callable(value, name, signature):
    if not callable(value):
        raise TypeError(f"{name} must be a {signature}, not {type(value).__name__}")


def _check_scorer(scorer):
    if not isinstance(scorer, RewardModel) and not callable(scorer):
        raise TypeError("scorer must be a calign.RewardModel or a callable(prompt, completion)")


def _prompt_ids(prompts, tokenizer, model=None):
    """Token ids of each prompt (text is encoded with tokenizer); checks the
    ids against the model's vocabulary when a model is given."""
    hint = "prompts must be a list of prompts (strings, or lists of token ids)"
    if prompts is None or isinstance(prompts, (str, bytes, dict)):
        raise TypeError(f"{hint}, not {type(prompts).__name__}")
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"{hint}, not {type(prompts).__name__}") from None
    if not prompts:
        raise ValueError("prompts is empty")
    vocab = model.vocab_size if model is not None else None
    ids = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need tokenizer=")
            p = tokenizer.encode(p)
        elif is_int(p):
            raise TypeError(f"{hint}: prompt {i} is the integer {p!r}; one prompt of token ids "
                            "is written [[1, 2, 3]], not [1, 2, 3]")
        elif not (isinstance(p, (list, tuple)) or (isinstance(p, np.ndarray) and p.ndim == 1)) \
                or not all(is_int(t) for t in p):
            raise TypeError(f"{hint}: prompt {i} is {reprlib.repr(p)}")
        p = [int(t) for t in p]
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if vocab is not None and not all(0 <= t < vocab for t in p):
            bad = next(t for t in p if not 0 <= t < vocab)
            raise ValueError(f"prompt {i} holds token id {bad}, outside the model's vocabulary "
                             f"[0, {vocab})")
        ids.append(p)
    return ids
