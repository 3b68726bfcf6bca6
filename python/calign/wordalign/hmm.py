"""HMM alignment (Vogel et al. 1996) with Och & Ney (2003)'s NULL states,
initialised by IBM Model 1. Forward-backward, EM and Viterbi run in C."""

import numpy as np

from calign import _C
from calign.wordalign.checks import check_integer, check_iterations, check_real
from calign.wordalign.ibm import IBM1

MAX_JUMP = 64  # the widest jump class the C kernels take


class HMM(IBM1):
    """Jumps from the last aligned source position, widths clipped to
    [-max_jump, max_jump]; NULL with probability p0 keeps the last position.
    The defaults (p0 0.1, Dirichlet alpha 0.1) were the best measured on the
    synthetic corpus; alpha = 0 is plain EM."""

    def __init__(self, reverse=False, p0=0.1, max_jump=7, ibm1_iterations=5, alpha=0.1):
        super().__init__(reverse, alpha)
        self.p0 = check_real("p0", p0, 0.0, 1.0, open_low=True, open_high=True)
        self.max_jump = check_integer("max_jump", max_jump, 1, MAX_JUMP)
        self.ibm1_iterations = check_integer("ibm1_iterations", ibm1_iterations, 0)
        self.jump = np.ones(2 * self.max_jump + 1) / (2 * self.max_jump + 1)

    STATE_KEYS = IBM1.STATE_KEYS + ("max_jump", "jump")

    def fit(self, pairs, iterations=5):
        """IBM1 for ibm1_iterations, then `iterations` HMM EM iterations."""
        iterations = check_iterations(iterations)
        arrays, vocabs, links = self._start_training(pairs)
        self._ibm1(arrays, vocabs, links)
        self.log_likelihoods += _C.wa_hmm_em(*self.table, *arrays, *vocabs, self.p0, self.jump,
                                             iterations, self.alpha, links)
        return self

    def _ibm1(self, arrays, vocabs, links):
        if self.ibm1_iterations:
            self.log_likelihoods += _C.wa_em(*self.table, *arrays, *vocabs, False, 0.0, 0.0,
                                             False, self.ibm1_iterations, self.alpha, links)[0]

    def _decode(self, pairs, viterbi):
        table, arrays, vocabs = self._lookup(pairs)
        return arrays, _C.wa_hmm_decode(*table, *arrays, *vocabs, self.p0, self.jump, viterbi,
                                         None)

    def _all_posteriors(self, pairs):
        return self._decode(pairs, viterbi=False)

    def align(self, pairs, method="viterbi", threshold=0.5):
        """As IBM1.align; "viterbi" is the best HMM path here."""
        if method != "viterbi":
            return super().align(pairs, method, threshold)
        arrays, best = self._decode(pairs, viterbi=True)
        lengths = np.diff(arrays[3])
        pair = np.repeat(np.arange(len(lengths)), lengths)
        target = np.arange(len(best)) - arrays[3][pair]
        keep = best > 0
        return self._links(arrays, pair[keep], best[keep] - 1, target[keep])

    def _extra_state(self):
        return {"max_jump": self.max_jump, "jump": self.jump.tolist()}

    def _load_extra_state(self, meta, arrays):
        self.p0 = check_real("p0", self.p0, 0.0, 1.0, open_low=True, open_high=True)
        self.max_jump = check_integer("max_jump", meta["max_jump"], 1, MAX_JUMP)
        jump = meta["jump"]
        if not isinstance(jump, list) or len(jump) != 2 * self.max_jump + 1 or \
                not all(isinstance(x, (int, float)) and np.isfinite(x) and x >= 0 for x in jump):
            raise ValueError(f"jump must be {2 * self.max_jump + 1} finite weights >= 0")
        self.jump = np.asarray(jump, np.float64)
