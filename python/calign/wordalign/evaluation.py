"""Alignment quality (Och & Ney 2003) and Pharaoh `i-j` files."""


def _totals(predicted, sure, possible):
    if not (len(predicted) == len(sure) == len(possible)):
        raise ValueError("predicted, sure and possible must hold one link list per pair")
    a = s = p = a_and_s = a_and_p = 0
    for pred, sure_links, possible_links in zip(predicted, sure, possible):
        pred, sure_links = set(map(tuple, pred)), set(map(tuple, sure_links))
        possible_links = set(map(tuple, possible_links)) | sure_links  # S is a subset of P
        a += len(pred)
        s += len(sure_links)
        p += len(possible_links)
        a_and_s += len(pred & sure_links)
        a_and_p += len(pred & possible_links)
    return a, s, a_and_s, a_and_p


def aer(predicted, sure, possible):
    """Alignment error rate 1 - (|A∩S| + |A∩P|) / (|A| + |S|), over a corpus."""
    a, s, a_and_s, a_and_p = _totals(predicted, sure, possible)
    return 1.0 - (a_and_s + a_and_p) / max(1, a + s)


def precision(predicted, sure, possible):
    """|A ∩ P| / |A| over a corpus (P includes S)."""
    a, _, _, a_and_p = _totals(predicted, sure, possible)
    return a_and_p / max(1, a)


def recall(predicted, sure, possible):
    """|A ∩ S| / |S| over a corpus."""
    _, s, a_and_s, _ = _totals(predicted, sure, possible)
    return a_and_s / max(1, s)


def f1(predicted, sure, possible):
    """The harmonic mean of precision and recall."""
    p, r = precision(predicted, sure, possible), recall(predicted, sure, possible)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def format_pharaoh(links):
    """Links as one Pharaoh line: "i-j i-j ..."."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


def read_pharaoh(path):
    """One link list per line (`i-j i-j ...`; `i?j` marks a possible-only link
    and is read as a link too); blank lines are empty alignments. A malformed
    token raises naming the line number."""
    result = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            links = []
            for token in line.split():
                sep = "-" if "-" in token else "?"
                parts = token.split(sep)
                if len(parts) != 2 or not all(p.isdigit() for p in parts):
                    raise ValueError(f"{path}:{number}: malformed link {token!r} "
                                     "(expected i-j)")
                links.append((int(parts[0]), int(parts[1])))
            result.append(links)
    return result


def write_pharaoh(path, alignments):
    """One Pharaoh line per pair's links."""
    with open(path, "w", encoding="utf-8") as f:
        for links in alignments:
            f.write(format_pharaoh(links) + "\n")
