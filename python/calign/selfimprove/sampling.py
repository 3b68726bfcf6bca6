"""Sampling n completions per prompt, scoring them, and writing DPO records."""

import math

from calign import checks
from calign.model import RewardModel
from calign.selfimprove.checks import (check_model, check_prompts, check_scorer,
                                       check_tokenizer)


def sample(model, prompts, n, tokenizer=None, max_new_tokens=32, temperature=1.0, top_p=1.0,
           seed=0):
    """n sampled completions per prompt: (prompt ids, [[completion ids] * n] per prompt).
    seed=None samples unseeded (fresh randomness each call), as Model.generate."""
    check_model("model", model)
    n = checks.integer("n", n, 1)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    max_new_tokens = checks.integer("max_new_tokens", max_new_tokens, 1)
    temperature = checks.real("temperature", temperature, 0.0, open_low=True)
    top_p = checks.real("top_p", top_p, 0.0, 1.0, open_low=True)
    seed = checks.seed("seed", seed, allow_none=True)
    prompt_ids = check_prompts("prompts", prompts, tokenizer, model)
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    flat = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=True,
                          temperature=temperature, top_p=top_p, eos_token_id=eos,
                          num_return_sequences=n, seed=seed)
    return prompt_ids, [flat[i * n:(i + 1) * n] for i in range(len(prompt_ids))]


def completion_text(tokenizer, ids):
    """The decoded text of sampled token ids (special tokens dropped), or None
    without a tokenizer."""
    return tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else None


def dpo_record(prompt_ids, chosen, rejected, tokenizer, **extra):
    """A DPO record of the sampled token ids, which the trainer uses verbatim
    (decoding and re-encoding the text could give other tokens), plus the
    text for reading when there is a tokenizer."""
    record = {"prompt_input_ids": list(prompt_ids), "chosen_input_ids": list(chosen),
              "rejected_input_ids": list(rejected)}
    if tokenizer is not None:
        record.update(prompt=tokenizer.decode(prompt_ids),
                      chosen=completion_text(tokenizer, chosen),
                      rejected=completion_text(tokenizer, rejected))
    record.update(extra)
    return record


def score_completions(scorer, prompt_ids, completions, tokenizer):
    """A float per completion: a RewardModel, or a callable(prompt, completion)."""
    check_scorer("scorer", scorer)
    if isinstance(scorer, RewardModel):
        return [float(x) for x in scorer.score(completions,
                                               prompts=[prompt_ids] * len(completions))]
    prompt = tokenizer.decode(prompt_ids) if tokenizer is not None else prompt_ids
    return [scorer_value(scorer(prompt, completion_text(tokenizer, c)
                                if tokenizer is not None else c))
            for c in completions]


def scorer_value(value):
    """What a scorer callable returned, as a finite float (ValueError if not)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the scorer returned {value!r}, not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"the scorer returned {number}, not a finite number")
    return number
