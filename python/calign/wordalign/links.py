"""Links from flat posterior blocks: each target word's best link, or every
link above a threshold, as sorted lists per pair."""

import gc

import numpy as np

def block_geometry(arrays):
    """For the flat [J, I + 1] posterior blocks of a corpus: (block offsets,
    row widths I + 1, target lengths J)."""
    widths = np.diff(arrays[1]) + 1
    lengths = np.diff(arrays[3])
    offsets = np.zeros(len(widths) + 1, np.int64)
    np.cumsum(widths * lengths, out=offsets[1:])
    return offsets, widths, lengths


def best_of_blocks(arrays, flat):
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
