"""Best-of-N: N samples per prompt, scored, the best kept (InstructGPT's and
Saffron's baseline of reward-model search at inference).

The N samples of a prompt share its prefill: Model.generate with
num_return_sequences=N computes the prompt once in C and copies its KV cache
to the N sequences, each drawing from its own seeded stream. The scorer is a
calign.RewardModel (reading the prompt + completion text re-encoded with its
own tokenizer, as trainers/rewards.py scores online rollouts, or the token ids
as they are when the prompts are ids and it has no tokenizer) or a callable
`scorer(prompts, completions) -> scores`, one score per completion in order.
"""

from typing import NamedTuple

import numpy as np

from calign import checks
from calign.model.reward_model import RewardModel


class BestOfN(NamedTuple):
    """What best_of_n returns with return_all: best[i] is completions[i][j]
    for the j maximising scores[i] (the lowest such j on ties)."""
    best: list
    completions: list
    scores: np.ndarray  # float64 [prompts, n]


def prompt_ids_of(prompts, tokenizer):
    """Token-id lists of the prompts (strings need the tokenizer), and whether they were text."""
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or not len(prompts):
        raise ValueError("prompts must be a non-empty list of strings or of token-id lists")
    as_text = all(isinstance(p, str) for p in prompts)
    if as_text:
        if tokenizer is None:
            raise ValueError("prompts are text: pass tokenizer= (the policy's) to encode them")
        ids = [tokenizer.encode(p) for p in prompts]
        for i, row in enumerate(ids):
            checks.require(len(row) > 0, f"prompts[{i}]", prompts[i],
                           "a prompt that is not empty after tokenization")
        return ids, True
    return [list(p) for p in prompts], False


def reward_model_scores(reward_model, reward_tokenizer, prompt_ids, completion_ids, texts):
    """Rewards of prompt + completion pairs from a RewardModel: on the text
    (texts: [(prompt, completion)]) re-encoded with reward_tokenizer, or on
    the ids when texts is None."""
    if texts is not None:
        ids = [reward_tokenizer.encode(p + c, add_special_tokens=False) or
               [reward_tokenizer.eos_token_id or 0] for p, c in texts]
        return reward_model.score(ids)
    largest = max(max(p + c) for p, c in zip(prompt_ids, completion_ids))
    checks.require(largest < reward_model.vocab_size, "prompts", f"a token id {largest}",
                   f"ids the reward model's vocabulary holds (< {reward_model.vocab_size}); "
                   f"or give text with a reward_tokenizer")
    # an empty completion is scored on the prompt alone (its last token's reward)
    return reward_model.score([p + c if c else p for p, c in zip(prompt_ids, completion_ids)])


def best_of_n(model, prompts, scorer, *, n=4, tokenizer=None, reward_tokenizer=None,
              max_new_tokens=64, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
              eos_token_id=None, seed=0, return_all=False):
    """The best of n sampled completions of each prompt.

    prompts: strings (with tokenizer, the policy's) or token-id lists.
    scorer: a calign.RewardModel, or a callable (prompts, completions) ->
        n * len(prompts) numbers, prompt i's completions at i * n ... i * n +
        n - 1, given as they are returned (text with a tokenizer, else ids).
    Sampling: Model.generate's settings, do_sample=True, `seed` (the same
    seed gives the same samples at any thread count).

    Returns the best completion of each prompt (text with a tokenizer, else
    token ids), or with return_all a BestOfN with every completion and score.
    """
    prompt_ids, as_text = prompt_ids_of(prompts, tokenizer)
    n = checks.integer("n", n, 1, checks.C_INT_MAX)
    if not (isinstance(scorer, RewardModel) or callable(scorer)):
        raise ValueError(f"scorer must be a calign.RewardModel or a callable (prompts, "
                         f"completions) -> scores, got {type(scorer).__name__}")
    samples = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=True,
                             temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                             num_return_sequences=n, seed=checks.seed("seed", seed))
    completions = samples
    if tokenizer is not None:
        completions = [tokenizer.decode(s, skip_special_tokens=True) for s in samples]
    repeated = [p for p in (prompts if as_text else prompt_ids) for _ in range(n)]
    if isinstance(scorer, RewardModel):
        texts = None
        if tokenizer is not None:  # text, re-encoded with the reward model's tokenizer
            prompt_text = prompts if as_text else [tokenizer.decode(p) for p in prompt_ids]
            texts = [(prompt_text[k // n], completions[k]) for k in range(len(completions))]
            reward_tokenizer = reward_tokenizer or tokenizer
        elif reward_tokenizer is not None:
            raise ValueError("reward_tokenizer needs tokenizer= (the policy's) to turn the "
                             "completions into text")
        scores = reward_model_scores(scorer, reward_tokenizer,
                                     [p for p in prompt_ids for _ in range(n)], samples, texts)
    else:
        scores = scorer(repeated, completions)
    scores = checked_scores(scores, len(samples))
    table = scores.reshape(len(prompt_ids), n)
    choice = np.argmax(table, axis=1)  # the first maximum: ties go to the lowest index
    grouped = [completions[i * n:(i + 1) * n] for i in range(len(prompt_ids))]
    best = [grouped[i][j] for i, j in enumerate(choice)]
    return BestOfN(best, grouped, table) if checks.flag("return_all", return_all) else best


def checked_scores(values, count):
    """A scorer's output as float64 [count], every value a finite number."""
    if isinstance(values, (str, bytes, dict, set)):
        raise ValueError(f"scorer returned {type(values).__name__}, not a list of {count} scores")
    try:
        scores = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"scorer must return {count} numbers, got {values!r:.200}") from None
    if scores.shape != (count,):
        raise ValueError(f"scorer must return {count} scores (one per completion), got shape "
                         f"{scores.shape}")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"scorer returned {scores[bad[0]]} for completion {bad[0]}: scores "
                         f"must be finite numbers")
    return scores
