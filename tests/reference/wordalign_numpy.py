"""Plain NumPy IBM Model 1 / fast_align Model 2 EM, written from Brown et al.
(1993) and Dyer et al. (2013) independently of the C code: a dense t table,
one loop per sentence pair, the same lambda update as fast_align."""

import numpy as np
from scipy.special import digamma


def normalise(t, counts, alpha):
    """M-step: plain (alpha = 0) or variational Bayes with a Dirichlet(alpha)
    prior over each row's support (the entries that co-occurred)."""
    support = t > 0
    totals = counts.sum(axis=1, keepdims=True)
    if alpha == 0:
        new = counts / np.where(totals > 0, totals, 1)
    else:
        n = support.sum(axis=1, keepdims=True)
        new = np.where(support, np.exp(digamma(counts + alpha) - digamma(totals + n * alpha)), 0)
    return np.where(totals > 0, new, t)


def em(pairs, n_source, n_target, iterations, model2=False, p0=0.08, tension=4.0, alpha=0.0):
    """pairs: (source ids >= 1, target ids); source id 0 is NULL. Returns
    (t [n_source, n_target], tension, log-likelihoods)."""
    mask = np.zeros((n_source, n_target), bool)
    for src, tgt in pairs:
        for f in tgt:
            mask[0, f] = True
            mask[src, f] = True
    t = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)
    lls = []
    for _ in range(iterations):
        counts = np.zeros_like(t)
        ll = feature = 0.0
        for src, tgt in pairs:
            I, J = len(src), len(tgt)
            words = np.concatenate([[0], src]).astype(int)
            for j in range(1, J + 1):
                prior = prior_of(j, I, J, model2, p0, tension)
                p = prior * t[words, tgt[j - 1]]
                z = p.sum()
                ll += np.log(z)
                post = p / z
                np.add.at(counts, (words, np.full(I + 1, tgt[j - 1])), post)
                if I:
                    feature += (post[1:] * -np.abs(np.arange(1, I + 1) / I - j / J)).sum()
        lls.append(ll)
        t = normalise(t, counts, alpha)
        if model2:
            tokens = sum(len(tgt) for _, tgt in pairs)
            for _ in range(8):
                model_feature = 0.0
                for src, tgt in pairs:
                    I, J = len(src), len(tgt)
                    if I == 0:
                        continue
                    for j in range(1, J + 1):
                        h = -np.abs(np.arange(1, I + 1) / I - j / J)
                        w = np.exp(tension * h)
                        model_feature += (w * h).sum() / w.sum()
                tension = float(np.clip(tension + (feature - model_feature) / tokens * 20.0,
                                        0.1, 14.0))
    return t, tension, lls


def prior_of(j, I, J, model2, p0, tension):
    if not model2:
        return np.full(I + 1, 1.0 / (I + 1))
    w = np.exp(tension * -np.abs(np.arange(1, I + 1) / I - j / J))
    return np.concatenate([[p0], (1 - p0) * w / w.sum()]) if I else np.array([p0])


def hmm_em(pairs, n_source, n_target, t, jump, p0, iterations, alpha=0.0):
    """HMM EM with an explicit state space: states 0..I-1 are source positions
    1..I, states I..2I are NULL after last position 0..I; a dense transition
    matrix and unscaled forward-backward (short sentences only)."""
    t, jump = t.copy(), jump.copy()
    D = (len(jump) - 1) // 2
    lls = []
    for _ in range(iterations):
        counts, jump_counts, ll = np.zeros_like(t), np.zeros_like(jump), 0.0
        for src, tgt in pairs:
            I, J = len(src), len(tgt)
            if J == 0:
                continue
            if I == 0:
                for f in tgt:
                    ll += np.log(t[0, f])
                    counts[0, f] += 1
                continue
            last = np.concatenate([np.arange(1, I + 1), np.arange(0, I + 1)])  # last position
            S = 2 * I + 1

            def width(d):
                return int(np.clip(d, -D, D)) + D

            A = np.zeros((I + 1, S))  # from last position p to state s
            for p in range(I + 1):
                w = np.array([jump[width(i - p)] for i in range(1, I + 1)])
                A[p, :I] = (1 - p0) * w / w.sum()
                A[p, I + p] = p0
            words = np.concatenate([src, np.zeros(I + 1, int)])
            emit = np.array([[t[words[s], f] for s in range(S)] for f in tgt])
            fwd = np.zeros((J, S))
            fwd[0] = A[0] * emit[0]
            for j in range(1, J):
                fwd[j] = (fwd[j - 1] @ A[last]) * emit[j]
            beta = np.ones((J, S))
            for j in range(J - 2, -1, -1):
                beta[j] = A[last] @ (emit[j + 1] * beta[j + 1])
            z = fwd[-1].sum()
            ll += np.log(z)
            gamma = fwd * beta / z
            for j, f in enumerate(tgt):
                np.add.at(counts, (words, np.full(S, f)), gamma[j])
            for j in range(J):
                prev = np.zeros(I + 1)
                if j == 0:
                    prev[0] = 1.0
                else:
                    np.add.at(prev, last, fwd[j - 1])
                for p in range(I + 1):
                    for i in range(1, I + 1):
                        xi = prev[p] * A[p, i - 1] * emit[j, i - 1] * beta[j, i - 1] / z
                        jump_counts[width(i - p)] += xi
        lls.append(ll)
        t = normalise(t, counts, alpha)
        jump = jump_counts / jump_counts.sum()
    return t, jump, lls


def hmm_paths(src, tgt, t, jump, p0):
    """Every alignment a (a_j in 0..I, 0 = NULL) of one pair with its joint
    probability p(a, f | e) under the HMM, by enumeration (tiny pairs only):
    a dict {a: probability}. The first word jumps from position 0; NULL keeps
    the last real position."""
    import itertools

    I, D = len(src), (len(jump) - 1) // 2
    words = np.concatenate([[0], src]).astype(int)

    def to(p, i):
        if i == 0:
            return p0
        w = np.array([jump[int(np.clip(k - p, -D, D)) + D] for k in range(1, I + 1)])
        return (1 - p0) * w[i - 1] / w.sum()

    result = {}
    for a in itertools.product(range(I + 1), repeat=len(tgt)):
        prob, last = 1.0, 0
        for f, i in zip(tgt, a):
            prob *= to(last, i) * t[words[i], f]
            last = i if i else last
        result[a] = prob
    return result
