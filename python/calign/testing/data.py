"""Seeded random records in TRL's field names, for the word-level tokenizer
(text over the words "w0", "w1", ...) or as token ids.

The same seed gives the same records. They carry no signal (chosen is not
better than rejected): use them where a test compares calign with a reference
on the same data, not where something must be learned.

Lengths are (shortest, longest) in words or tokens, both included. Token ids
are drawn from [1, vocab_size): id 0 is left out, as the word tokenizer's pad.
"""

import numpy as np

from calign import checks
from calign.testing.wordtokenizer import DEFAULT_WORDS, word_list

PREFERENCE_STYLES = ("text", "tokenized", "conversational")
KTO_STYLES = ("text", "tokenized", "conversational")
SFT_STYLES = ("prompt_completion", "text", "tokenized", "messages")
DEFAULT_VOCAB_SIZE = DEFAULT_WORDS + 2  # the default word tokenizer: <pad>, <eos>, w0, w1, ...


class _Draw:
    """Random words or ids of a length in a range, from one seeded generator."""

    def __init__(self, seed, words, vocab_size):
        self.rng = np.random.default_rng(checks.seed("seed", seed))
        self.words = word_list(DEFAULT_WORDS) if words is None else list(words)
        checks.require(len(self.words) >= 2, "words", words, "a list of at least 2 words")
        self.vocab_size = checks.integer("vocab_size", vocab_size, low=3)

    def length(self, name, bounds):
        checks.require(isinstance(bounds, (tuple, list)) and len(bounds) == 2 and
                       all(checks.is_int(b) for b in bounds) and 1 <= bounds[0] <= bounds[1],
                       name, bounds, "a pair of integers (shortest, longest), 1 <= shortest "
                       "<= longest")
        return int(self.rng.integers(bounds[0], bounds[1] + 1))

    def ids(self, n):
        return self.rng.integers(1, self.vocab_size, n).tolist()

    def text(self, n):
        return " ".join(self.words[i] for i in self.rng.integers(0, len(self.words), n))

    def different(self, draw, other):
        """draw() again until it differs from `other` (a pair must not tie)."""
        value = draw()
        while value == other:
            value = draw()
        return value


def preference_records(n, *, seed=0, style="text", words=None, vocab_size=DEFAULT_VOCAB_SIZE,
                       prompt_length=(2, 5), completion_length=(1, 4)):
    """n random preference pairs, chosen always different from rejected.

    style "text": {"prompt": "w3 w17", "chosen": " w5 w1", "rejected": " w9"}
    (completions start with a space, so prompt + chosen is the full text);
    "tokenized": {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"};
    "conversational": prompt a user message, chosen/rejected assistant messages
    (needs a tokenizer with a chat template)."""
    checks.choice("style", style, PREFERENCE_STYLES)
    draw = _Draw(seed, words, vocab_size)
    records = []
    for _ in range(checks.integer("n", n, low=1)):
        prompt_size = draw.length("prompt_length", prompt_length)
        if style == "tokenized":
            prompt = draw.ids(prompt_size)
            chosen = draw.ids(draw.length("completion_length", completion_length))
            rejected = draw.different(lambda: draw.ids(draw.length("completion_length",
                                                                   completion_length)), chosen)
            records.append({"prompt_input_ids": prompt, "chosen_input_ids": chosen,
                            "rejected_input_ids": rejected})
            continue
        prompt = draw.text(prompt_size)
        chosen = draw.text(draw.length("completion_length", completion_length))
        rejected = draw.different(lambda: draw.text(draw.length("completion_length",
                                                                completion_length)), chosen)
        if style == "text":
            records.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
        else:
            records.append({"prompt": [{"role": "user", "content": prompt}],
                            "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": rejected}]})
    return records


def kto_records(n, *, seed=0, style="text", desirable_fraction=0.5, words=None,
                vocab_size=DEFAULT_VOCAB_SIZE, prompt_length=(2, 5), completion_length=(1, 4)):
    """n random unpaired records with a boolean "label" (True: desirable);
    round(n * desirable_fraction) of them are desirable, in a seeded order.

    style "text": {"prompt", "completion", "label"}; "tokenized":
    {"prompt_input_ids", "completion_input_ids", "label"}; "conversational":
    prompt a user message, completion an assistant message."""
    checks.choice("style", style, KTO_STYLES)
    n = checks.integer("n", n, low=1)
    desirable = round(n * checks.real("desirable_fraction", desirable_fraction, 0.0, 1.0))
    draw = _Draw(seed, words, vocab_size)
    labels = draw.rng.permutation([True] * desirable + [False] * (n - desirable)).tolist()
    records = []
    for label in labels:
        prompt_size = draw.length("prompt_length", prompt_length)
        completion_size = draw.length("completion_length", completion_length)
        if style == "tokenized":
            records.append({"prompt_input_ids": draw.ids(prompt_size),
                            "completion_input_ids": draw.ids(completion_size), "label": label})
        elif style == "text":
            records.append({"prompt": draw.text(prompt_size),
                            "completion": " " + draw.text(completion_size), "label": label})
        else:
            records.append({"prompt": [{"role": "user", "content": draw.text(prompt_size)}],
                            "completion": [{"role": "assistant",
                                            "content": draw.text(completion_size)}],
                            "label": label})
    return records


def sft_records(n, *, seed=0, style="prompt_completion", words=None,
                vocab_size=DEFAULT_VOCAB_SIZE, prompt_length=(2, 5), completion_length=(1, 4)):
    """n random SFT records.

    style "prompt_completion": {"prompt", "completion"}; "text": {"text"} (a
    prompt's and a completion's length of words); "tokenized": {"input_ids"};
    "messages": {"messages": [user message, assistant message]} (needs a chat
    template)."""
    checks.choice("style", style, SFT_STYLES)
    draw = _Draw(seed, words, vocab_size)
    records = []
    for _ in range(checks.integer("n", n, low=1)):
        prompt_size = draw.length("prompt_length", prompt_length)
        completion_size = draw.length("completion_length", completion_length)
        if style == "tokenized":
            records.append({"input_ids": draw.ids(prompt_size + completion_size)})
        elif style == "text":
            records.append({"text": draw.text(prompt_size + completion_size)})
        elif style == "prompt_completion":
            records.append({"prompt": draw.text(prompt_size),
                            "completion": " " + draw.text(completion_size)})
        else:
            records.append({"messages": [{"role": "user", "content": draw.text(prompt_size)},
                                         {"role": "assistant",
                                          "content": draw.text(completion_size)}]})
    return records
