"""Parallel corpora as flat id arrays for the C kernels."""

import numpy as np


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
    get new ids when grow, else 0 on the target side (never co-occurred)."""
    src, tgt, src_off, tgt_off = [], [], [0], [0]
    for source, target in pairs:
        for token in source:
            src.append(source_vocab.add(token) if grow else source_vocab.ids.get(token, 0))
        for token in target:
            tgt.append(target_vocab.add(token) if grow else target_vocab.ids.get(token, 0))
        src_off.append(len(src))
        tgt_off.append(len(tgt))
    return (np.asarray(src, np.int32), np.asarray(src_off, np.int64),
            np.asarray(tgt, np.int32), np.asarray(tgt_off, np.int64))
