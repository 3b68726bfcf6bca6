"""Plain NumPy IBM Model 1 / fast_align Model 2 EM, written from Brown et al.
(1993) and Dyer et al. (2013) independently of the C code: a dense t table,
one loop per sentence pair, the same lambda update as fast_align."""

import numpy as np


def em(pairs, n_source, n_target, iterations, model2=False, p0=0.08, tension=4.0):
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
        totals = counts.sum(axis=1, keepdims=True)
        t = np.where(totals > 0, counts / np.where(totals > 0, totals, 1), t)
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
