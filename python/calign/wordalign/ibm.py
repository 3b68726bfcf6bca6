"""IBM Model 1 (Brown et al. 1993) and fast_align's IBM Model 2 (Dyer et al. 2013).

The model explains each target word by one source word or NULL; EM runs in C
(OpenMP over sentence pairs, deterministic at a fixed thread count). A
model's settings and what EM learns (the translation table t(target |
source), IBM2's tension, the HMM's jump weights) live in C, in the capsule
`c_model`; the Python object holds the vocabularies.
"""

import numpy as np

from calign import _C, checks
from calign.wordalign.corpus import (Vocabulary, check_pairs, flatten, shard_of_this_rank,
                                     with_unseen_sources)
from calign.wordalign.links import above_threshold, best_of_blocks, links_per_pair
from calign.wordalign.saved import check_state, read_npz, write_npz

# Training keeps the table index of every link, (I + 1) J int32 per pair, so
# that EM does not look the words up again at each iteration; above this many
# bytes it looks them up as it goes instead (slower, no corpus-sized array).
LINK_CACHE_BYTES = 1 << 30

# alpha > 0's update (wa_table_update) takes digamma(total + n_e alpha), n_e a
# table row's support: at most 2**31 - 1 (link indices are int32), and the
# total count at most the corpus's target words. Up to this alpha, n_e alpha
# stays below half the largest double, so the sum cannot overflow to inf
# (alpha = 1e308 did, and EM then produced NaN). An alpha far above the counts
# makes every row nearly uniform anyway.
ALPHA_MAX = float(np.finfo(np.float64).max / 2**32)
ALPHA_NOTE = " (larger values overflow the variational-Bayes update)"


class IBM1:
    """IBM Model 1: uniform alignment prior, EM on t(target | source).

    alpha > 0 puts a symmetric Dirichlet(alpha) prior on each row of t
    (variational Bayes, as fast_align's -v): rare words stop soaking up links."""

    kind = "ibm1"          # the C model's kind
    ibm1_iterations = 0    # IBM Model 1 iterations before the model's own (HMM: 5)

    def __init__(self, reverse=False, alpha=0.0):
        self._init(reverse, alpha=checks.real("alpha", alpha, 0.0, ALPHA_MAX, note=ALPHA_NOTE))

    def _init(self, reverse, **settings):
        """The state every model has: a C model of this class's kind with these
        settings, no vocabularies yet."""
        self.reverse = bool(reverse)
        self.c_model = _C.wa_model_new(kind=self.kind, **settings)
        self.source_vocab = self.target_vocab = None
        self.log_likelihoods = []

    # ---- what lives in C -------------------------------------------------------

    def _settings(self):
        return _C.wa_model_settings(self.c_model)

    @property
    def alpha(self):
        return self._settings()["alpha"]

    @property
    def p0(self):
        return self._settings()["p0"]

    @property
    def tension(self):
        return self._settings()["tension"]

    @property
    def table(self):
        """Copies of the translation table (row_start, cols, prob): row e's
        target ids cols[row_start[e]:row_start[e + 1]] and their t(f | e);
        None before fit() or load()."""
        return _C.wa_model_table(self.c_model)

    def __getstate__(self):
        # pickling and copying go through copies of the C model's arrays
        state = self.__dict__.copy()
        state["c_model"] = (self._settings(), self.table)
        return state

    def __setstate__(self, state):
        settings, table = state.pop("c_model")
        self.__dict__.update(state)
        self.c_model = _C.wa_model_new(**settings)
        if table is not None:
            _C.wa_model_set_table(self.c_model, *table,
                                  target_vocabulary_size=len(self.target_vocab))

    # ---- training --------------------------------------------------------------

    def _oriented(self, pairs):
        pairs = check_pairs(pairs)
        return [(t, s) for s, t in pairs] if self.reverse else pairs

    def fit(self, pairs, iterations=5):
        """Runs ibm1_iterations of IBM Model 1, then `iterations` EM iterations
        of this model, from a uniform table; returns self.

        Under mpirun with several ranks (calign.distributed), every rank
        calls fit with the whole corpus: the vocabularies and the table's
        word pairs come from all of it, each rank runs the E-step on its
        block of the pairs, and every iteration's expected counts (and
        log-likelihood, IBM2's distortion statistics, the HMM's jump counts)
        are summed over the ranks before the update, so that every rank ends
        with the model one process trains on the whole corpus (to the
        rounding of the sums' order)."""
        iterations = checks.integer("iterations", iterations, 1, checks.C_INT_MAX)
        pairs = self._oriented(pairs)
        self.source_vocab, self.target_vocab = Vocabulary(), Vocabulary()
        arrays = flatten(pairs, self.source_vocab, self.target_vocab)
        _C.wa_start(self.c_model, *arrays, source_vocabulary_size=len(self.source_vocab),
                    target_vocabulary_size=len(self.target_vocab))
        shard, sum_in_place = shard_of_this_rank(arrays)
        self.log_likelihoods += _C.wa_train(self.c_model, *shard, iterations=iterations,
                                            ibm1_iterations=self.ibm1_iterations,
                                            link_cache_bytes=LINK_CACHE_BYTES,
                                            sum_in_place=sum_in_place)
        return self

    def _require_fit(self):
        if self.source_vocab is None:
            raise ValueError("the model is not trained: call fit() or load() first")

    # ---- aligning --------------------------------------------------------------

    def _decoding_arrays(self, pairs):
        """The corpus arrays of `pairs` in this model's vocabularies, words
        never seen in training included."""
        self._require_fit()
        arrays = flatten(self._oriented(pairs), self.source_vocab, self.target_vocab, grow=False)
        return with_unseen_sources(arrays, len(self.source_vocab))

    def posteriors(self, pair):
        """[target length, source length + 1] link posteriors; column 0 is NULL."""
        arrays, flat = self._all_posteriors([pair])
        return flat.reshape(int(arrays[3][1]), int(arrays[1][1]) + 1)

    def _all_posteriors(self, pairs):
        arrays = self._decoding_arrays(pairs)
        return arrays, _C.wa_posteriors(self.c_model, *arrays)

    def align(self, pairs, method="viterbi", threshold=0.5):
        """Links [(i, j), ...] per pair, i indexing the source and j the target
        of the pairs as given (also with reverse=True).

        method "viterbi": each target word's most probable link (none if NULL);
        "posterior": every link whose posterior exceeds threshold."""
        if method not in ("viterbi", "posterior"):
            raise ValueError(f"method must be 'viterbi' or 'posterior', got {method!r}")
        threshold = checks.real("threshold", threshold, 0.0, 1.0)
        arrays, flat = self._all_posteriors(pairs)
        if method == "viterbi":
            return self._links(arrays, *best_of_blocks(arrays, flat))
        return self._links(arrays, *above_threshold(arrays, flat, threshold))

    def _links(self, arrays, pair, source, target):
        """Flat links (pair index, source position, target position), both
        positions from 0 in this model's orientation, as sorted lists per pair
        in the orientation of the pairs as given."""
        if self.reverse:
            source, target = target, source
        return links_per_pair(pair, source, target, len(arrays[1]) - 1)

    # ---- files -----------------------------------------------------------------

    def save(self, path):
        """An .npz with the table, vocabularies and settings, written atomically."""
        write_npz(path, *self.saved_state())

    @classmethod
    def load(cls, path):
        arrays, meta = read_npz(path)
        if meta.get("model") != cls.__name__:
            raise ValueError(f"{path!r} is not a saved {cls.__name__} model")
        return cls.from_saved_state(arrays, meta, path)

    def saved_state(self):
        """(arrays, JSON-able metadata): what save() writes."""
        self._require_fit()
        settings = self._settings()
        meta = {"model": type(self).__name__, "reverse": self.reverse,
                **{key: settings[key] for key in ("alpha", "p0", "tension")},
                "source_vocab": self.source_vocab.ids, "target_vocab": self.target_vocab.ids,
                **self._extra_state(settings)}
        row_start, cols, prob = self.table
        return {"row_start": row_start, "cols": cols, "prob": prob}, meta

    STATE_KEYS = ("reverse", "p0", "tension", "source_vocab", "target_vocab")

    @classmethod
    def from_saved_state(cls, arrays, meta, path, prefix=""):
        """The model saved as (arrays, meta); a ValueError naming path (and,
        in a JointHMM file, the direction `prefix`) for anything missing or
        out of shape."""
        name = cls.__name__ if not prefix else "JointHMM"
        check_state(path, name, arrays, meta, prefix, cls.STATE_KEYS)
        try:
            model = cls(reverse=meta["reverse"])
            model.c_model = _C.wa_model_new(kind=cls.kind, **cls._saved_settings(meta))
            _C.wa_model_set_table(model.c_model, arrays["row_start"], arrays["cols"],
                                  arrays["prob"],
                                  target_vocabulary_size=len(meta["target_vocab"]) + 1)
        except ValueError as exc:
            where = f"its {prefix[:-1]!r} direction: " if prefix else ""
            raise ValueError(f"{path!r} is not a saved {name} model: {where}{exc}") from None
        model.source_vocab, model.target_vocab = Vocabulary(), Vocabulary()
        model.source_vocab.ids, model.target_vocab.ids = meta["source_vocab"], meta["target_vocab"]
        return model

    @classmethod
    def _saved_settings(cls, meta):
        """The C model's settings from saved metadata, checked."""
        return {"alpha": checks.real("alpha", meta.get("alpha", 0.0), 0.0, ALPHA_MAX,
                                     note=ALPHA_NOTE),
                "p0": checks.real("p0", meta["p0"], 0.0, 1.0, open_high=True),
                "tension": checks.real("tension", meta["tension"], 0.0)}

    def _extra_state(self, settings):
        """More JSON-able settings a subclass saves (the HMM's jumps)."""
        return {}


class IBM2(IBM1):
    """fast_align's Model 2: p(NULL) = p0, else a prior favouring the diagonal,
    exp(-lambda |i/I - j/J|) normalised over source positions, lambda learned.
    alpha defaults to 0.1 (measured best on the synthetic corpus; 0 is plain EM)."""

    kind = "ibm2"

    def __init__(self, reverse=False, p0=0.08, tension=4.0, learn_tension=True, alpha=0.1):
        alpha = checks.real("alpha", alpha, 0.0, ALPHA_MAX, note=ALPHA_NOTE)
        self._init(reverse, alpha=alpha, p0=checks.real("p0", p0, 0.0, 1.0, open_high=True),
                   tension=checks.real("tension", tension, 0.0, open_low=True),
                   learn_tension=bool(learn_tension))

    @property
    def learn_tension(self):
        return self._settings()["learn_tension"]

    @classmethod
    def _saved_settings(cls, meta):
        return {**super()._saved_settings(meta), "learn_tension": True}  # the default
