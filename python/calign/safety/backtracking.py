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
    default is a random cut, uniform over whole words. Give the cut yourself
    (prefix_words=[...]) when you have a classifier's answer.

Texts are joined as they are: prompt + response must be the full text (the
prompt ends where the response starts, as TRL's prompt/completion records), and
the reset token is placed right after the prefix, with no separator.
"""

import re

import numpy as np

from calign import checks

RESET_TOKEN = "[RESET]"
PREFIX_MODES = ("random", "full")


def backtracking_sft_records(prompts, unsafe_responses, safe_responses, *,
                             reset_token=RESET_TOKEN, prefix_words="random", seed=0,
                             include_safe=True, tokenizer=None):
    """TRL prompt/completion records for backtracking SFT.

    For each example i: {"prompt": prompts[i] + prefix(unsafe_responses[i]),
    "completion": reset_token + safe_responses[i]} (the prefix is context: no
    loss on it under completion_only_loss), followed, with include_safe, by
    the plain {"prompt": prompts[i], "completion": safe_responses[i]}.

    Args:
        prompts, unsafe_responses, safe_responses: equal-length lists of
            strings (x, y-, y+).
        reset_token: the reset token's text; it must not occur in the inputs.
        prefix_words: how much of y- precedes the reset, in whitespace-separated
            words: "random" (uniform in 1 .. all of them, one draw per example
            from numpy's default_rng(seed)), "full" (the whole unsafe answer),
            or a list of word counts, one per example, each in 1 .. the words
            of its y-.
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
    cuts = _unsafe_cuts(unsafe, prefix_words, rng)
    records = []
    for prompt, bad, good, cut in zip(prompts, unsafe, safe, cuts):
        records.append({"prompt": prompt + bad[:cut], "completion": reset_token + good})
        if include_safe:
            records.append({"prompt": prompt, "completion": good})
    return records


def backtracking_dpo_records(prompts, unsafe_responses, safe_responses, *,
                             reset_token=RESET_TOKEN, prefix_words="random", seed=0,
                             include_safe_pairs=True, tokenizer=None):
    """TRL prompt/chosen/rejected records for backtracking DPO.

    For each example i, with x, y-, y+ its prompt, unsafe and safe answers:
      * {"prompt": x + prefix(y-), "chosen": reset_token + y+,
         "rejected": the rest of y-}: after an unsafe start, resetting beats
         continuing (prefix(y-) + [RESET] + y+ preferred to y-);
      * with include_safe_pairs, {"prompt": x + prefix(y+), "chosen": the rest
         of y+, "rejected": reset_token + y-}: a safe answer is not reset into
         an unsafe one (y+ preferred to prefix(y+) + [RESET] + y-). The safe
         prefix is cut uniformly at random between words, leaving at least one
         word of y+ (an empty prefix for a one-word y+).

    Arguments as backtracking_sft_records; prefix_words sets the unsafe
    prefixes (the rejected side must keep a word of y-: "full" and a count
    of all the words are refused here). Both kinds of cut come from
    numpy's default_rng(seed), the unsafe ones first.

    Returns:
        A list of dicts {"prompt", "chosen", "rejected"}, each example's
        backtracking pair followed by its safe pair.
    """
    prompts, unsafe, safe = _check_texts(prompts, unsafe_responses, safe_responses, reset_token,
                                         tokenizer)
    include_safe_pairs = checks.flag("include_safe_pairs", include_safe_pairs)
    rng = np.random.default_rng(checks.seed("seed", seed))
    cuts = _unsafe_cuts(unsafe, prefix_words, rng, keep_a_word=True)
    safe_cuts = [_safe_cut(good, rng) for good in safe]
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


def _word_ends(text):
    """The character offset just past each whitespace-separated word."""
    return [match.end() for match in re.finditer(r"\S+", text)]


def _unsafe_cuts(unsafe, prefix_words, rng, keep_a_word=False):
    """Where each unsafe answer is cut (a character offset just after a word);
    keep_a_word leaves at least one word after the cut."""
    if isinstance(prefix_words, str):
        mode = checks.choice("prefix_words", prefix_words, PREFIX_MODES)
        checks.require(not (keep_a_word and mode == "full"), "prefix_words", prefix_words,
                       "'random' or word counts for DPO pairs: the rejected continuation "
                       "needs a word of the unsafe answer")
        if mode == "full":
            return [len(text) for text in unsafe]
        counts = [None] * len(unsafe)
    else:
        checks.require(isinstance(prefix_words, (list, tuple, np.ndarray)) and
                       len(prefix_words) == len(unsafe), "prefix_words", prefix_words,
                       f"'random', 'full' or a list of {len(unsafe)} word counts (one an example)")
        counts = list(prefix_words)
    cuts = []
    for i, (text, count) in enumerate(zip(unsafe, counts)):
        ends = _word_ends(text)
        most = len(ends) - 1 if keep_a_word else len(ends)
        checks.require(most >= 1, f"unsafe_responses[{i}]", text,
                       "an answer of at least 2 words for a DPO pair (a prefix and a rejected "
                       "continuation)")
        if count is None:
            count = int(rng.integers(1, most + 1))
        count = checks.integer(f"prefix_words[{i}]", count, 1, most,
                               what=f"a word count in [1, {most}] (unsafe_responses[{i}] has "
                                    f"{len(ends)} words"
                                    f"{'; the rejected side keeps one' if keep_a_word else ''})")
        cuts.append(ends[count - 1])
    return cuts


def _safe_cut(text, rng):
    """A cut of a safe answer after a uniformly drawn number of words, leaving
    at least one: 1 .. all but one (none for a one-word answer)."""
    ends = _word_ends(text)
    if len(ends) < 2:
        return 0
    return ends[int(rng.integers(1, len(ends))) - 1]
