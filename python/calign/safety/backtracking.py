"""Training records for backtracking (Zhang et al. 2024, "Backtracking
Improves Generation Safety", arXiv 2409.14586): a model learns to emit a reset
token ("[RESET]") once its answer has gone unsafe and to continue with a safe
answer; at decode time Model.generate(reset_token_id=...) returns only what
follows the reset.

What the records follow (the paper body could not be read here; these come
from its abstract, its OpenReview discussion and secondary summaries of its
section 2, so they are flagged as such):
  * SFT: -log p([RESET] + y+ | x + prefix(y-)) - log p(y+ | x). The unsafe
    prefix is context only: it sits on the prompt side of a TRL
    prompt/completion record, so completion_only_loss (TRL's default) puts no
    loss on it; the plain (x, y+) records keep the model from resetting on
    safe answers.
  * DPO: prefix(y-) + [RESET] + y+ is preferred to y- (learn to reset after an
    unsafe start), and y+ is preferred to prefix(y+) + [RESET] + y- (do not
    reset a safe answer into an unsafe one). The shared prefix is put on the
    prompt side (it is context in both responses, and cancels in DPO's
    log-ratio difference), so chosen/rejected are what follows it.
  * The paper cuts y- where the generation has become unsafe (random prefixes
    filtered by a safety classifier, Llama Guard 2); without a classifier the
    default is a random cut, uniform over whole words (or characters). Give
    the cut yourself (prefix=[...]) when you have a classifier's answer.

Texts are joined as they are: prompt + response must be the full text (the
prompt ends where the response starts, as TRL's prompt/completion records), and
the reset token is placed right after the prefix, with no separator.
"""

import re

import numpy as np

from calign import checks

RESET_TOKEN = "[RESET]"
PREFIX_MODES = ("random", "full")
# what a prefix length counts: whitespace-separated words, or characters (a
# text without spaces, a character-level tokenizer)
PREFIX_UNITS = ("word", "character")


def backtracking_sft_records(prompts, unsafe_responses, safe_responses, *,
                             reset_token=RESET_TOKEN, prefix="random", prefix_unit="word",
                             seed=0, include_safe=True, tokenizer=None):
    """TRL prompt/completion records for backtracking SFT.

    For each example i: {"prompt": prompts[i] + prefix(unsafe_responses[i]),
    "completion": reset_token + safe_responses[i]} (the prefix is context: no
    loss on it under completion_only_loss), followed, with include_safe, by
    the plain {"prompt": prompts[i], "completion": safe_responses[i]}.

    Args:
        prompts, unsafe_responses, safe_responses: equal-length lists of
            strings (x, y-, y+).
        reset_token: the reset token's text; it must not occur in the inputs.
        prefix: how much of y- precedes the reset, in prefix_units:
            "random" (uniform in 1 .. all of them, one draw per example from
            numpy's default_rng(seed)), "full" (the whole unsafe answer), or a
            list of counts, one per example, each in 1 .. the units of its y-.
        prefix_unit: "word" (whitespace-separated words) or "character".
        seed: the random cuts' seed.
        include_safe: also return the (x, y+) records.
        tokenizer: a calign.Tokenizer (optional); if given, reset_token must
            be one of its tokens and encode as that one token.

    Returns:
        A list of dicts {"prompt", "completion"}.
    """
    prompts, unsafe, safe = _check_texts(prompts, unsafe_responses, safe_responses, reset_token,
                                         tokenizer)
    include_safe = checks.flag("include_safe", include_safe)
    rng = np.random.default_rng(checks.seed("seed", seed))
    cuts = _unsafe_cuts(unsafe, prefix, _unit(prefix_unit), rng)
    records = []
    for prompt, bad, good, cut in zip(prompts, unsafe, safe, cuts):
        records.append({"prompt": prompt + bad[:cut], "completion": reset_token + good})
        if include_safe:
            records.append({"prompt": prompt, "completion": good})
    return records


def backtracking_dpo_records(prompts, unsafe_responses, safe_responses, *,
                             reset_token=RESET_TOKEN, prefix="random", prefix_unit="word",
                             seed=0, include_safe_pairs=True, tokenizer=None):
    """TRL prompt/chosen/rejected records for backtracking DPO.

    For each example i, with x, y-, y+ its prompt, unsafe and safe answers:
      * {"prompt": x + prefix(y-), "chosen": reset_token + y+,
         "rejected": the rest of y-}: after an unsafe start, resetting beats
         continuing (prefix(y-) + [RESET] + y+ preferred to y-);
      * with include_safe_pairs, {"prompt": x + prefix(y+), "chosen": the rest
         of y+, "rejected": reset_token + y-}: a safe answer is not reset into
         an unsafe one (y+ preferred to prefix(y+) + [RESET] + y-). The safe
         prefix is cut uniformly at random between units, leaving at least one
         unit of y+ (an empty prefix for a one-unit y+).

    Arguments as backtracking_sft_records; prefix sets the unsafe
    prefixes (the rejected side must keep a unit of y-: "full" and a count
    of all the units are refused here). Both kinds of cut come from
    numpy's default_rng(seed), the unsafe ones first.

    Returns:
        A list of dicts {"prompt", "chosen", "rejected"}, each example's
        backtracking pair followed by its safe pair.
    """
    prompts, unsafe, safe = _check_texts(prompts, unsafe_responses, safe_responses, reset_token,
                                         tokenizer)
    include_safe_pairs = checks.flag("include_safe_pairs", include_safe_pairs)
    rng = np.random.default_rng(checks.seed("seed", seed))
    unit = _unit(prefix_unit)
    cuts = _unsafe_cuts(unsafe, prefix, unit, rng, keep_a_word=True)
    safe_cuts = [_safe_cut(good, unit, rng) for good in safe]
    records = []
    for prompt, bad, good, cut, safe_cut in zip(prompts, unsafe, safe, cuts, safe_cuts):
        records.append({"prompt": prompt + bad[:cut], "chosen": reset_token + good,
                        "rejected": bad[cut:]})
        if include_safe_pairs:
            records.append({"prompt": prompt + good[:safe_cut], "chosen": good[safe_cut:],
                            "rejected": reset_token + bad})
    return records


def _check_texts(prompts, unsafe, safe, reset_token, tokenizer):
    """The three lists as lists of strings of one length, reset_token checked."""
    reset_token = checks.text("reset_token", reset_token)
    columns = {}
    for name, values in (("prompts", prompts), ("unsafe_responses", unsafe),
                         ("safe_responses", safe)):
        checks.require(isinstance(values, (list, tuple)) and len(values) > 0, name,
                       type(values).__name__, "a non-empty list of strings")
        for i, value in enumerate(values):
            checks.require(isinstance(value, str), f"{name}[{i}]", value,
                           "a string (render conversations with the chat template first)")
            if name != "prompts":
                checks.require(bool(value.split()), f"{name}[{i}]", value,
                               "a string holding at least one word")
            checks.require(reset_token not in value, f"{name}[{i}]", value,
                           f"a text without the reset token {reset_token!r}")
        columns[name] = list(values)
    lengths = {name: len(values) for name, values in columns.items()}
    checks.require(len(set(lengths.values())) == 1, "unsafe_responses, safe_responses", lengths,
                   "as long as prompts (one unsafe and one safe answer a prompt)")
    if tokenizer is not None:
        token_id = tokenizer.token_to_id(reset_token)
        checks.require(token_id is not None, "reset_token", reset_token,
                       "a token of the tokenizer (add it: tokenizer.add_special_tokens("
                       "[reset_token]), then model.resize_token_embeddings(tokenizer.vocab_size))")
        checks.require(tokenizer.encode(reset_token, add_special_tokens=False) == [token_id],
                       "reset_token", reset_token,
                       "a token that encodes as itself alone (a special token)")
    return columns["prompts"], columns["unsafe_responses"], columns["safe_responses"]


def _unit(prefix_unit):
    return checks.choice("prefix_unit", prefix_unit, PREFIX_UNITS)


def _unit_ends(text, unit):
    """The character offset just past each unit (whitespace-separated word,
    or character) of text."""
    if unit == "character":
        return list(range(1, len(text) + 1))
    return [match.end() for match in re.finditer(r"\S+", text)]


def _unsafe_cuts(unsafe, prefix, unit, rng, keep_a_word=False):
    """Where each unsafe answer is cut (a character offset just after a unit);
    keep_a_word leaves at least one unit after the cut."""
    if isinstance(prefix, str):
        mode = checks.choice("prefix", prefix, PREFIX_MODES)
        checks.require(not (keep_a_word and mode == "full"), "prefix", prefix,
                       "'random' or counts for DPO pairs: the rejected continuation "
                       "needs a unit of the unsafe answer")
        if mode == "full":
            return [len(text) for text in unsafe]
        counts = [None] * len(unsafe)
    else:
        checks.require(isinstance(prefix, (list, tuple, np.ndarray)) and
                       len(prefix) == len(unsafe), "prefix", prefix,
                       f"'random', 'full' or a list of {len(unsafe)} counts (one an example)")
        counts = list(prefix)
    cuts = []
    for i, (text, count) in enumerate(zip(unsafe, counts)):
        ends = _unit_ends(text, unit)
        most = len(ends) - 1 if keep_a_word else len(ends)
        checks.require(most >= 1, f"unsafe_responses[{i}]", text,
                       f"an answer of at least 2 {unit}s for a DPO pair (a prefix and a rejected "
                       "continuation)")
        if count is None:
            count = int(rng.integers(1, most + 1))
        count = checks.integer(f"prefix[{i}]", count, 1, most,
                               what=f"a {unit} count in [1, {most}] (unsafe_responses[{i}] has "
                                    f"{len(ends)} {unit}s"
                                    f"{'; the rejected side keeps one' if keep_a_word else ''})")
        cuts.append(ends[count - 1])
    return cuts


def _safe_cut(text, unit, rng):
    """A cut of a safe answer after a uniformly drawn number of units, leaving
    at least one: 1 .. all but one (none for a one-unit answer)."""
    ends = _unit_ends(text, unit)
    if len(ends) < 2:
        return 0
    return ends[int(rng.integers(1, len(ends))) - 1]
