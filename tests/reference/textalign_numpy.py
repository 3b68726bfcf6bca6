"""Independent references for calign.textalign's C kernels: Jing &
McKeown's decomposition scored path by path (brute force and a plain Python
Viterbi), and the simplified Daumé & Marcu phrase HMM by enumerating every
segmentation (likelihood, best path, EM update)."""

import itertools
import math

import numpy as np

RULE_ORDER = ("p_adjacent", "p_same_later", "p_same_earlier", "p_near_later",
              "p_near_earlier", "p_far")


def rule(settings, a, b):
    (s1, w1), (s2, w2) = a, b
    if s2 == s1:
        name = "p_adjacent" if w2 == w1 + 1 else "p_same_later" if w2 > w1 else "p_same_earlier"
    elif abs(s2 - s1) >= settings["near"]:
        name = "p_far"
    else:
        name = "p_near_later" if s2 > s1 else "p_near_earlier"
    return math.log(settings[name])


def candidates(summary, document):
    return [[(s, w) for s, sent in enumerate(document) for w, t in enumerate(sent)
             if t.lower() == word.lower()] for word in summary]


def path_score(settings, path):
    """The log-score of a path (positions or None)."""
    score, last = 0.0, None
    for position in path:
        if position is None:
            score += math.log(settings["p_new"])
        else:
            if last is not None:
                score += rule(settings, last, position)
            last = position
    return score


def brute_force(settings, summary, document):
    """(best score, a best path, the number of paths within 1e-9 of the best)."""
    options = [c + [None] for c in candidates(summary, document)]
    scored = sorted(((path_score(settings, p), p) for p in itertools.product(*options)),
                    key=lambda t: t[0])
    best = scored[-1][0]
    return best, list(scored[-1][1]), sum(s > best - 1e-9 for s, _ in scored)


def viterbi(settings, summary, document):
    """A plain Python Viterbi with the C kernel's tie rules (the start, then
    the earlier word, then the earlier candidate; at the end no position,
    then the earlier word)."""
    cands = candidates(summary, document)
    log_new = math.log(settings["p_new"])
    delta, back = {}, {}
    for j, cs in enumerate(cands):
        for c in cs:
            top, frm = j * log_new, None
            for i in range(j):
                for p in cands[i]:
                    score = delta[i, p] + (j - i - 1) * log_new + rule(settings, p, c)
                    if score > top:
                        top, frm = score, (i, p)
            delta[j, c], back[j, c] = top, frm
    top, last = len(cands) * log_new, None
    for j, cs in enumerate(cands):
        for c in cs:
            score = delta[j, c] + (len(cands) - j - 1) * log_new
            if score > top:
                top, last = score, (j, c)
    path = [None] * len(cands)
    while last is not None:
        path[last[0]] = last[1]
        last = back[last]
    return top, path


# ---- the phrase HMM ---------------------------------------------------------------

def segmentations(J, I, sent, max_length):
    """Every segmentation of J summary words: lists of ("null", j) and
    ("phrase", j, a, l) in order; a phrase's span lies in one sentence."""
    if J == 0:
        yield []
        return

    def rest(j):
        if j == J:
            yield []
            return
        for tail in rest(j + 1):
            yield [("null", j)] + tail
        for l in range(1, max_length + 1):
            if j + l > J:
                break
            for a in range(I - l + 1):
                if sent[a + l - 1] != sent[a]:
                    continue
                for tail in rest(j + l):
                    yield [("phrase", j, a, l)] + tail
    yield from rest(0)


def segmentation_terms(model, s, d, sent, segs):
    """(probability, counts) of one segmentation; counts as the C M-step
    sums them."""
    p_null, identity = model["p_null"], model["identity"]
    length = model["length"] / model["length"].sum()
    jump = model["jump"] / model["jump"].sum()
    rewrite = model["rewrite"] / model["rewrite"].sum()
    generate = model["generate"] / model["generate"].sum()
    D, I = (len(jump) - 1) // 2, len(d)

    def jw(m, a):
        return jump[min(max(a - m, -D), D) + D]

    prob, m = 1.0, 0
    counts = {"null": 0.0, "phrase": 0.0, "ident": 0.0, "rewritten": 0.0,
              "length": np.zeros(len(length)), "jump": np.zeros(len(jump)),
              "generate": {}, "rewrite": {}}
    for seg in segs:
        if seg[0] == "null":
            prob *= p_null * generate[s[seg[1]]]
            counts["null"] += 1
            counts["generate"][s[seg[1]]] = counts["generate"].get(s[seg[1]], 0) + 1
            continue
        _, j, a, l = seg
        z = sum(jw(m, b) for b in range(I))
        prob *= (1 - p_null) * jw(m, a) / z * length[l - 1]
        counts["phrase"] += 1
        counts["length"][l - 1] += 1
        counts["jump"][min(max(a - m, -D), D) + D] += 1
        for k in range(l):
            r = (1 - identity) * rewrite[s[j + k]]
            e = identity + r if s[j + k] == d[a + k] else r
            prob *= e
            share = r / e
            counts["ident"] += 1 - share
            counts["rewritten"] += share
            counts["rewrite"][s[j + k]] = counts["rewrite"].get(s[j + k], 0) + share
        m = a + l
    return prob, counts


def phrase_likelihood_and_best(model, s, d, sent):
    """(log-likelihood, best segmentation's probability, the segmentations
    sorted by probability, best first)."""
    terms = [(segmentation_terms(model, s, d, sent, segs)[0], segs)
             for segs in segmentations(len(s), len(d), sent, len(model["length"]))]
    terms.sort(key=lambda t: -t[0])
    return math.log(sum(p for p, _ in terms)), terms


def phrase_em_update(model, pairs, smoothing):
    """The model after one EM iteration over pairs (s ids, d ids, sentences),
    by enumeration; and the log-likelihood before it."""
    total = {"null": 0.0, "phrase": 0.0, "ident": 0.0, "rewritten": 0.0,
             "length": np.zeros(len(model["length"])), "jump": np.zeros(len(model["jump"]))}
    generate = np.full(len(model["generate"]), smoothing)
    rewrite = np.full(len(model["rewrite"]), smoothing)
    loglik = 0.0
    for s, d, sent in pairs:
        terms = [segmentation_terms(model, s, d, sent, segs)
                 for segs in segmentations(len(s), len(d), sent, len(model["length"]))]
        z = sum(p for p, _ in terms)
        loglik += math.log(z)
        for p, counts in terms:
            w = p / z
            for key in ("null", "phrase", "ident", "rewritten", "length", "jump"):
                total[key] = total[key] + w * counts[key]
            for word, c in counts["generate"].items():
                generate[word] += w * c
            for word, c in counts["rewrite"].items():
                rewrite[word] += w * c
    return {"p_null": (total["null"] + smoothing) / (total["null"] + total["phrase"] +
                                                      2 * smoothing),
            "identity": (total["ident"] + smoothing) / (total["ident"] + total["rewritten"] +
                                                         2 * smoothing),
            "length": total["length"] + smoothing, "jump": total["jump"] + smoothing,
            "rewrite": rewrite, "generate": generate}, loglik
