"""HMM alignment (Vogel et al. 1996) with Och & Ney (2003)'s NULL states,
initialised by IBM Model 1. Forward-backward, EM and Viterbi run in C."""

import numpy as np

from calign import _C, checks
from calign.wordalign.ibm import ALPHA_MAX, ALPHA_NOTE, IBM1

MAX_JUMP = 64  # the widest jump class the C kernels take


class HMM(IBM1):
    """Jumps from the last aligned source position, widths clipped to
    [-max_jump, max_jump]; NULL with probability p0 keeps the last position.
    The defaults (p0 0.1, Dirichlet alpha 0.1) were the best measured on the
    synthetic corpus; alpha = 0 is plain EM. fit() starts with
    ibm1_iterations of IBM Model 1."""

    kind = "hmm"

    def __init__(self, reverse=False, p0=0.1, max_jump=7, ibm1_iterations=5, alpha=0.1):
        alpha = checks.real("alpha", alpha, 0.0, ALPHA_MAX, note=ALPHA_NOTE)
        p0 = checks.real("p0", p0, 0.0, 1.0, open_low=True, open_high=True)
        max_jump = checks.integer("max_jump", max_jump, 1, MAX_JUMP)
        self.ibm1_iterations = checks.integer("ibm1_iterations", ibm1_iterations, 0,
                                              checks.C_INT_MAX)
        self._init(reverse, p0=p0, max_jump=max_jump, alpha=alpha)

    @property
    def max_jump(self):
        return self._settings()["max_jump"]

    @property
    def jump(self):
        """A copy of the jump weights c(d), d = -max_jump..max_jump."""
        return self._settings()["jump"]

    STATE_KEYS = IBM1.STATE_KEYS + ("max_jump", "jump")

    def align(self, pairs, method="viterbi", threshold=0.5):
        """As IBM1.align; "viterbi" is the best HMM path here."""
        if method != "viterbi":
            return super().align(pairs, method, threshold)
        arrays = self._decoding_arrays(pairs)
        best = _C.wa_viterbi(self.c_model, *arrays)
        lengths = np.diff(arrays[3])
        pair = np.repeat(np.arange(len(lengths)), lengths)
        target = np.arange(len(best)) - arrays[3][pair]
        keep = best > 0
        return self._links(arrays, pair[keep], best[keep] - 1, target[keep])

    def _extra_state(self, settings):
        return {"max_jump": settings["max_jump"], "jump": settings["jump"].tolist()}

    @classmethod
    def _saved_settings(cls, meta):
        settings = super()._saved_settings(meta)
        settings["p0"] = checks.real("p0", settings["p0"], 0.0, 1.0, open_low=True,
                                     open_high=True)
        max_jump = checks.integer("max_jump", meta["max_jump"], 1, MAX_JUMP)
        jump = meta["jump"]
        checks.require(isinstance(jump, list) and len(jump) == 2 * max_jump + 1 and
                       all(checks.is_finite_real(x) and x >= 0 for x in jump),
                       "jump", jump, f"{2 * max_jump + 1} finite weights >= 0")
        return {**settings, "max_jump": max_jump, "jump": jump}
