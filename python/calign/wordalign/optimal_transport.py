"""Optimal-transport word alignment (Arase et al. 2023): transport the words of
one sentence onto the other's under a cosine cost between their embeddings,
and link the word pairs that carry enough mass. Balanced, partial and
unbalanced entropic OT are solved by log-domain Sinkhorn iterations in C; the
partial and unbalanced variants leave words unaligned (NULL alignment)."""

import numpy as np

from calign import _C
from calign.wordalign.checks import check_real, check_threshold

KINDS = {"balanced": 0, "unbalanced": 1, "partial": 2}


def transport_plan(cost, a, b, kind="balanced", reg=0.1, reg_m=1.0, mass=None,
                   max_iterations=10000, tolerance=1e-12):
    """The entropic OT plan for a cost matrix [n, m] and masses a [n], b [m].

    kind: "balanced" (P 1 = a, P^T 1 = b), "unbalanced" (marginals relaxed by
    reg_m KL) or "partial" (P 1 <= a, P^T 1 <= b, total mass `mass`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    reg = check_real("reg", reg, 0.0, open_low=True)
    reg_m = check_real("reg_m", reg_m, 0.0, open_low=True)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if (a <= 0).any() or (b <= 0).any():
        raise ValueError("the masses a and b must be positive")
    if mass is None:
        mass = min(a.sum(), b.sum())
    if kind == "partial" and not 0 < mass <= min(a.sum(), b.sum()) + 1e-12:
        raise ValueError(f"mass must be in (0, min(sum a, sum b)], got {mass!r}")
    plan, _ = _C.ot_transport(cost, a, b, KINDS[kind], float(reg), float(reg_m), float(mass),
                              int(max_iterations), float(tolerance))
    return plan


class OTAligner:
    """Aligns sentence pairs given an embedding matrix per sentence (any
    source: calign.Model.hidden_states of a checkpoint is one).

    cost = 1 - cosine(x_i, y_j) + distortion |i/n - j/m|; uniform masses;
    a link (i, j) where plan[i, j] / max(plan) exceeds threshold."""

    def __init__(self, kind="partial", reg=0.1, reg_m=1.0, mass_fraction=0.9, distortion=0.0,
                 threshold=0.5):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        threshold = check_threshold(threshold)
        mass_fraction = check_real("mass_fraction", mass_fraction, 0.0, 1.0, open_low=True)
        self.kind, self.reg, self.reg_m = kind, reg, reg_m
        self.mass_fraction, self.distortion, self.threshold = mass_fraction, distortion, threshold

    def plan(self, source_embeddings, target_embeddings):
        """The transport plan [n, m] between two sentences' word embeddings."""
        x = np.asarray(source_embeddings, np.float64)
        y = np.asarray(target_embeddings, np.float64)
        for name, e in (("source_embeddings", x), ("target_embeddings", y)):
            if e.ndim != 2:
                raise ValueError(f"{name} must be a 2-D [words, dimension] array")
            if not np.isfinite(e).all():
                raise ValueError(f"{name} contains NaN or infinity")
        cost = _C.ot_cost(x, y, float(self.distortion))
        n, m = cost.shape
        if n == 0 or m == 0:
            return np.zeros((n, m))
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
        return transport_plan(cost, a, b, self.kind, self.reg, self.reg_m,
                              mass=self.mass_fraction)

    def align(self, embedding_pairs):
        """Links [(i, j)] for each (source embeddings, target embeddings) pair."""
        result = []
        for x, y in embedding_pairs:
            plan = self.plan(x, y)
            if plan.size == 0 or plan.max() <= 0:
                result.append([])
                continue
            i, j = np.nonzero(plan / plan.max() > self.threshold)
            result.append(sorted(zip(i.tolist(), j.tolist())))
        return result
