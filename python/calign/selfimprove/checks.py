"""The self-improvement builders' checks of what only they take (a model, a
tokenizer, a scorer, prompts), run before any sampling. Each takes the
argument's name first, then its value, as calign.checks does for numbers."""

import os
import reprlib

import numpy as np

from calign.checks import is_int
from calign.model import Model, RewardModel
from calign.tokenizer import Tokenizer


def check_model(name, model):
    if not isinstance(model, Model):
        raise TypeError(f"{name} must be a calign.Model, not {type(model).__name__}")


def check_tokenizer(name, tokenizer):
    """The tokenizer to use: None, a tokenizer object (calign.Tokenizer, or
    anything with encode, decode and eos_token_id, such as a transformers
    tokenizer), or the one in a folder holding tokenizer.json."""
    if tokenizer is None or isinstance(tokenizer, Tokenizer) or \
            all(hasattr(tokenizer, attribute) for attribute in ("encode", "decode",
                                                               "eos_token_id")):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        if not os.path.isfile(os.path.join(tokenizer, "tokenizer.json")):
            raise ValueError(f"{name} {os.fspath(tokenizer)!r} is not a folder holding "
                             "tokenizer.json")
        return Tokenizer.from_pretrained(os.fspath(tokenizer))
    raise TypeError(f"{name} must be a calign.Tokenizer (or an object with encode, decode "
                    f"and eos_token_id), a folder with tokenizer.json, or None, not "
                    f"{type(tokenizer).__name__}")


def check_callable(name, value, signature):
    if not callable(value):
        raise TypeError(f"{name} must be a {signature}, not {type(value).__name__}")


def check_scorer(name, scorer):
    if not isinstance(scorer, RewardModel) and not callable(scorer):
        raise TypeError(f"{name} must be a calign.RewardModel or a callable(prompt, "
                        "completion)")


def check_prompts(name, prompts, tokenizer, model=None):
    """Token ids of each prompt (text is encoded with tokenizer); checks the
    ids against the model's vocabulary when a model is given."""
    hint = f"{name} must be a list of prompts (strings, or lists of token ids)"
    if prompts is None or isinstance(prompts, (str, bytes, dict)):
        raise TypeError(f"{hint}, not {type(prompts).__name__}")
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"{hint}, not {type(prompts).__name__}") from None
    if not prompts:
        raise ValueError(f"{name} is empty")
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
