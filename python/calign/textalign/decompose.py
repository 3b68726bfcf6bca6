"""Jing & McKeown's decomposition of summary sentences (Jing 2002, "Using
Hidden Markov Modeling to Decompose Human-Written Summaries", CL 28(4)),
with the Viterbi search in C (csrc/textalign/decompose.c)."""

import numpy as np

from calign import _C, checks
from calign.textalign.text import check_pairs, check_sentences, check_words, normalise

# The rule probabilities P1..P6 and the paper's CONST. The paper's values could
# not be read here: these are recollected/chosen (P1 > ... > P6, CONST a few
# sentences) and p_new is calign's; see decompose()'s docstring.
DEFAULT_RULES = dict(p_adjacent=1.0, p_same_later=0.5, p_same_earlier=0.3, p_near_later=0.2,
                     p_near_earlier=0.1, p_far=0.05, near=3, p_new=0.1)
RULE_NAMES = tuple(DEFAULT_RULES)


def check_rules(rules):
    """The rule settings with their defaults filled in; ValueError naming a
    bad one (unknown name, probability outside (0, 1], out of order)."""
    unknown = sorted(set(rules) - set(DEFAULT_RULES))
    if unknown:
        raise TypeError(f"unknown setting {unknown[0]!r}: the rules are {list(DEFAULT_RULES)}")
    settings = {**DEFAULT_RULES, **rules}
    previous = None
    for name in RULE_NAMES[:6]:
        value = checks.real(name, settings[name], 0.0, 1.0, open_low=True)
        if previous is not None:
            checks.require(value <= settings[previous], name, value,
                           f"at most {previous} ({settings[previous]:g}): the rules are ordered")
        settings[name], previous = value, name
    settings["near"] = checks.integer("near", settings["near"], 1, checks.C_INT_MAX)
    settings["p_new"] = checks.real("p_new", settings["p_new"], 0.0, 1.0, open_low=True,
                                    open_high=True)
    return settings


def candidate_arrays(pairs, lowercase):
    """The flat arrays of ta_decompose: word offsets of each problem, and for
    each summary word the document positions holding the same token."""
    word_off, cand_off, cand_sent, cand_word = [0], [np.zeros(1, np.int64)], [], []
    total = 0
    for summary_words, document_sentences in pairs:
        ids = {}
        doc = [ids.setdefault(t, len(ids)) for s in document_sentences
               for t in normalise(s, lowercase)]
        sent = np.repeat(np.arange(len(document_sentences)), [len(s) for s in document_sentences])
        word = np.concatenate([np.arange(len(s)) for s in document_sentences])
        order = np.argsort(np.asarray(doc, np.int64), kind="stable")
        sorted_ids = np.asarray(doc, np.int64)[order]
        query = np.array([ids.get(t, -1) for t in normalise(summary_words, lowercase)], np.int64)
        low = np.searchsorted(sorted_ids, query, "left")
        high = np.searchsorted(sorted_ids, query, "right")
        counts = high - low
        # the candidates of word j: order[low[j]:high[j]], in document order
        picks = order[np.repeat(low - np.cumsum(counts) + counts, counts) +
                      np.arange(counts.sum())]
        cand_sent.append(sent[picks])
        cand_word.append(word[picks])
        cand_off.append(total + np.cumsum(counts))
        total += int(counts.sum())
        word_off.append(word_off[-1] + len(summary_words))
    return (np.asarray(word_off, np.int64), np.concatenate(cand_off),
            np.concatenate(cand_sent + [np.zeros(0, np.int64)]),
            np.concatenate(cand_word + [np.zeros(0, np.int64)]))


def decompose_all(pairs, *, lowercase=True, **rules):
    """decompose() of many (summary_words, document_sentences) pairs in one C
    call, in parallel over the pairs; a list of position lists."""
    checked = check_pairs(pairs)
    lowercase = checks.flag("lowercase", lowercase)
    settings = check_rules(rules)
    word_off, cand_off, cand_sent, cand_word = candidate_arrays(checked, lowercase)
    best, _ = _C.ta_decompose(word_off, cand_off, cand_sent, cand_word, **settings)
    positions = [None if c < 0 else (int(cand_sent[c]), int(cand_word[c])) for c in best]
    return [positions[word_off[k]:word_off[k + 1]] for k in range(len(checked))]


def decompose(summary_words, document_sentences, *, lowercase=True, **rules):
    """For each summary word, the (sentence, word) document position it was
    cut from, or None for a new word (Jing & McKeown's HMM, Viterbi in C).

    The candidate positions of a summary word are the document positions of
    the same token (compared lowercased unless lowercase=False). A chosen
    step (s1, w1) -> (s2, w2) scores by the paper's ordered rules:
      p_adjacent      s2 = s1, w2 = w1 + 1           (P1, the highest)
      p_same_later    s2 = s1, w2 > w1 + 1           (P2)
      p_same_earlier  s2 = s1, w2 <= w1              (P3)
      p_near_later    0 < s2 - s1 < near             (P4)
      p_near_earlier  0 < s1 - s2 < near             (P5)
      p_far           |s2 - s1| >= near              (P6, the lowest, > 0)
    The rules are as recollected (the paper's text could not be read); the
    defaults 1.0, 0.5, 0.3, 0.2, 0.1, 0.05 and near=3 are calign's choice,
    not the paper's values. Each must lie in (0, 1] and not exceed the one
    before. A summary word may also be new: p_new (default 0.1, calign's) per
    new word, and the new words do not break the chain: the step after them
    is scored from the last document position, so a word inserted between
    two adjacent document words keeps their adjacency. A word absent from
    the document is always new. Ties go to the path that starts later (new
    words first), then to earlier positions.

    summary_words: a list of tokens (one summary sentence, as Jing decomposes
    them, or any run of words); document_sentences: a list of token lists.
    calign.textalign.fragments(result) groups the result into the runs cut
    from one sentence and the runs of new words."""
    return decompose_all([(summary_words, document_sentences)], lowercase=lowercase,
                         **rules)[0]


def align_by_overlap(summary_words, document_sentences, *, lowercase=True):
    """The word-overlap baseline: each summary word at the first document
    position holding the same token, None when there is none."""
    summary_words = check_words("summary_words", summary_words)
    document_sentences = check_sentences("document_sentences", document_sentences)
    lowercase = checks.flag("lowercase", lowercase)
    first = {}
    for s, sentence in enumerate(document_sentences):
        for w, token in enumerate(normalise(sentence, lowercase)):
            first.setdefault(token, (s, w))
    return [first.get(t) for t in normalise(summary_words, lowercase)]
