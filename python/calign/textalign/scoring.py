"""Precision, recall and F1 of summary-document alignments, micro-averaged
over a corpus.

Word links: for each pair, for each summary sentence, each word's document
position (sentence, word) or None; a link is a word with a position, and a
predicted link is right when the gold link of that word is the same position.
Sentence links: (summary sentence, document sentence) pairs. Extract
sentences: the set of document sentences a method selects."""

from calign import checks


def prf(n_predicted, n_gold, n_right):
    precision = n_right / n_predicted if n_predicted else 0.0
    recall = n_right / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def check_same_shape(predicted, gold):
    checks.require(isinstance(predicted, (list, tuple)), "predicted", type(predicted).__name__,
                   "a list with one entry per pair")
    checks.require(isinstance(gold, (list, tuple)) and len(gold) == len(predicted), "gold",
                   f"{len(gold) if isinstance(gold, (list, tuple)) else type(gold).__name__} "
                   "entries", f"a list of as many pairs as predicted ({len(predicted)})")


def word_scores(predicted, gold):
    """Scores of word links: predicted and gold hold, for each pair, a list of
    summary sentences, each a list of positions (one per summary word)."""
    check_same_shape(predicted, gold)
    n_predicted = n_gold = n_right = 0
    for k, (pred_pair, gold_pair) in enumerate(zip(predicted, gold)):
        checks.require(len(pred_pair) == len(gold_pair), f"predicted[{k}]",
                       f"{len(pred_pair)} sentences", f"{len(gold_pair)} sentences as gold")
        for i, (p_sent, g_sent) in enumerate(zip(pred_pair, gold_pair)):
            checks.require(len(p_sent) == len(g_sent), f"predicted[{k}][{i}]",
                           f"{len(p_sent)} words", f"{len(g_sent)} words as gold")
            for p, g in zip(p_sent, g_sent):
                n_predicted += p is not None
                n_gold += g is not None
                n_right += p is not None and g is not None and tuple(p) == tuple(g)
    return prf(n_predicted, n_gold, n_right)


def sentence_links(word_positions):
    """The (summary sentence, document sentence) links of one pair's word
    positions: sentence i links to s when a word of i comes from s."""
    return {(i, p[0]) for i, sentence in enumerate(word_positions) for p in sentence
            if p is not None}


def set_scores(predicted, gold):
    """Scores of sets of links, one set per pair."""
    check_same_shape(predicted, gold)
    n_predicted = n_gold = n_right = 0
    for p, g in zip(predicted, gold):
        p, g = set(p), set(g)
        n_predicted, n_gold, n_right = n_predicted + len(p), n_gold + len(g), n_right + len(p & g)
    return prf(n_predicted, n_gold, n_right)


def sentence_scores(predicted, gold):
    """Scores of sentence links: one iterable of (summary sentence, document
    sentence) per pair."""
    return set_scores(predicted, gold)


def extract_scores(predicted, gold):
    """Scores of extracts: one iterable of document sentence indices per pair."""
    return set_scores(predicted, gold)
