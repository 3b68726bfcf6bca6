"""Safety recovery examples: Qi et al. 2024, "Safety Alignment Should Be Made
More Than Just a Few Tokens Deep", Eq. 2 and §3.1.

A triplet (x, h, r) is a harmful prompt, a harmful response and a refusal. Its
recovery example starts the response with the first k tokens of h and trains
the refusal after them:

    alpha * E_{(x,h,r), k~P_k} [-log p(r | x, h_<=k)] + (1 - alpha) * E_{(x',y')} [-log p(y' | x')]

with P_k: k = 0 with probability p_zero (1/2 in the paper), else uniform in
1..min(max_prefix_tokens, |h|) (the official code's randint(1, min(100, len(h)))).
The records are TRL prompt/completion records: prompt = x + h_<=k, completion
= r, so an SFTTrainer with completion_only_loss (TRL's default) puts no loss on
the forced harmful tokens."""

import numpy as np

from calign import checks
from calign.safety.prefixes import prefix_text, split_response, text_list


def prefix_length(rng, n_tokens, max_prefix_tokens, p_zero):
    """One draw of k for a harmful response of n_tokens tokens."""
    if rng.random() < p_zero:
        return 0
    return int(rng.integers(1, min(max_prefix_tokens, n_tokens) + 1))


def utility_records(utility):
    """The utility records checked: dicts with string prompt and completion."""
    checks.require(isinstance(utility, (list, tuple)) and len(utility) > 0, "utility",
                   type(utility).__name__, "None or a non-empty list of prompt/completion records")
    for i, record in enumerate(utility):
        checks.require(isinstance(record, dict), f"utility[{i}]", type(record).__name__,
                       "a dict with 'prompt' and 'completion'")
        for field in ("prompt", "completion"):
            checks.require(isinstance(record.get(field), str), f"utility[{i}]['{field}']",
                           record.get(field), "a string")
    return list(utility)


def recovery_examples(harmful_prompts, harmful_responses, refusals, utility=None, *, tokenizer,
                      alpha=0.2, max_prefix_tokens=100, p_zero=0.5, samples_per_triplet=1,
                      seed=0):
    """Recovery examples for SFT, mixed with utility records, shuffled.

    Args:
        harmful_prompts, harmful_responses, refusals: strings, one triplet per
            index (the prompt as the model sees it, chat template applied).
        utility: None, or prompt/completion records (the paper's anchor data,
            e.g. benign requests answered by the aligned model itself).
        tokenizer: the model's Tokenizer: k counts its tokens of the response,
            cut as SFT tokenizes the record.
        alpha: the safety examples' share of the returned records. The
            official code draws 4 safety and 16 utility examples per step
            (alpha = 0.2); here the list holds n_safety safety records and
            round(n_safety * (1 - alpha) / alpha) utility records, shuffled
            together, so a batch holds the share alpha in expectation. The
            utility records are taken in seeded random order, each used once
            before any is used again (a short list repeats, as the code's
            anchor data repeats over epochs). Unused when utility is None.
        max_prefix_tokens: the largest k (the paper's 100).
        p_zero: the probability of k = 0 (the plain refusal).
        samples_per_triplet: records per triplet, each with its own k (the
            official code draws a fresh k each time a triplet is batched, i.e.
            once per epoch).
        seed: the numpy Generator's seed (k, the utility draw, the order).

    Returns:
        A list of {"prompt", "completion"} records.
    """
    harmful_prompts = text_list("harmful_prompts", harmful_prompts)
    n = len(harmful_prompts)
    harmful_responses = text_list("harmful_responses", harmful_responses, n, "harmful_prompts")
    refusals = text_list("refusals", refusals, n, "harmful_prompts")
    checks.require(callable(getattr(tokenizer, "encode", None)) and
                   callable(getattr(tokenizer, "decode", None)), "tokenizer",
                   type(tokenizer).__name__, "a Tokenizer (with encode and decode)")
    alpha = checks.real("alpha", alpha, 0.0, 1.0, open_low=True)
    max_prefix_tokens = checks.integer("max_prefix_tokens", max_prefix_tokens, 1)
    p_zero = checks.real("p_zero", p_zero, 0.0, 1.0)
    samples_per_triplet = checks.integer("samples_per_triplet", samples_per_triplet, 1)
    rng = np.random.default_rng(checks.seed("seed", seed))
    if utility is not None:
        utility = utility_records(utility)

    records = []
    for i, (prompt, response, refusal) in enumerate(zip(harmful_prompts, harmful_responses,
                                                        refusals)):
        prompt_ids, response_ids = split_response(tokenizer, prompt, response,
                                                  "harmful_responses", i)
        for _ in range(samples_per_triplet):
            k = prefix_length(rng, len(response_ids), max_prefix_tokens, p_zero)
            prefix = prefix_text(tokenizer, prompt_ids, response_ids, k, response,
                                 "harmful_responses", i)
            records.append({"prompt": prompt + prefix, "completion": refusal})
    if utility is not None:
        n_utility = round(len(records) * (1.0 - alpha) / alpha)
        rounds = -(-n_utility // len(utility))  # ceil: whole passes over the utility records
        order = np.concatenate([rng.permutation(len(utility)) for _ in range(rounds)] or
                               [np.zeros(0, np.int64)])[:n_utility]
        records += [dict(utility[j]) for j in order]
    return [records[j] for j in rng.permutation(len(records))]
