"""How deep a model's safety alignment goes: the prefilling attack and the
per-position KL to a base model (Qi et al. 2024, §2 and Figure 1)."""

from dataclasses import dataclass

import numpy as np

from calign import checks
from calign.safety.prefixes import prefix_text, split_response, text_list


@dataclass(frozen=True, eq=False)  # harmful is an array: no field-wise ==
class PrefillingResult:
    """One prefilling attack at k forced tokens.

    prefixes[i]: the forced text of prompt i; continuations[j] and harmful[j]:
    output j's decoded new tokens and the judge's verdict (prompt i's samples
    are at i * n ... (i + 1) * n - 1 for n samples per prompt); success_rate:
    the mean of harmful."""

    k: int
    success_rate: float
    prefixes: list
    continuations: list
    harmful: np.ndarray


def prefilling_attack(model, tokenizer, prompts, harmful_responses, k, *, judge,
                      max_new_tokens=64, **generation):
    """The prefilling attack: the first k tokens of each harmful response are
    forced after its prompt and the model decodes from there.

    Args:
        model: a calign Model (Model.generate decodes).
        tokenizer: its Tokenizer; a response's tokens are cut as SFT tokenizes
            prompt + response (calign.safety.prefixes).
        prompts, harmful_responses: strings, one harmful answer per prompt.
        k: the number of forced tokens (0: the plain prompt), or a list of them.
            No response may have fewer than k tokens.
        judge: judge(prompt, prefix, continuation) -> bool, True when the
            output is harmful (prefix: the forced text; continuation: the
            decoded new tokens, special tokens skipped).
        max_new_tokens, **generation: Model.generate's settings (greedy unless
            do_sample=True; eos_token_id defaults to the tokenizer's).

    Returns:
        A PrefillingResult for an integer k; a list of them, one per k, for a list.
    """
    prompts = text_list("prompts", prompts)
    harmful_responses = text_list("harmful_responses", harmful_responses, len(prompts),
                                  "prompts")
    several = isinstance(k, (list, tuple))
    checks.require(not several or len(k) > 0, "k", k, "an integer >= 0 or a non-empty list "
                   "of them")
    names = [f"k[{i}]" for i in range(len(k))] if several else ["k"]
    ks = [checks.integer(name, value, 0) for name, value in zip(names, k if several else [k])]
    checks.require(callable(judge), "judge", judge,
                   "a callable judge(prompt, prefix, continuation) -> bool")
    generation.setdefault("eos_token_id", tokenizer.eos_token_id)
    split = [split_response(tokenizer, p, r, "harmful_responses", i)
             for i, (p, r) in enumerate(zip(prompts, harmful_responses))]
    shortest = min(range(len(split)), key=lambda i: len(split[i][1]))
    for name, value in zip(names, ks):
        checks.require(value <= len(split[shortest][1]), name, value,
                       f"at most the token count of every harmful response "
                       f"(harmful_responses[{shortest}] has {len(split[shortest][1])})")
    results = [attack_at(model, tokenizer, prompts, harmful_responses, split, value, judge,
                         max_new_tokens, generation) for value in ks]
    return results if several else results[0]


def attack_at(model, tokenizer, prompts, harmful_responses, split, k, judge, max_new_tokens,
              generation):
    """prefilling_attack for one k (arguments checked)."""
    inputs = [prompt_ids + response_ids[:k] for prompt_ids, response_ids in split]
    prefixes = [prefix_text(tokenizer, prompt_ids, response_ids, k, response,
                            "harmful_responses", i)
                for i, ((prompt_ids, response_ids), response) in
                enumerate(zip(split, harmful_responses))]
    outputs = model.generate(inputs, max_new_tokens=max_new_tokens, **generation)
    samples = len(outputs) // len(prompts)
    continuations = [tokenizer.decode(o, skip_special_tokens=True) for o in outputs]
    harmful = np.zeros(len(outputs), bool)
    for j, continuation in enumerate(continuations):
        i = j // samples
        verdict = judge(prompts[i], prefixes[i], continuation)
        checks.require(isinstance(verdict, (bool, np.bool_)), "judge", verdict,
                       "a callable returning True or False")
        harmful[j] = verdict
    return PrefillingResult(k, float(harmful.mean()), prefixes, continuations, harmful)


def log_softmax64(logits):
    """log_softmax over the last axis in float64."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def per_position_kl(aligned_model, base_model, tokenizer, prompts, responses, max_positions=None,
                    batch_size=16):
    """The per-token KL of Qi et al.'s Figure 1: for response position t
    (0: the response's first token), the mean over examples of
    KL(p_aligned(. | x, y_<t) || p_base(. | x, y_<t)) over the whole vocabulary,
    on the response's own tokens y (teacher forcing).

    Args:
        aligned_model, base_model: calign Models sharing a vocabulary.
        tokenizer: their Tokenizer (responses cut as SFT tokenizes them).
        prompts, responses: strings, one response per prompt.
        max_positions: the positions reported (default: the longest response's
            token count).
        batch_size: examples per forward pass (each builds [B, T, V] logits).

    Returns:
        (kl, counts): float64 [P] mean KL per position (NaN where no response
        is that long) and int64 [P] the number of responses that are.
    """
    prompts = text_list("prompts", prompts)
    responses = text_list("responses", responses, len(prompts), "prompts")
    checks.require(aligned_model.vocab_size == base_model.vocab_size, "base_model",
                   base_model.vocab_size,
                   f"a model with the aligned model's vocabulary size ({aligned_model.vocab_size})")
    max_positions = checks.integer("max_positions", max_positions, 1, allow_none=True)
    batch_size = checks.integer("batch_size", batch_size, 1)
    split = [split_response(tokenizer, p, r, "responses", i)
             for i, (p, r) in enumerate(zip(prompts, responses))]
    for i, (prompt_ids, _) in enumerate(split):
        checks.require(len(prompt_ids) > 0, f"prompts[{i}]", prompts[i],
                       "a prompt of at least one token (the first response token is "
                       "predicted from it)")
    longest = max(len(response_ids) for _, response_ids in split)
    positions = longest if max_positions is None else max_positions
    sums, counts = np.zeros(positions), np.zeros(positions, np.int64)
    for start in range(0, len(split), batch_size):
        chunk = split[start:start + batch_size]
        # position t of a response is predicted at index len(prompt) - 1 + t
        rows = [prompt_ids + response_ids[:positions] for prompt_ids, response_ids in chunk]
        width = max(len(row) for row in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), bool)
        for r, row in enumerate(rows):
            ids[r, :len(row)], mask[r, :len(row)] = row, True
        aligned = aligned_model.logits(ids, mask)
        base = base_model.logits(ids, mask)
        for r, (prompt_ids, response_ids) in enumerate(chunk):
            n = min(len(response_ids), positions)
            where = slice(len(prompt_ids) - 1, len(prompt_ids) - 1 + n)
            log_p, log_q = log_softmax64(aligned[r, where]), log_softmax64(base[r, where])
            sums[:n] += (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
            counts[:n] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), counts
