"""Summary-document pairs with gold links, and the annotation format of the
hand-made gold set (tests/data/textalign/gold.txt).

A pair is a block of lines:

    == <name>
    D <document sentence, tokens separated by spaces>
    ...
    S [2| the council approved ] { on Monday } [0.4| a new budget ]

An S line is one summary sentence made of fragments: `[k| words ]` words cut
from document sentence k (found where they occur there, ignoring case, which
must be one place; `[k.w| ...]` names the first word w when they occur more
than once), and new words, bare or grouped as `{ words }`.
Lines starting with '#' and blank lines are skipped."""

from typing import NamedTuple


class AlignedPair(NamedTuple):
    """A document, its summary (lists of token lists) and the gold word links:
    for each summary sentence, each word's document position (sentence, word)
    or None for a new word."""
    document: list
    summary: list
    word_links: list


def find_run(sentence, words):
    """Where words occur in sentence, ignoring case."""
    sentence, words = [t.lower() for t in sentence], [t.lower() for t in words]
    return [w for w in range(len(sentence) - len(words) + 1)
            if sentence[w:w + len(words)] == words]


def parse_summary_line(tokens, document, where):
    words, links, t = [], [], 0
    while t < len(tokens):
        opening = tokens[t]
        if opening == "{":
            close = tokens.index("}", t) if "}" in tokens[t:] else -1
            if close < 0:
                raise ValueError(f"{where}: '{{' without '}}'")
            words += tokens[t + 1:close]
            links += [None] * (close - t - 1)
        elif opening.startswith("[") and opening.endswith("|"):
            close = tokens.index("]", t) if "]" in tokens[t:] else -1
            if close < 0:
                raise ValueError(f"{where}: {opening!r} without ']'")
            run = tokens[t + 1:close]
            source = opening[1:-1].split(".")
            if not all(part.isdigit() for part in source) or len(source) > 2:
                raise ValueError(f"{where}: malformed fragment start {opening!r}")
            s = int(source[0])
            if s >= len(document) or not run:
                raise ValueError(f"{where}: fragment {opening!r} names no sentence of the "
                                 f"document or holds no words")
            found = find_run(document[s], run)
            if len(source) == 2:
                start = int(source[1])
                if start not in found:
                    raise ValueError(f"{where}: {' '.join(run)!r} is not at word {start} of "
                                     f"sentence {s}")
            elif not found:
                raise ValueError(f"{where}: {' '.join(run)!r} does not occur in sentence {s}")
            elif len(found) != 1:
                raise ValueError(f"{where}: {' '.join(run)!r} occurs {len(found)} times in "
                                 f"sentence {s}; name its first word as [{s}.w|")
            else:
                start = found[0]
            words += run
            links += [(s, start + i) for i in range(len(run))]
        elif opening.startswith("[") or opening in ("]", "}"):
            raise ValueError(f"{where}: malformed fragment mark {opening!r}")
        else:  # a bare new word
            words.append(opening)
            links.append(None)
            close = t
        t = close + 1
    if not words:
        raise ValueError(f"{where}: a summary sentence without words")
    return words, links


def read_gold(path):
    """The AlignedPairs of a gold file; a malformed line raises ValueError
    naming the file and line number."""
    pairs, name, document, summary, links = [], None, [], [], []

    def finish(where):
        if name is None:
            return
        if not document or not summary:
            raise ValueError(f"{where}: pair {name!r} needs D and S lines")
        pairs.append(AlignedPair(document, summary, links))

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            where = f"{path}:{number}"
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            kind, _, rest = line.partition(" ")
            if kind == "==":
                finish(where)
                name, document, summary, links = rest, [], [], []
            elif kind == "D" and name is not None and not summary:
                document.append(rest.split())
            elif kind == "S" and name is not None and document:
                words, word_links = parse_summary_line(rest.split(), document, where)
                summary.append(words)
                links.append(word_links)
            else:
                raise ValueError(f"{where}: expected '== name', then D lines, then S lines")
    finish(f"{path}:end")
    return pairs
