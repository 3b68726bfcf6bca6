"""Alignment by term-vector similarity: Banko et al. (1999)'s sentence
alignment and Marcu (1999)'s extract construction. Neither paper could be
read here; both follow the descriptions recollected in the project's
research notes (cosine of term vectors; greedy deletion)."""

from typing import NamedTuple

import numpy as np

from calign import checks
from calign.textalign.text import check_sentences, normalise

WEIGHTINGS = ("tfidf", "tf")
UNITS = ("clause", "sentence")
CLAUSE_ENDS = frozenset({",", ";", ":"})


def term_matrix(rows, vocabulary):
    """Counts [len(rows), len(vocabulary)] of each row's tokens."""
    counts = np.zeros((len(rows), len(vocabulary)))
    for r, tokens in enumerate(rows):
        ids = [vocabulary[t] for t in tokens if t in vocabulary]
        np.add.at(counts[r], ids, 1.0)
    return counts


def idf(document_counts):
    """Smoothed inverse document frequency over the document's rows:
    ln((1 + N) / (1 + df)) + 1 (scikit-learn's)."""
    df = (document_counts > 0).sum(axis=0)
    return np.log((1.0 + len(document_counts)) / (1.0 + df)) + 1.0


def cosine(a, b):
    """Cosine of every row of a with every row of b (0 for a zero row)."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dots = a @ b.T
    with np.errstate(invalid="ignore", divide="ignore"):
        out = dots / np.outer(na, nb)
    return np.where(np.outer(na, nb) > 0, out, 0.0)


def vectors(summary_sentences, document_rows, weighting, lowercase):
    """Term vectors of the summary sentences and of the document's rows
    (sentences or clauses), over the document's vocabulary."""
    summary = [normalise(s, lowercase) for s in summary_sentences]
    document = [normalise(r, lowercase) for r in document_rows]
    vocabulary = {}
    for tokens in document:
        for t in tokens:
            vocabulary.setdefault(t, len(vocabulary))
    s, d = term_matrix(summary, vocabulary), term_matrix(document, vocabulary)
    if weighting == "tfidf":
        weights = idf(d)
        s, d = s * weights, d * weights
    return s, d


def align_sentences(summary_sentences, document_sentences, *, top_k=1, threshold=0.0,
                    weighting="tfidf", lowercase=True):
    """Each summary sentence's most similar document sentences (Banko et al.
    1999, as recollected): cosine of term vectors, tf-idf weighted (idf over
    the document's sentences) or raw counts (weighting="tf").

    Returns, for each summary sentence, a list of (document sentence, cosine)
    sorted by cosine (ties: the earlier sentence), holding the sentences with
    cosine > 0 and >= threshold, at most top_k of them (None: all)."""
    summary_sentences = check_sentences("summary_sentences", summary_sentences)
    document_sentences = check_sentences("document_sentences", document_sentences)
    top_k = checks.integer("top_k", top_k, 1, allow_none=True)
    threshold = checks.real("threshold", threshold, 0.0, 1.0)
    weighting = checks.choice("weighting", weighting, WEIGHTINGS)
    lowercase = checks.flag("lowercase", lowercase)
    s, d = vectors(summary_sentences, document_sentences, weighting, lowercase)
    similarity = cosine(s, d)
    result = []
    for row in similarity:
        order = np.argsort(-row, kind="stable")
        keep = [(int(i), float(row[i])) for i in order if row[i] > 0 and row[i] >= threshold]
        result.append(keep[:top_k])
    return result


class Unit(NamedTuple):
    """Words start..stop-1 of document sentence `sentence`."""
    sentence: int
    start: int
    stop: int


def split_units(document_sentences, unit):
    """The document's sentences, or its clauses: a sentence cut after each
    ',', ';' or ':' token (calign's approximation of clauses; no parser)."""
    units = []
    for s, sentence in enumerate(document_sentences):
        start = 0
        for w, token in enumerate(sentence):
            if unit == "clause" and token in CLAUSE_ENDS and w + 1 < len(sentence):
                units.append(Unit(s, start, w + 1))
                start = w + 1
        units.append(Unit(s, start, len(sentence)))
    return units


def extract(summary_sentences, document_sentences, *, unit="clause", weighting="tfidf",
            lowercase=True):
    """The document units that best reproduce the abstract (Marcu 1999, as
    recollected): start from every unit, repeatedly delete the unit whose
    removal gives the highest cosine between the remaining text's term
    vector and the abstract's, and stop when no deletion raises it (ties:
    the earlier unit). unit="clause" cuts sentences at ',', ';' and ':'
    (not a syntactic clause split); "sentence" keeps whole sentences.
    weighting as align_sentences'. Returns the kept units in document order."""
    summary_sentences = check_sentences("summary_sentences", summary_sentences)
    document_sentences = check_sentences("document_sentences", document_sentences)
    unit = checks.choice("unit", unit, UNITS)
    weighting = checks.choice("weighting", weighting, WEIGHTINGS)
    lowercase = checks.flag("lowercase", lowercase)
    units = split_units(document_sentences, unit)
    rows = [document_sentences[u.sentence][u.start:u.stop] for u in units]
    abstract = [[t for s in summary_sentences for t in s]]
    a, u = vectors(abstract, rows, weighting, lowercase)
    kept = np.ones(len(units), bool)
    current = cosine(a, u.sum(axis=0, keepdims=True))[0, 0]
    while kept.sum() > 1:
        total = u[kept].sum(axis=0)
        candidates = np.flatnonzero(kept)
        scores = cosine(a, total - u[candidates])[0]
        best = int(np.argmax(scores))
        if not scores[best] > current:
            break
        kept[candidates[best]] = False
        current = scores[best]
    return [units[i] for i in np.flatnonzero(kept)]
