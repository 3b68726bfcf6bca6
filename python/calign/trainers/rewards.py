"""The reward functions of the online RL trainers, called as TRL 1.16's
GRPOTrainer and RLOOTrainer call theirs, so a TRL user's function runs
unchanged:

    f(prompts=[...], completions=[...], completion_ids=[[...]], **columns,
      trainer_state=..., log_extra=..., log_metric=...) -> [float or None]

one value per completion (None: no reward from this function, NaN in the
matrix). A reward model (calign.RewardModel, or a folder holding one) scores
the prompt + completion text re-encoded with its own tokenizer, as TRL does."""

import math
import os
from collections.abc import Mapping, Set

import numpy as np

from calign.data.tokenize import is_conversational
from calign.model import RewardModel
from calign.tokenizer import Tokenizer

FLOAT32_MAX = float(np.finfo(np.float32).max)


def _function_name(func):
    if isinstance(func, RewardModel):
        return getattr(func, "name_or_path", None) or "reward_model"
    return getattr(func, "__name__", None) or type(func).__name__


def _load(func, index):
    if isinstance(func, (str, os.PathLike)):
        model = RewardModel.from_pretrained(os.fspath(func))
        model.name_or_path = os.path.basename(os.path.normpath(os.fspath(func)))
        return model
    if isinstance(func, RewardModel) or callable(func):
        return func
    raise TypeError(f"reward_funcs[{index}] must be a callable, a calign.RewardModel or a "
                    f"reward model folder, not {type(func).__name__}")


class RewardFunctions:
    """The trainer's reward functions, their names (TRL's: a function's
    __name__, a model folder's last part) and weights."""

    def __init__(self, reward_funcs, reward_weights=None, reward_processing_classes=None,
                 tokenizer=None):
        if reward_funcs is None:
            raise ValueError("reward_funcs is required: a reward function, a reward model, "
                             "or a list of them")
        sources = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else \
            [reward_funcs]
        if not sources:
            raise ValueError("reward_funcs is empty")
        self.funcs = [_load(f, i) for i, f in enumerate(sources)]
        self.names = [_function_name(f) for f in self.funcs]
        n = len(self.funcs)
        if reward_weights is None:
            self.weights = np.ones(n, np.float32)
        else:
            if len(reward_weights) != n:
                raise ValueError(f"reward_weights has {len(reward_weights)} weights but there "
                                 f"are {n} reward functions ({', '.join(self.names)})")
            self.weights = np.asarray(reward_weights, np.float32)
        classes = reward_processing_classes
        if classes is None:
            classes = [None] * n
        elif not isinstance(classes, (list, tuple)):
            classes = [classes]
        if len(classes) != n:
            raise ValueError(f"reward_processing_classes has {len(classes)} entries but there "
                             f"are {n} reward functions")
        self.tokenizers = [self._tokenizer_of(source, func, given, tokenizer)
                           for source, func, given in zip(sources, self.funcs, classes)]

    @staticmethod
    def _tokenizer_of(source, func, given, tokenizer):
        """A reward model's tokenizer: the one given, its folder's, or the policy's."""
        if not isinstance(func, RewardModel):
            return None
        if isinstance(given, Tokenizer):
            return given
        if isinstance(given, (str, os.PathLike)):
            return Tokenizer.from_pretrained(os.fspath(given))
        if given is not None:
            raise TypeError("reward_processing_classes entries must be calign.Tokenizer, a "
                            f"tokenizer folder or None, not {type(given).__name__}")
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(
                os.path.join(os.fspath(source), "tokenizer.json")):
            return Tokenizer.from_pretrained(os.fspath(source))
        if tokenizer is None:
            raise ValueError("a reward model needs a tokenizer: pass processing_class or "
                             "reward_processing_classes")
        return tokenizer

    def __len__(self):
        return len(self.funcs)

    def __call__(self, prompts, completions, completion_ids, columns, **extra):
        """float32 [N, F]: the rewards of each completion from each function
        (NaN where a function gave None)."""
        n = len(completions)
        out = np.full((n, len(self.funcs)), np.nan, np.float32)
        for j, (func, name, tok) in enumerate(zip(self.funcs, self.names, self.tokenizers)):
            if isinstance(func, RewardModel):
                out[:, j] = self._model_rewards(func, tok, prompts, completions)
                continue
            try:  # TRL's own arguments replace a dataset column of the same name
                values = func(prompts=prompts, completions=completions,
                              completion_ids=completion_ids, **{**columns, **extra})
            except Exception as error:
                raise RuntimeError(f"the reward function {name!r} raised "
                                   f"{type(error).__name__}: {error}") from error
            out[:, j] = _checked_rewards(values, n, name)
        return out

    @staticmethod
    def _model_rewards(model, tokenizer, prompts, completions):
        if is_conversational(prompts[0]):
            texts = [tokenizer.apply_chat_template(p + c) for p, c in zip(prompts, completions)]
        else:
            texts = [p + c for p, c in zip(prompts, completions)]
        ids = [tokenizer.encode(t, add_special_tokens=False) or [tokenizer.eos_token_id or 0]
               for t in texts]
        return model.score(ids)


def _checked_rewards(values, n, name):
    """A function's output as float32 [n] (None: NaN), or one error naming it."""
    # iterable, but not a list of rewards: a string's characters, a dict's keys, a set's order
    if isinstance(values, (str, bytes, Mapping, Set)):
        raise ValueError(f"the reward function {name!r} returned {type(values).__name__}, not "
                         f"a list of {n} rewards")
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"the reward function {name!r} returned {type(values).__name__}, not "
                         f"a list of {n} rewards") from None
    if len(values) != n:
        raise ValueError(f"the reward function {name!r} returned {len(values)} rewards, but "
                         f"{n} were expected (one per completion)")
    out = np.empty(n, np.float32)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
            continue
        if not isinstance(v, (int, float, np.integer, np.floating, np.bool_)):
            raise ValueError(f"the reward function {name!r} returned {v!r:.80} for completion "
                             f"{i}: a reward must be a number or None")
        try:
            value = float(v)
        except OverflowError:
            value = math.inf
        if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise ValueError(f"the reward function {name!r} returned {v!r:.80} for completion "
                             f"{i}: a reward must be a finite float32 (None: no reward)")
        out[i] = value
    return out
