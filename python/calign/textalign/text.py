"""Texts as calign.textalign takes them: a sentence is a list of string
tokens, a document or a summary a list of sentences. tokenize and
split_sentences make them from plain text; the check_* functions refuse
anything else with the argument's name."""

import re
from typing import NamedTuple

from calign import checks

TOKEN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def tokenize(text):
    """Words and punctuation marks of a string, in order."""
    return TOKEN.findall(checks.text("text", text, non_empty=False))


def split_sentences(text):
    """A text as tokenized sentences, split after '.', '!' or '?' followed
    by white space (no abbreviation list: 'Dr. Smith' is split)."""
    return [tokens for part in SENTENCE_END.split(checks.text("text", text, non_empty=False))
            if (tokens := tokenize(part))]


def check_words(name, words):
    """A non-empty list (or tuple) of string tokens, as a list."""
    checks.require(isinstance(words, (list, tuple)) and len(words) > 0 and
                   all(isinstance(w, str) for w in words), name, words,
                   "a non-empty list of string tokens")
    return list(words)


def check_sentences(name, sentences):
    """A non-empty list of sentences, each a non-empty list of string tokens."""
    checks.require(isinstance(sentences, (list, tuple)) and len(sentences) > 0, name, sentences,
                   "a non-empty list of sentences (lists of string tokens)")
    return [check_words(f"{name}[{i}]", s) for i, s in enumerate(sentences)]


def normalise(tokens, lowercase):
    return [t.lower() for t in tokens] if lowercase else list(tokens)


class Fragment(NamedTuple):
    """Summary words start..stop-1 taken in one run from document sentence
    `sentence` starting at its word `word`; sentence and word are None for a
    run of new (generated) words."""
    start: int
    stop: int
    sentence: int | None
    word: int | None


def fragments(positions):
    """The maximal runs of a decomposition: consecutive summary words at
    consecutive positions of one document sentence form one fragment, and
    consecutive new words (None) one new fragment."""
    runs = []
    for j, position in enumerate(positions):
        if runs:
            last = runs[-1]
            if position is None and last.sentence is None:
                runs[-1] = last._replace(stop=j + 1)
                continue
            if position is not None and last.sentence == position[0] and \
                    position[1] == last.word + (j - last.start):
                runs[-1] = last._replace(stop=j + 1)
                continue
        runs.append(Fragment(j, j + 1, *(position if position is not None else (None, None))))
    return runs


def check_pairs(pairs):
    """A non-empty list of (summary_words, document_sentences) pairs, each
    checked (check_words, check_sentences), naming pairs[k] in errors."""
    checks.require(isinstance(pairs, (list, tuple)) and len(pairs) > 0, "pairs", pairs,
                   "a non-empty list of (summary_words, document_sentences)")
    checked = []
    for k, pair in enumerate(pairs):
        checks.require(isinstance(pair, (list, tuple)) and len(pair) == 2, f"pairs[{k}]", pair,
                       "a (summary_words, document_sentences) pair")
        checked.append((check_words(f"pairs[{k}] summary_words", pair[0]),
                        check_sentences(f"pairs[{k}] document_sentences", pair[1])))
    return checked
