"""A seeded synthetic parallel corpus with gold links, for tests and benchmarks.

Source words follow a Zipfian law. A random bilingual lexicon maps each source
word to one target word (80%), to two (10%: the first link sure, the second
possible) or to nothing (10%). Target sentences are built unit by unit, with
local reordering (adjacent units swapped with probability 0.2) and inserted
unaligned function words (probability 0.1 per unit)."""

import numpy as np


def synthetic_corpus(n_pairs, seed=0, vocab_size=2000, min_length=3, max_length=15,
                     function_words=20):
    """Returns (pairs, sure, possible): token-list pairs and per-pair link lists."""
    if n_pairs < 1:
        raise ValueError("n_pairs must be >= 1")
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
    zipf /= zipf.sum()
    kinds = rng.choice(3, size=vocab_size, p=[0.8, 0.1, 0.1])  # 1-1, 1-2, 1-0
    pairs, sure, possible = [], [], []
    for _ in range(n_pairs):
        length = int(rng.integers(min_length, max_length + 1))
        words = rng.choice(vocab_size, size=length, p=zipf)
        units = []  # (source position, target tokens, link kinds)
        for i, w in enumerate(words):
            if kinds[w] == 0:
                units.append((i, [f"t{w}"], ["S"]))
            elif kinds[w] == 1:
                units.append((i, [f"t{w}a", f"t{w}b"], ["S", "P"]))
            else:
                units.append((i, [], []))
        k = 0
        while k + 1 < len(units):  # local reordering
            if rng.random() < 0.2:
                units[k], units[k + 1] = units[k + 1], units[k]
                k += 2
            else:
                k += 1
        target, pair_sure, pair_possible = [], [], []
        for i, tokens, link_kinds in units:
            if rng.random() < 0.1:
                target.append(f"f{int(rng.integers(function_words))}")
            for token, kind in zip(tokens, link_kinds):
                (pair_sure if kind == "S" else pair_possible).append((i, len(target)))
                target.append(token)
        pairs.append(([f"s{w}" for w in words], target))
        sure.append(sorted(pair_sure))
        possible.append(sorted(pair_sure + pair_possible))
    return pairs, sure, possible
