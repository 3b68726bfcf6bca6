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


def hmm_pair(src, tgt, t, jump, p0):
    """One pair under the HMM with an explicit state space: states 0..I-1 are
    source positions 1..I, states I..2I are NULL after last position 0..I; a
    dense transition matrix and unscaled forward-backward (short sentences
    only). Returns (log-likelihood, link posteriors [J, I + 1] with column 0
    the NULL mass, expected jump counts by width class)."""
    I, J = len(src), len(tgt)
    D = (len(jump) - 1) // 2
    jump_counts = np.zeros_like(jump)
    if J == 0:
        return 0.0, np.zeros((0, I + 1)), jump_counts
    if I == 0:
        return float(np.log(t[0, tgt]).sum()), np.ones((J, 1)), jump_counts
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
    gamma = fwd * beta / z
    post = np.concatenate([gamma[:, I:].sum(axis=1, keepdims=True), gamma[:, :I]], axis=1)
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
    return float(np.log(z)), post, jump_counts


def add_link_counts(counts, src, tgt, post):
    """counts[e, f] += posterior of each link of the pair (row 0: NULL)."""
    words = np.concatenate([[0], src]).astype(int)
    for j, f in enumerate(tgt):
        np.add.at(counts, (words, np.full(len(words), f)), post[j])


def hmm_em(pairs, n_source, n_target, t, jump, p0, iterations, alpha=0.0):
    """HMM EM (Vogel et al. 1996, Och & Ney's NULL states) with hmm_pair's
    explicit state space."""
    t, jump = t.copy(), jump.copy()
    lls = []
    for _ in range(iterations):
        counts, jump_counts, ll = np.zeros_like(t), np.zeros_like(jump), 0.0
        for src, tgt in pairs:
            pair_ll, post, pair_jumps = hmm_pair(src, tgt, t, jump, p0)
            ll += pair_ll
            add_link_counts(counts, src, tgt, post)
            jump_counts += pair_jumps
        lls.append(ll)
        t = normalise(t, counts, alpha)
        jump = jump_counts / jump_counts.sum()
    return t, jump, lls


def hmm_agreement_em(pairs, t_f, jump_f, t_r, jump_r, p0, iterations, alpha=0.0):
    """Alignment by agreement (Liang, Taskar & Klein 2006): per pair both
    directions' posteriors, q(i, j) = p_f(a_j = i) p_r(b_i = j) counted in
    both tables, the NULL of a word counted with its direction's NULL
    posterior times prod over the other side of (1 - the other direction's
    link posterior); each direction's jumps from its own posteriors. pairs are
    (source ids, target ids); t_r is indexed [target id, source id]. Returns
    (t_f, jump_f, t_r, jump_r, summed log-likelihoods)."""
    t_f, jump_f, t_r, jump_r = t_f.copy(), jump_f.copy(), t_r.copy(), jump_r.copy()
    lls = []
    for _ in range(iterations):
        counts_f, counts_r = np.zeros_like(t_f), np.zeros_like(t_r)
        jumps_f, jumps_r, ll = np.zeros_like(jump_f), np.zeros_like(jump_r), 0.0
        for src, tgt in pairs:
            ll_f, post_f, pair_jumps_f = hmm_pair(src, tgt, t_f, jump_f, p0)
            ll_r, post_r, pair_jumps_r = hmm_pair(tgt, src, t_r, jump_r, p0)
            ll += ll_f + ll_r
            jumps_f += pair_jumps_f
            jumps_r += pair_jumps_r
            I, J = len(src), len(tgt)
            forward_links = post_f[:, 1:].T if J else np.zeros((I, 0))  # [I, J]
            reverse_links = post_r[:, 1:] if I else np.zeros((0, J))    # [I, J]
            q = forward_links * reverse_links
            merged_f = np.concatenate([(post_f[:, 0] * np.prod(1 - reverse_links, axis=0))[:, None],
                                       q.T], axis=1)
            merged_r = np.concatenate([(post_r[:, 0] * np.prod(1 - forward_links, axis=1))[:, None],
                                       q], axis=1)
            add_link_counts(counts_f, src, tgt, merged_f)
            add_link_counts(counts_r, tgt, src, merged_r)
        lls.append(ll)
        t_f, t_r = normalise(t_f, counts_f, alpha), normalise(t_r, counts_r, alpha)
        jump_f, jump_r = jumps_f / jumps_f.sum(), jumps_r / jumps_r.sum()
    return t_f, jump_f, t_r, jump_r, lls


def hmm_paths(src, tgt, t, jump, p0):
    """Every alignment a (a_j in 0..I, 0 = NULL) of one pair with its joint
    probability p(a, f | e) under the HMM, by enumeration (tiny pairs only):
    a dict {a: probability}. The first word jumps from position 0; NULL keeps
    the last real position."""
    import itertools

    I, D = len(src), (len(jump) - 1) // 2
    words = np.concatenate([[0], src]).astype(int)
    to = np.zeros((I + 1, I + 1))  # to[p, i]: from last position p to i (0 NULL)
    for p in range(I + 1):
        w = np.array([jump[int(np.clip(k - p, -D, D)) + D] for k in range(1, I + 1)])
        to[p] = np.concatenate([[p0], (1 - p0) * w / w.sum()])
    result = {}
    for a in itertools.product(range(I + 1), repeat=len(tgt)):
        prob, last = 1.0, 0
        for f, i in zip(tgt, a):
            prob *= to[last, i] * t[words[i], f]
            last = i if i else last
        result[a] = prob
    return result


MASK64 = (1 << 64) - 1


def splitmix64(state):
    """(new state, output) of splitmix64 (Steele, Lea & Flood 2014)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def fertility_sample(pairs, t, jump, p0, align, n_words, max_fertility, prior, sweeps, burn_in,
                     seed):
    """The fertility HMM's Gibbs sampler (Zhao & Gildea 2010) with the HMM's t
    and jumps fixed and n(phi | e) re-estimated after every sweep, written
    from its definition with the same random streams as calign's: pair k in
    sweep s draws from splitmix64 started at a hash of (seed, k, s). pairs:
    (source ids, target ids); align: a list of per-pair int arrays (0 NULL,
    else source position from 1), updated in place. Returns the link
    frequencies after burn-in, one [J, I + 1] array per pair."""
    F, D = max_fertility, (len(jump) - 1) // 2

    def c(d):
        return jump[int(np.clip(d, -D, D)) + D]

    def transitions(I):
        T = np.zeros((I + 1, I + 1))
        for p in range(I + 1):
            z = 0.0
            for i in range(1, I + 1):
                z += c(i - p)
            T[p, 0] = p0
            for i in range(1, I + 1):
                T[p, i] = (1.0 - p0) * c(i - p) / z
        return T

    def counts_of(links):
        N = np.zeros((n_words, F + 1), np.int64)
        for (src, _), a in zip(pairs, links):
            phi = np.bincount(a, minlength=len(src) + 1)
            for i in range(1, len(src) + 1):
                N[src[i - 1], min(phi[i], F)] += 1
        return N

    N = counts_of(align)
    post = [np.zeros((len(tgt), len(src) + 1)) for src, tgt in pairs]
    for sweep in range(sweeps):
        g = np.ones(F + 1)
        for phi in range(F + 1):
            for e in range(n_words):
                g[phi] += float(N[e, phi])
        total = 0.0
        for phi in range(F + 1):
            total += g[phi]
        g = prior * g / total
        ratio = (N[:, 1:] + g[1:]) / (N[:, :-1] + g[:-1])
        for k, ((src, tgt), a) in enumerate(zip(pairs, align)):
            I, J = len(src), len(tgt)
            if I and J:
                state, _ = splitmix64(seed ^ k)
                state = _ ^ sweep
                state, rng = splitmix64(state)
                T = transitions(I)
                emit = np.array([[np.float32(t[0 if v == 0 else src[v - 1], f])
                                  for v in range(I + 1)] for f in tgt], np.float64)
                phi = np.bincount(a, minlength=I + 1)
                p = 0
                for j in range(J):
                    phi[a[j]] -= 1
                    following = [x for x in a[j + 1:] if x > 0]
                    next_ = following[0] if following else 0
                    cum, acc = [], 0.0
                    for v in range(I + 1):
                        s = T[p, v] * emit[j, v]
                        if next_ > 0:
                            s *= T[v if v > 0 else p, next_]
                        if v > 0 and phi[v] < F:
                            s *= ratio[src[v - 1], phi[v]]
                        acc += s
                        cum.append(acc)
                    rng, bits = splitmix64(rng)
                    target = (bits >> 11) * 2.0 ** -53 * acc
                    v = 0
                    while v < I and cum[v] <= target:
                        v += 1
                    a[j] = v
                    phi[v] += 1
                    p = v if v > 0 else p
            if sweep >= burn_in:
                post[k][np.arange(J), a] += 1.0
        N = counts_of(align)
    return [x / (sweeps - burn_in) for x in post] if sweeps > burn_in else post
