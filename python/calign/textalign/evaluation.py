"""Every method of calign.textalign scored on one corpus of AlignedPairs:
word links, sentence links and extract sentences (see scoring.py). What
each method cannot produce is None (Banko's and Marcu's methods give no
word links; Marcu's extract gives no per-sentence links)."""

from calign import checks
from calign.textalign.decompose import align_by_overlap, decompose_all
from calign.textalign.phrase_hmm import PhraseHMM
from calign.textalign.scoring import extract_scores, sentence_links, sentence_scores, word_scores
from calign.textalign.similarity import align_sentences, extract

METHODS = ("overlap", "jing", "phrase_hmm", "banko", "marcu")


def split_like(flat, sentences):
    out, start = [], 0
    for sentence in sentences:
        out.append(flat[start:start + len(sentence)])
        start += len(sentence)
    return out


def scores_of_words(words, gold_words):
    links = [sentence_links(w) for w in words]
    return {"words": word_scores(words, gold_words),
            "sentences": sentence_scores(links, [sentence_links(g) for g in gold_words]),
            "extract": extract_scores([{s for _, s in ls} for ls in links],
                                      [{p[0] for s in g for p in s if p} for g in gold_words])}


def compare_methods(pairs, *, phrase_iterations=5, phrase_hmm=None, rules=None):
    """{method: {"words" | "sentences" | "extract": {precision, recall, f1}
    or None}} for the methods of METHODS on pairs (AlignedPairs). The phrase
    HMM (a PhraseHMM, default settings unless given) is trained on the pairs
    themselves, unsupervised; rules go to decompose_all."""
    checks.require(isinstance(pairs, (list, tuple)) and len(pairs) > 0, "pairs", pairs,
                   "a non-empty list of AlignedPairs")
    gold = [p.word_links for p in pairs]
    gold_links = [sentence_links(g) for g in gold]
    gold_extract = [{p[0] for s in g for p in s if p} for g in gold]
    result = {}
    result["overlap"] = scores_of_words(
        [[align_by_overlap(s, p.document) for s in p.summary] for p in pairs], gold)
    problems = [(s, p.document) for p in pairs for s in p.summary]
    flat = decompose_all(problems, **(rules or {}))
    jing, at = [], 0
    for p in pairs:
        jing.append(flat[at:at + len(p.summary)])
        at += len(p.summary)
    result["jing"] = scores_of_words(jing, gold)
    model = phrase_hmm or PhraseHMM()
    whole = [([t for s in p.summary for t in s], p.document) for p in pairs]
    model.fit(whole, iterations=phrase_iterations)
    result["phrase_hmm"] = scores_of_words(
        [split_like(a, p.summary) for a, p in zip(model.align(whole), pairs)], gold)
    banko = [{(i, s) for i, best in enumerate(align_sentences(p.summary, p.document))
              for s, _ in best} for p in pairs]
    result["banko"] = {"words": None, "sentences": sentence_scores(banko, gold_links),
                       "extract": extract_scores([{s for _, s in b} for b in banko],
                                                 gold_extract)}
    marcu = [{u.sentence for u in extract(p.summary, p.document)} for p in pairs]
    result["marcu"] = {"words": None, "sentences": None,
                       "extract": extract_scores(marcu, gold_extract)}
    return result


def format_table(result):
    """The scores as a fixed-width table (P/R/F1 of each level)."""
    lines = [f"{'method':<11} {'word P':>7} {'word R':>7} {'word F1':>7}  {'sent P':>7} "
             f"{'sent R':>7} {'sent F1':>7}  {'extr P':>7} {'extr R':>7} {'extr F1':>7}"]
    for method, levels in result.items():
        cells = []
        for level in ("words", "sentences", "extract"):
            s = levels[level]
            cells.append(" ".join(f"{'-':>7}" if s is None else f"{s[k]:7.3f}"
                                  for k in ("precision", "recall", "f1")))
        lines.append(f"{method:<11} " + "  ".join(cells))
    return "\n".join(lines)
