"""IBM Model 1 (Brown et al. 1993) and fast_align's IBM Model 2 (Dyer et al. 2013).

The model explains each target word by one source word or NULL; EM runs in C
(OpenMP over sentence pairs, deterministic at a fixed thread count).
"""

import gc
import json
import os
import tempfile

import numpy as np

from calign import _C
from calign.wordalign.corpus import Vocabulary, check_pairs, flatten

FORMAT = "calign.wordalign/1"

# Training keeps the table index of every link, (I + 1) J int32 per pair, so
# that EM does not look the words up again at each iteration; above this many
# bytes it looks them up as it goes instead (slower, no corpus-sized array).
LINK_CACHE_BYTES = 1 << 30


def _check_alpha(alpha):
    if not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


class IBM1:
    """IBM Model 1: uniform alignment prior, EM on t(target | source).

    alpha > 0 puts a symmetric Dirichlet(alpha) prior on each row of t
    (variational Bayes, as fast_align's -v): rare words stop soaking up links."""

    model2 = False

    def __init__(self, reverse=False, alpha=0.0):
        self.reverse = bool(reverse)
        self.alpha = _check_alpha(alpha)
        self.p0, self.tension = 0.0, 0.0
        self.source_vocab = self.target_vocab = None
        self.table = None
        self.log_likelihoods = []

    def _oriented(self, pairs):
        pairs = check_pairs(pairs)
        return [(t, s) for s, t in pairs] if self.reverse else pairs

    def _settings(self):
        return (self.model2, float(self.p0), float(self.tension))

    def _start_training(self, pairs, iterations):
        """Vocabularies, flat corpus arrays, a uniform table for `pairs` and the
        cached link indices (None above LINK_CACHE_BYTES)."""
        _check_iterations(iterations)
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
        arrays, vocabs, links = self._start_training(pairs, iterations)
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
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
        arrays, flat = self._all_posteriors(pairs)
        if method == "viterbi":
            return self._links(arrays, *_best_of_blocks(arrays, flat))
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
        return cls._from_state(arrays, meta)

    def _state(self):
        """(arrays, JSON-able settings): what save() writes."""
        self._require_fit()
        meta = {"model": type(self).__name__, "reverse": self.reverse, "alpha": self.alpha,
                "p0": self.p0, "tension": self.tension,
                "source_vocab": self.source_vocab.ids, "target_vocab": self.target_vocab.ids,
                **self._extra_state()}
        return {"row_start": self.table[0], "cols": self.table[1], "prob": self.table[2]}, meta

    @classmethod
    def _from_state(cls, arrays, meta):
        model = cls(reverse=meta["reverse"])
        model.alpha = meta.get("alpha", 0.0)
        model.p0, model.tension = meta["p0"], meta["tension"]
        model.source_vocab, model.target_vocab = Vocabulary(), Vocabulary()
        model.source_vocab.ids, model.target_vocab.ids = meta["source_vocab"], meta["target_vocab"]
        model.table = (arrays["row_start"], arrays["cols"], arrays["prob"].copy())
        model._load_extra_state(meta, arrays)
        return model

    def _extra_state(self):
        """More JSON-able settings a subclass saves (the HMM's jumps)."""
        return {}

    def _load_extra_state(self, meta, arrays):
        pass


def write_npz(path, arrays, meta):
    """arrays and the JSON of meta (tagged with FORMAT) in one .npz, written
    atomically (a temporary file in the same folder, then renamed)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    os.close(fd)
    try:
        np.savez(tmp, **arrays, meta=np.frombuffer(json.dumps({"format": FORMAT, **meta}).encode(),
                                                   np.uint8))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_npz(path):
    """(arrays, meta) of a file write_npz wrote; ValueError naming the path
    for anything else."""
    try:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            arrays = {name: data[name] for name in data.files if name != "meta"}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path!r} is not a saved calign.wordalign model: {exc}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a saved calign.wordalign model")
    return arrays, meta


class IBM2(IBM1):
    """fast_align's Model 2: p(NULL) = p0, else a prior favouring the diagonal,
    exp(-lambda |i/I - j/J|) normalised over source positions, lambda learned.
    alpha defaults to 0.1 (measured best on the synthetic corpus; 0 is plain EM)."""

    model2 = True

    def __init__(self, reverse=False, p0=0.08, tension=4.0, learn_tension=True, alpha=0.1):
        super().__init__(reverse, alpha)
        if not 0.0 <= p0 < 1.0:
            raise ValueError(f"p0 must be in [0, 1), got {p0!r}")
        if not tension > 0:
            raise ValueError(f"tension must be > 0, got {tension!r}")
        self.p0, self.tension, self.learn_tension = float(p0), float(tension), bool(learn_tension)


def _check_iterations(iterations):
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")


def block_geometry(arrays):
    """For the flat [J, I + 1] posterior blocks of a corpus: (block offsets,
    row widths I + 1, target lengths J)."""
    widths = np.diff(arrays[1]) + 1
    lengths = np.diff(arrays[3])
    offsets = np.zeros(len(widths) + 1, np.int64)
    np.cumsum(widths * lengths, out=offsets[1:])
    return offsets, widths, lengths


def _best_of_blocks(arrays, flat):
    """Each target word's most probable link (none when NULL wins), as flat
    (pair, source position, target position) from the posterior blocks."""
    offsets, widths, lengths = block_geometry(arrays)
    pair = np.repeat(np.arange(len(widths)), lengths)
    row_start = offsets[pair] + (np.arange(len(pair)) - arrays[3][pair]) * widths[pair]
    best = np.zeros(len(pair), np.int64)
    # argmax over each row of varying width: scan the widest row's columns
    top = flat[row_start] if len(pair) else np.zeros(0)
    for col in range(1, int(widths.max()) if len(widths) else 0):
        inside = col < widths[pair]
        value = np.where(inside, flat[np.minimum(row_start + col, len(flat) - 1)], -1.0)
        better = value > top
        best[better], top[better] = col, value[better]
    keep = best > 0
    return pair[keep], best[keep] - 1, (np.arange(len(pair)) - arrays[3][pair])[keep]


def above_threshold(arrays, flat, threshold):
    """Every link whose posterior exceeds threshold, as flat (pair, source
    position, target position)."""
    offsets, widths, _ = block_geometry(arrays)
    at = np.flatnonzero(flat > threshold)
    pair = np.searchsorted(offsets, at, side="right") - 1
    local = at - offsets[pair]
    target, column = local // widths[pair], local % widths[pair]
    keep = column > 0
    return pair[keep], column[keep] - 1, target[keep]


def links_per_pair(pair, source, target, n_pairs, presorted=False):
    """Sorted [(source, target), ...] lists, one per pair, from flat arrays
    (already in that order when presorted)."""
    if not presorted:
        order = np.lexsort((target, source, pair))
        pair, source, target = pair[order], source[order], target[order]
    bounds = np.searchsorted(pair, np.arange(n_pairs + 1)).tolist()
    source, target = source.tolist(), target.tolist()
    # A million small tuples would trigger collections that walk the whole
    # heap (the corpus included) many times over; tuples of ints hold no
    # cycles, so the collector is paused while they are made (3x faster on
    # 100k pairs).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return [list(zip(source[a:b], target[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
    finally:
        if was_enabled:
            gc.enable()
