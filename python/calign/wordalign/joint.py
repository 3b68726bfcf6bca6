"""Both directions of the HMM aligner at once.

JointHMM trains a source->target and a target->source HMM together and
aligns with both:

- alignment by agreement (Liang, Taskar & Klein 2006): each EM iteration runs
  both HMMs on every pair and counts each link in both translation tables with
  the product of the two directions' posteriors;
- fertility (Zhao & Gildea 2010's fertility HMM, as eflomal's model 3,
  Ostling & Tiedemann 2016): when aligning, a Gibbs sampler over each
  direction's links, started from the HMM's Viterbi links, multiplies the HMM
  by n(phi | word), how many words a word takes, re-estimating n from the
  links after every sweep (stochastic EM on the pairs being aligned, the
  HMM's t and jumps fixed); each link's frequency over the sweeps after
  burn-in is its posterior. n is learned on the pairs given to align(), as
  eflomal learns on the corpus it aligns: align a corpus at once, not pair by
  pair;
- soft union (the Berkeley Aligner's combination): a link where the average
  of the two directions' posteriors exceeds the threshold.

On the synthetic benchmark corpus each part pays: see README, Word alignment.
"""

import numpy as np

from calign import _C, checks
from calign.wordalign.corpus import (Vocabulary, check_pairs, flatten, shard_of_this_rank,
                                     swapped, with_unseen_sources)
from calign.wordalign.hmm import HMM
from calign.wordalign.ibm import LINK_CACHE_BYTES
from calign.wordalign.links import above_threshold, links_per_pair
from calign.wordalign.saved import read_npz, write_npz
from calign.wordalign.symmetrize import METHODS, symmetrize

ALIGN_METHODS = ("soft-union", "forward", "reverse") + METHODS
MAX_FERTILITY = 64  # the widest fertility class the sampler takes
SEED_MAX = 2**64 - 2  # the reverse direction samples with seed + 1, a 64-bit seed


class JointHMM:
    """A forward (source->target) and a reverse HMM, trained and used together.

    p0, max_jump, alpha, ibm1_iterations: as HMM, for both directions.
    agreement: train the two HMMs by agreement (False: independently).
    fertility: align with the fertility sampler (False: with the HMMs'
        forward-backward posteriors).
    burn_in, samples: sweeps of the sampler before counting links, and
        counted.
    max_fertility: fertilities from this up share one class.
    fertility_prior: Dirichlet pseudo-counts pulling each word's fertility
        distribution towards the corpus-wide one.
    seed: of the sampler's random streams (results do not depend on the
        thread count).
    threshold: of the soft union.

    The defaults of burn_in, samples and threshold were chosen on a synthetic
    corpus of another seed (50k pairs, seed 1) than the benchmark's.
    """

    def __init__(self, p0=0.1, max_jump=7, alpha=0.1, ibm1_iterations=5, agreement=True,
                 fertility=True, burn_in=5, samples=10, max_fertility=3, fertility_prior=1.0,
                 seed=0, threshold=0.45):
        self.forward = HMM(False, p0, max_jump, ibm1_iterations, alpha)
        self.reverse = HMM(True, p0, max_jump, ibm1_iterations, alpha)
        self.agreement = bool(agreement)
        self.fertility = bool(fertility)
        self.burn_in = checks.integer("burn_in", burn_in, 0, checks.C_INT_MAX)
        self.samples = checks.integer("samples", samples, 1, checks.C_INT_MAX)
        # the sampler counts its sweeps in a C int
        checks.require(self.burn_in + self.samples <= checks.C_INT_MAX, "burn_in + samples",
                       self.burn_in + self.samples, f"at most {checks.C_INT_MAX}")
        self.max_fertility = checks.integer("max_fertility", max_fertility, 1, MAX_FERTILITY)
        self.fertility_prior = checks.real("fertility_prior", fertility_prior, 0.0, open_low=True)
        self.seed = checks.integer("seed", seed, 0, SEED_MAX)
        self.threshold = checks.real("threshold", threshold, 0.0, 1.0, open_high=True)
        self.log_likelihoods = []  # per HMM iteration, both directions' summed

    # ---- training ----------------------------------------------------------------------------

    def fit(self, pairs, iterations=5):
        """IBM1 (each direction), then `iterations` HMM EM iterations (by
        agreement unless agreement=False). Several MPI ranks train as one
        process, each on its block of the pairs (see IBM1.fit)."""
        iterations = checks.integer("iterations", iterations, 1, checks.C_INT_MAX)
        pairs = check_pairs(pairs)
        source_vocab, target_vocab = Vocabulary(), Vocabulary()
        arrays = flatten(pairs, source_vocab, target_vocab)
        for model, oriented, (sv, tv) in ((self.forward, arrays, (source_vocab, target_vocab)),
                                          (self.reverse, swapped(arrays),
                                           (target_vocab, source_vocab))):
            model.source_vocab, model.target_vocab = sv, tv
            _C.wa_start(model.c_model, *oriented, source_vocabulary_size=len(sv),
                        target_vocabulary_size=len(tv))
        shard, sum_in_place = shard_of_this_rank(arrays)
        self.forward.log_likelihoods, self.reverse.log_likelihoods, self.log_likelihoods = \
            _C.wa_train_joint(self.forward.c_model, self.reverse.c_model, *shard,
                              iterations=iterations, ibm1_iterations=self.forward.ibm1_iterations,
                              agreement=self.agreement, link_cache_bytes=LINK_CACHE_BYTES,
                              sum_in_place=sum_in_place)
        return self

    def _require_fit(self):
        if self.forward.source_vocab is None:
            raise ValueError("the model is not trained: call fit() or load() first")

    # ---- aligning ----------------------------------------------------------------------------

    def _directional_posteriors(self, pairs):
        """(forward arrays, forward posteriors, reverse posteriors) of `pairs`,
        each direction's laid out as HMM's ([J, I + 1] / [I, J + 1] blocks)."""
        self._require_fit()
        pairs = check_pairs(pairs)
        arrays = flatten(pairs, self.forward.source_vocab, self.forward.target_vocab, grow=False)
        posts = []
        for d, (model, oriented) in enumerate(((self.forward, arrays),
                                               (self.reverse, swapped(arrays)))):
            oriented = with_unseen_sources(oriented, len(model.source_vocab))
            if not self.fertility:
                posts.append(_C.wa_posteriors(model.c_model, *oriented))
                continue
            post, _ = _C.wa_fertility_sample(
                model.c_model, *oriented, max_fertility=self.max_fertility,
                fertility_prior=self.fertility_prior, burn_in=self.burn_in, samples=self.samples,
                seed=self.seed + d, link_cache_bytes=LINK_CACHE_BYTES)
            posts.append(post)
        return arrays, posts[0], posts[1]

    def posteriors(self, pair):
        """[source length, target length] average of the two directions' link
        posteriors (the soft union's matrix). With fertility, n is learned on
        this pair alone: for a corpus, align() it whole."""
        arrays, forward, reverse = self._directional_posteriors([pair])
        I, J = int(arrays[1][1]), int(arrays[3][1])
        return (forward.reshape(J, I + 1)[:, 1:].T + reverse.reshape(I, J + 1)[:, 1:]) / 2

    def align(self, pairs, method="soft-union", threshold=None):
        """Links [(i, j), ...] per pair (i source, j target positions).

        method "soft-union": where the average of the two directions'
        posteriors exceeds threshold (default: the model's); "forward" /
        "reverse": one direction's links with posterior > 0.5; or one of
        symmetrize's methods applied to those two."""
        if method not in ALIGN_METHODS:
            raise ValueError(f"method must be one of {list(ALIGN_METHODS)}, got {method!r}")
        threshold = self.threshold if threshold is None else \
            checks.real("threshold", threshold, 0.0, 1.0, open_high=True)
        arrays, forward, reverse = self._directional_posteriors(pairs)
        n_pairs = len(arrays[1]) - 1
        if method == "soft-union":
            keep = _C.wa_soft_union(arrays[1], arrays[3], forward, reverse, threshold)
            # the [I, J] grids laid pair after pair: already in (pair, i, j) order
            return links_per_pair(*_grid_links(arrays, np.flatnonzero(keep)), n_pairs,
                                  presorted=True)
        f = links_per_pair(*above_threshold(arrays, forward, 0.5), n_pairs) \
            if method != "reverse" else None
        if method == "forward":
            return f
        pair, source, target = above_threshold(swapped(arrays), reverse, 0.5)
        r = links_per_pair(pair, target, source, n_pairs)
        if method == "reverse":
            return r
        return [symmetrize(a, b, method) for a, b in zip(f, r)]

    # ---- files -------------------------------------------------------------------------------

    def save(self, path):
        """Both directions and the settings in one .npz, written atomically."""
        self._require_fit()
        arrays, meta = {}, {"model": "JointHMM", "settings": self._settings()}
        for name, model in (("forward", self.forward), ("reverse", self.reverse)):
            model_arrays, meta[name] = model.saved_state()
            arrays.update({f"{name}_{key}": value for key, value in model_arrays.items()})
        write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path):
        arrays, meta = read_npz(path)
        if meta.get("model") != "JointHMM":
            raise ValueError(f"{path!r} is not a saved JointHMM model")
        missing = [key for key in ("settings", "forward", "reverse") if key not in meta]
        if missing:
            raise ValueError(f"{path!r} is not a saved JointHMM model: its metadata lack "
                             f"{', '.join(map(repr, missing))}")
        if not isinstance(meta["settings"], dict):
            raise ValueError(f"{path!r} is not a saved JointHMM model: its 'settings' are not "
                             f"a JSON object")
        try:
            model = cls(**meta["settings"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path!r} is not a saved JointHMM model: its 'settings': "
                             f"{exc}") from None
        for name in ("forward", "reverse"):
            state = {key[len(name) + 1:]: value for key, value in arrays.items()
                     if key.startswith(name + "_")}
            setattr(model, name, HMM.from_saved_state(state, meta[name], path, prefix=name + "_"))
        return model

    def _settings(self):
        return {"p0": self.forward.p0, "max_jump": self.forward.max_jump,
                "alpha": self.forward.alpha, "ibm1_iterations": self.forward.ibm1_iterations,
                "agreement": self.agreement, "fertility": self.fertility,
                "burn_in": self.burn_in, "samples": self.samples,
                "max_fertility": self.max_fertility, "fertility_prior": self.fertility_prior,
                "seed": self.seed, "threshold": self.threshold}


def _grid_links(arrays, at):
    """Positions in the pairs' [I, J] grids laid end to end -> (pair, i, j)."""
    I, J = np.diff(arrays[1]), np.diff(arrays[3])
    offsets = np.zeros(len(I) + 1, np.int64)
    np.cumsum(I * J, out=offsets[1:])
    pair = np.searchsorted(offsets, at, side="right") - 1
    local = at - offsets[pair]
    return pair, local // J[pair], local % J[pair]
