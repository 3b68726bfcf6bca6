"""Parallel corpora as flat id arrays for the C kernels."""

from itertools import chain, repeat

import numpy as np

from calign import distributed


def read_fast_align(path):
    """Sentence pairs from a fast_align-format file: `source ||| target` a line
    (blank lines skipped). A line without `|||` raises naming its number."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if "|||" not in line:
                raise ValueError(f"{path}:{number}: a line must read 'source ||| target'")
            source, target = line.split("|||", 1)
            pairs.append((source.split(), target.split()))
    return pairs


def check_pairs(pairs):
    """A list of (source tokens, target tokens) with clear errors."""
    if isinstance(pairs, str):
        pairs = read_fast_align(pairs)
    pairs = list(pairs)
    if not pairs:
        raise ValueError("the corpus is empty")
    if set(map(type, pairs)) <= {tuple, list} and set(map(len, pairs)) == {2}:
        sides = list(chain.from_iterable(pairs))
        # the common case in one pass of C loops; the slow loop below only
        # runs to find and name the bad pair
        if set(map(type, sides)) <= {tuple, list} and \
                set(map(type, chain.from_iterable(sides))) <= {str}:
            return pairs
    for k, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"pair {k} must be (source tokens, target tokens)")
        for side, tokens in zip(("source", "target"), pair):
            if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
                raise TypeError(f"pair {k}: the {side} side must be a list of string tokens")
    return pairs


class Vocabulary:
    """Token <-> id; id 0 is reserved (NULL on the source side)."""

    def __init__(self, tokens=()):
        self.ids = {}
        for token in tokens:
            self.add(token)

    def add(self, token):
        if token not in self.ids:
            self.ids[token] = len(self.ids) + 1
        return self.ids[token]

    def __len__(self):
        return len(self.ids) + 1


def flatten(pairs, source_vocab, target_vocab, grow=True):
    """(source ids, source offsets, target ids, target offsets); unknown tokens
    get new ids (in order of first appearance) when grow, else 0."""
    arrays = []
    for side, vocab in ((0, source_vocab), (1, target_vocab)):
        tokens = list(chain.from_iterable(pair[side] for pair in pairs))
        if grow:
            for token in dict.fromkeys(tokens):
                vocab.add(token)
        ids = np.fromiter(map(vocab.ids.get, tokens, repeat(0)), np.int32, len(tokens))
        offsets = np.zeros(len(pairs) + 1, np.int64)
        np.cumsum(np.fromiter((len(pair[side]) for pair in pairs), np.int64, len(pairs)),
                  out=offsets[1:])
        arrays += [ids, offsets]
    return tuple(arrays)


def swapped(arrays):
    """The corpus arrays of the other direction: the sides exchanged."""
    return arrays[2], arrays[3], arrays[0], arrays[1]


def with_unseen_sources(arrays, unseen_id):
    """The arrays of flatten(grow=False) as decoding takes them: source words
    never seen in training (id 0 there, the id of NULL) get unseen_id, the
    vocabulary's size, whose row of the model's table is empty. (Unseen
    target words keep id 0, which no table row holds.)"""
    source_ids = np.where(arrays[0] == 0, unseen_id, arrays[0]).astype(np.int32)
    return (source_ids,) + tuple(arrays[1:])


def pair_block(arrays, block):
    """The corpus arrays of the pairs in `block` (a range of pair indices
    with step 1), offsets from 0."""
    source_ids, source_offsets, target_ids, target_offsets = arrays
    first, end = block.start, block.stop
    return (source_ids[source_offsets[first]:source_offsets[end]],
            source_offsets[first:end + 1] - source_offsets[first],
            target_ids[target_offsets[first]:target_offsets[end]],
            target_offsets[first:end + 1] - target_offsets[first])


def shard_of_this_rank(arrays):
    """(the corpus arrays this process trains on, the sum_in_place wa_train
    and wa_train_joint sum EM's statistics with): under mpirun with several
    ranks (calign.distributed), this rank's contiguous block of the pairs and
    World.sum_in_place; in one process the whole corpus and None."""
    world = distributed.world()
    if not world.distributed:
        return arrays, None
    return pair_block(arrays, world.block(len(arrays[1]) - 1)), world.sum_in_place
