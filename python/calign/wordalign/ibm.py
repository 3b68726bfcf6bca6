"""IBM Model 1 (Brown et al. 1993) and fast_align's IBM Model 2 (Dyer et al. 2013).

The model explains each target word by one source word or NULL; EM runs in C
(OpenMP over sentence pairs, deterministic at a fixed thread count).
"""

import numpy as np

from calign import _C
from calign.wordalign.checks import check_alpha, check_iterations, check_real, check_threshold
from calign.wordalign.corpus import Vocabulary, check_pairs, flatten
from calign.wordalign.links import above_threshold, best_of_blocks, links_per_pair
from calign.wordalign.saved import check_state, read_npz, write_npz

# Training keeps the table index of every link, (I + 1) J int32 per pair, so
# that EM does not look the words up again at each iteration; above this many
# bytes it looks them up as it goes instead (slower, no corpus-sized array).
LINK_CACHE_BYTES = 1 << 30


class IBM1:
    """IBM Model 1: uniform alignment prior, EM on t(target | source).

    alpha > 0 puts a symmetric Dirichlet(alpha) prior on each row of t
    (variational Bayes, as fast_align's -v): rare words stop soaking up links."""

    model2 = False

    def __init__(self, reverse=False, alpha=0.0):
        self.reverse = bool(reverse)
        self.alpha = check_alpha(alpha)
        self.p0, self.tension = 0.0, 0.0
        self.source_vocab = self.target_vocab = None
        self.table = None
        self.log_likelihoods = []

    def _oriented(self, pairs):
        pairs = check_pairs(pairs)
        return [(t, s) for s, t in pairs] if self.reverse else pairs

    def _settings(self):
        return (self.model2, float(self.p0), float(self.tension))

    def _start_training(self, pairs):
        """Vocabularies, flat corpus arrays, a uniform table for `pairs` and the
        cached link indices (None above LINK_CACHE_BYTES)."""
        pairs = self._oriented(pairs)
        self.source_vocab, self.target_vocab = Vocabulary(), Vocabulary()
        arrays = flatten(pairs, self.source_vocab, self.target_vocab)
        vocabs = (len(self.source_vocab), len(self.target_vocab))
        self.table = _C.wa_build_table(*arrays, *vocabs)
        n_links = int(((np.diff(arrays[1]) + 1) * np.diff(arrays[3])).sum())
        links = _C.wa_links(*self.table, *arrays, *vocabs) if 4 * n_links <= LINK_CACHE_BYTES \
            else None
        return arrays, vocabs, links

    def _lookup(self, pairs):
        """(table with an extra empty row, corpus arrays, vocabulary sizes) to
        score new pairs: source words never seen in training get that row."""
        self._require_fit()
        pairs = self._oriented(pairs)
        arrays = flatten(pairs, self.source_vocab, self.target_vocab, grow=False)
        unknown = len(self.source_vocab)
        arrays = (np.where(arrays[0] == 0, unknown, arrays[0]).astype(np.int32),) + arrays[1:]
        table = (np.append(self.table[0], self.table[0][-1]), self.table[1], self.table[2])
        return table, arrays, (unknown + 1, len(self.target_vocab))

    def fit(self, pairs, iterations=5):
        """Runs `iterations` EM iterations from a uniform table; returns self."""
        iterations = check_iterations(iterations)
        arrays, vocabs, links = self._start_training(pairs)
        lls, self.tension = _C.wa_em(*self.table, *arrays, *vocabs, self.model2, float(self.p0),
                                     float(self.tension), self.model2 and self.learn_tension,
                                     iterations, self.alpha, links)
        self.log_likelihoods += lls
        return self

    def _require_fit(self):
        if self.table is None:
            raise ValueError("the model is not trained: call fit() or load() first")

    def posteriors(self, pair):
        """[target length, source length + 1] link posteriors; column 0 is NULL."""
        arrays, flat = self._all_posteriors([pair])
        return flat.reshape(int(arrays[3][1]), int(arrays[1][1]) + 1)

    def _all_posteriors(self, pairs):
        table, arrays, vocabs = self._lookup(pairs)
        return arrays, _C.wa_posteriors(*table, *arrays, *vocabs, *self._settings())

    def align(self, pairs, method="viterbi", threshold=0.5):
        """Links [(i, j), ...] per pair, i indexing the source and j the target
        of the pairs as given (also with reverse=True).

        method "viterbi": each target word's most probable link (none if NULL);
        "posterior": every link whose posterior exceeds threshold."""
        if method not in ("viterbi", "posterior"):
            raise ValueError(f"method must be 'viterbi' or 'posterior', got {method!r}")
        threshold = check_threshold(threshold)
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
        write_npz(path, *self._state())

    @classmethod
    def load(cls, path):
        arrays, meta = read_npz(path)
        if meta.get("model") != cls.__name__:
            raise ValueError(f"{path!r} is not a saved {cls.__name__} model")
        return cls._from_state(arrays, meta, path)

    def _state(self):
        """(arrays, JSON-able settings): what save() writes."""
        self._require_fit()
        meta = {"model": type(self).__name__, "reverse": self.reverse, "alpha": self.alpha,
                "p0": self.p0, "tension": self.tension,
                "source_vocab": self.source_vocab.ids, "target_vocab": self.target_vocab.ids,
                **self._extra_state()}
        return {"row_start": self.table[0], "cols": self.table[1], "prob": self.table[2]}, meta

    STATE_KEYS = ("reverse", "p0", "tension", "source_vocab", "target_vocab")

    @classmethod
    def _from_state(cls, arrays, meta, path, prefix=""):
        """The model saved as (arrays, meta); a ValueError naming path (and,
        in a JointHMM file, the direction `prefix`) for anything missing or
        out of shape."""
        name = cls.__name__ if not prefix else "JointHMM"
        check_state(path, name, arrays, meta, prefix, cls.STATE_KEYS)
        try:
            model = cls(reverse=meta["reverse"])
            model.alpha = check_alpha(meta.get("alpha", 0.0))
            model.p0 = check_real("p0", meta["p0"], 0.0, 1.0, open_high=True)
            model.tension = check_real("tension", meta["tension"], 0.0)
            model._load_extra_state(meta, arrays)
        except ValueError as exc:
            where = f"its {prefix[:-1]!r} metadata: " if prefix else ""
            raise ValueError(f"{path!r} is not a saved {name} model: {where}{exc}") from None
        model.source_vocab, model.target_vocab = Vocabulary(), Vocabulary()
        model.source_vocab.ids, model.target_vocab.ids = meta["source_vocab"], meta["target_vocab"]
        model.table = (arrays["row_start"], arrays["cols"], arrays["prob"].copy())
        return model

    def _extra_state(self):
        """More JSON-able settings a subclass saves (the HMM's jumps)."""
        return {}

    def _load_extra_state(self, meta, arrays):
        """Reads what _extra_state saved; ValueError if it does not fit."""


class IBM2(IBM1):
    """fast_align's Model 2: p(NULL) = p0, else a prior favouring the diagonal,
    exp(-lambda |i/I - j/J|) normalised over source positions, lambda learned.
    alpha defaults to 0.1 (measured best on the synthetic corpus; 0 is plain EM)."""

    model2 = True

    def __init__(self, reverse=False, p0=0.08, tension=4.0, learn_tension=True, alpha=0.1):
        super().__init__(reverse, alpha)
        self.p0 = check_real("p0", p0, 0.0, 1.0, open_high=True)
        self.tension = check_real("tension", tension, 0.0, open_low=True)
        self.learn_tension = bool(learn_tension)


