"""Sampling n completions per prompt, scoring them, and writing DPO records."""

import math

from calign.model import RewardModel
from calign.selfimprove.checks import (_check_int, _check_model, _check_n, _check_real,
                                       _check_seed, _prompt_ids, _tokenizer)


def sample(model, prompts, n, tokenizer=None, max_new_tokens=32, temperature=1.0, top_p=1.0,
           seed=0):
    """n sampled completions per prompt: (prompt ids, [[completion ids] * n] per prompt).
    seed=None samples unseeded (fresh randomness each call), as Model.generate."""
    _check_model(model)
    n = _check_n(n, minimum=1)
    tokenizer = _tokenizer(tokenizer)
    max_new_tokens = _check_int(max_new_tokens, "max_new_tokens", 1)
    temperature = _check_real(temperature, "temperature", 0.0, math.inf, "a finite number > 0")
    if temperature == 0.0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    top_p = _check_real(top_p, "top_p", 0.0, 1.0, "a number in (0, 1]")
    if top_p == 0.0:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    seed = _check_seed(seed)
    prompt_ids = _prompt_ids(prompts, tokenizer, model)
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    flat = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=True,
                          temperature=temperature, top_p=top_p, eos_token_id=eos,
                          num_return_sequences=n, seed=seed)
    return prompt_ids, [flat[i * n:(i + 1) * n] for i in range(len(prompt_ids))]


def _text(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else None


def _record(prompt_ids, chosen, rejected, tokenizer, **extra):
    """A DPO record of the sampled token ids, which the trainer uses verbatim
    (decoding and re-encoding the text could give other tokens), plus the
    text for reading when there is a tokenizer."""
    record = {"prompt_input_ids": list(prompt_ids), "chosen_input_ids": list(chosen),
              "rejected_input_ids": list(rejected)}
    if tokenizer is not None:
        record.update(prompt=tokenizer.decode(prompt_ids), chosen=_text(tokenizer, chosen),
                      rejected=_text(tokenizer, rejected))
    record.update(extra)
    return record


def _scores(scorer, prompt_ids, completions, tokenizer):
    """A float per completion: a RewardModel, or a callable(prompt, completion)."""
    if isinstance(scorer, RewardModel):
        return [float(x) for x in scorer.score(completions, prompts=[prompt_ids] * len(completions))]
    if not callable(scorer):
        raise TypeError("scorer must be a calign.RewardModel or a callable(prompt, completion)")
    prompt = tokenizer.decode(prompt_ids) if tokenizer is not None else prompt_ids
    out = []
    for c in completions:
        value = scorer(prompt, _text(tokenizer, c) if tokenizer is not None else c)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the scorer returned {value!r}, not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"the scorer returned {value}, not a finite number")
        out.append(value)
    return out
