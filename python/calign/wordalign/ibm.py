"""IBM Model 1 (Brown et al. 1993) and fast_align's IBM Model 2 (Dyer et al. 2013).

The model explains each target word by one source word or NULL; EM runs in C
(OpenMP over sentence pairs, deterministic at a fixed thread count).
"""

import gc
import json
import numbers
import os
import tempfile
import zipfile
import zlib

import numpy as np

from calign import _C
from calign.wordalign.corpus import Vocabulary, check_pairs, flatten

FORMAT = "calign.wordalign/1"

# Training keeps the table index of every link, (I + 1) J int32 per pair, so
# that EM does not look the words up again at each iteration; above this many
# bytes it looks them up as it goes instead (slower, no corpus-sized array).
LINK_CACHE_BYTES = 1 << 30


# Iteration, sweep and jump counts reach the C kernels as C ints.
INT_MAX = 2**31 - 1

# alpha > 0's update (wa_table_update) takes digamma(total + n_e alpha), n_e a
# table row's support: at most 2**31 - 1 (link indices are int32), and the
# total count at most the corpus's target words. Up to this alpha, n_e alpha
# stays below half the largest double, so the sum cannot overflow to inf
# (alpha = 1e308 did, and EM then produced NaN). An alpha far above the counts
# makes every row nearly uniform anyway.
ALPHA_MAX = float(np.finfo(np.float64).max / 2**32)


def check_integer(name, value, low, high=INT_MAX, what=None):
    """int(value) for a Python or NumPy integer (not a bool) in [low, high];
    else a ValueError naming `name` and the allowed values."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or \
            not low <= value <= high:
        raise ValueError(f"{name} must be {what or f'an integer in [{low}, {high}]'}, "
                         f"got {value!r}")
    return int(value)


def check_real(name, value, low=None, high=None, open_low=False, open_high=False, note=""):
    """float(value) for a finite Python or NumPy real (not a bool) within the
    bounds (None: unbounded); else a ValueError naming `name` and the range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        try:
            number = float(value)
        except (OverflowError, ValueError):
            number = float("nan")
        ok = bool(np.isfinite(number)) and \
            (low is None or (number > low if open_low else number >= low)) and \
            (high is None or (number < high if open_high else number <= high))
    if not ok:
        if high is None:
            allowed = f"a finite number {'>' if open_low else '>='} {low:g}"
        else:
            allowed = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be {allowed}{note}, got {value!r}")
    return number


def _check_alpha(alpha):
    return check_real("alpha", alpha, 0.0, ALPHA_MAX,
                      note=" (larger values overflow the variational-Bayes update)")


def check_threshold(threshold, open_high=False):
    return check_real("threshold", threshold, 0.0, 1.0, open_high=open_high)


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
        iterations = _check_iterations(iterations)
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
        threshold = check_threshold(threshold)
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
            model.alpha = _check_alpha(meta.get("alpha", 0.0))
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


def check_state(path, model, arrays, meta, prefix, keys):
    """That a saved model's meta has `keys` and its table arrays fit its
    vocabularies; else ValueError "<path> is not a saved <model> model: ..."."""
    def fail(why):
        raise ValueError(f"{path!r} is not a saved {model} model: {why}")

    where = f"{prefix[:-1]!r} " if prefix else ""
    if not isinstance(meta, dict):
        fail(f"its {where}metadata are not a JSON object")
    missing = [key for key in keys if key not in meta]
    if missing:
        fail(f"its {where}metadata lack {', '.join(map(repr, missing))}")
    missing = [prefix + name for name in ("row_start", "cols", "prob") if name not in arrays]
    if missing:
        fail(f"it lacks the array{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}")
    for key in ("source_vocab", "target_vocab"):
        ids = meta[key]
        if not isinstance(ids, dict) or not all(type(i) is int for i in ids.values()) or \
                sorted(ids.values()) != list(range(1, len(ids) + 1)):
            fail(f"its {where}{key} is not a map of tokens to the ids 1, 2, ...")
    row_start, cols, prob = arrays["row_start"], arrays["cols"], arrays["prob"]
    for name, array, dtype in (("row_start", row_start, np.int64), ("cols", cols, np.int32),
                               ("prob", prob, np.float64)):
        if array.dtype != dtype or array.ndim != 1:
            fail(f"the array {prefix + name!r} is not a {np.dtype(dtype).name} vector")
    if len(row_start) != len(meta["source_vocab"]) + 2 or len(prob) != len(cols) or \
            row_start[0] != 0 or row_start[-1] != len(cols):
        fail(f"the arrays {prefix}row_start, {prefix}cols and {prefix}prob do not fit its "
             f"vocabularies")


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
        data = np.load(path)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with data:
            if "meta" not in data.files:
                raise ValueError("the archive has no 'meta' entry")
            meta = json.loads(data["meta"].tobytes().decode())
            arrays = {name: data[name] for name in data.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # a truncated or damaged archive raises BadZipFile, zlib.error or EOFError
        raise ValueError(f"{path!r} is not a saved calign.wordalign model: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a saved calign.wordalign model")
    return arrays, meta


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


def _check_iterations(iterations):
    return check_integer("iterations", iterations, 1,
                         what=f"a positive integer (at most {INT_MAX})")


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
