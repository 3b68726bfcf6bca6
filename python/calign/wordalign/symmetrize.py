"""Symmetrisation of two directional alignments (Och & Ney 2003; Koehn et al.
2003's grow-diag-final and -and, as in Moses' symal)."""

NEIGHBOURS = [(-1, 0), (0, -1), (1, 0), (0, 1)]
DIAGONAL_NEIGHBOURS = NEIGHBOURS + [(-1, -1), (-1, 1), (1, -1), (1, 1)]
METHODS = ("intersect", "union", "grow-diag", "grow-diag-final", "grow-diag-final-and")


def symmetrize(forward, reverse, method="grow-diag-final-and"):
    """Links of one sentence pair from a source->target alignment `forward` and
    a target->source one `reverse`, both given as (source i, target j) links."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    forward, reverse = set(map(tuple, forward)), set(map(tuple, reverse))
    intersection, union = forward & reverse, forward | reverse
    if method == "intersect":
        return sorted(intersection)
    if method == "union":
        return sorted(union)
    links = set(intersection)
    aligned_src = {i for i, _ in links}
    aligned_tgt = {j for _, j in links}

    def add(i, j):
        links.add((i, j))
        aligned_src.add(i)
        aligned_tgt.add(j)

    # grow-diag: repeatedly add union links next to current links whose source
    # or target word is still unaligned
    grown = True
    while grown:
        grown = False
        for i, j in sorted(links):
            for di, dj in DIAGONAL_NEIGHBOURS:
                candidate = (i + di, j + dj)
                if candidate in union and candidate not in links and (
                        candidate[0] not in aligned_src or candidate[1] not in aligned_tgt):
                    add(*candidate)
                    grown = True
    if method == "grow-diag":
        return sorted(links)
    # final(-and): add remaining directional links whose words are unaligned
    # (either word for final, both for final-and)
    for direction in (forward, reverse):
        for i, j in sorted(direction):
            if (i, j) in links:
                continue
            if method == "grow-diag-final-and":
                ok = i not in aligned_src and j not in aligned_tgt
            else:
                ok = i not in aligned_src or j not in aligned_tgt
            if ok:
                add(i, j)
    return sorted(links)
