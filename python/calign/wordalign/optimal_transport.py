"""Optimal-transport word alignment (Arase et al. 2023): transport the words of
one sentence onto the other's under a cosine cost between their embeddings,
and link the word pairs that carry enough mass. Balanced, partial and
unbalanced entropic OT are solved by log-domain Sinkhorn iterations in C; the
partial and unbalanced variants leave words unaligned (NULL alignment)."""

import numpy as np

from calign import _C, checks

KINDS = tuple(_C.describe()["ot_kinds"])  # the C solvers' names (wordalign/sinkhorn.h)


def transport_plan(cost, a, b, kind="balanced", reg=0.1, reg_m=1.0, mass=None,
                   max_iterations=10000, tolerance=1e-12):
    """The entropic OT plan for a cost matrix [n, m] and masses a [n], b [m].

    kind: "balanced" (P 1 = a, P^T 1 = b), "unbalanced" (marginals relaxed by
    reg_m KL) or "partial" (P 1 <= a, P^T 1 <= b, total mass `mass`)."""
    kind = checks.choice("kind", kind, KINDS)
    reg = checks.real("reg", reg, 0.0, open_low=True)
    reg_m = checks.real("reg_m", reg_m, 0.0, open_low=True)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    for name, masses in (("a", a), ("b", b)):
        checks.require(bool((masses > 0).all()), name, masses, "positive masses")
    most = float(min(a.sum(), b.sum()))
    if mass is None:
        mass = most
    elif kind == "partial":
        mass = checks.real("mass", mass, 0.0, most + 1e-12, open_low=True,
                           note=" (0 to the smaller of sum(a) and sum(b))")
    plan, _ = _C.ot_transport(cost, a, b, kind=kind, reg=reg, reg_m=reg_m, mass=mass,
                              max_iterations=max_iterations, tolerance=tolerance)
    return plan


class OTAligner:
    """Aligns sentence pairs given an embedding matrix per sentence (any
    source: calign.Model.hidden_states of a checkpoint is one).

    cost = 1 - cosine(x_i, y_j) + distortion |i/n - j/m|; uniform masses;
    a link (i, j) where plan[i, j] / max(plan) exceeds threshold."""

    def __init__(self, kind="partial", reg=0.1, reg_m=1.0, mass_fraction=0.9, distortion=0.0,
                 threshold=0.5):
        kind = checks.choice("kind", kind, KINDS)
        threshold = checks.real("threshold", threshold, 0.0, 1.0)
        mass_fraction = checks.real("mass_fraction", mass_fraction, 0.0, 1.0, open_low=True)
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
        cost = _C.ot_cost(x, y, distortion=self.distortion)
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
