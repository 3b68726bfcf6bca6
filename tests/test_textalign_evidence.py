"""Evidence for calign.textalign: every method's F1 on the synthetic
cut-and-paste corpus and on the hand-made gold set (tests/data/textalign),
printed as tables (pytest -s shows them); the HMM decomposition must beat
the word-overlap baseline on word links."""

import pathlib

import pytest

from calign import textalign as ta
from calign.textalign.evaluation import compare_methods, format_table

GOLD = pathlib.Path(__file__).parent / "data" / "textalign" / "gold.txt"


@pytest.fixture(scope="module")
def gold_pairs():
    return ta.read_gold(GOLD)


def test_synthetic_corpus_f1_table():
    result = compare_methods(ta.synthetic_corpus(120, seed=1))
    print("\nsynthetic corpus, 120 pairs (seed 1)\n" + format_table(result))
    jing, overlap = result["jing"]["words"]["f1"], result["overlap"]["words"]["f1"]
    assert jing > overlap + 0.2
    assert result["phrase_hmm"]["words"]["f1"] > overlap + 0.2
    assert result["jing"]["sentences"]["f1"] > result["overlap"]["sentences"]["f1"]
    for method in ("banko", "marcu"):
        assert result[method]["extract"]["precision"] > 0.8


def test_gold_set_f1_table(gold_pairs):
    result = compare_methods(gold_pairs)
    print(f"\nhand-made gold set, {len(gold_pairs)} pairs\n" + format_table(result))
    assert result["jing"]["words"]["f1"] > result["overlap"]["words"]["f1"] + 0.1
    assert result["jing"]["words"]["recall"] > 0.95
    assert result["banko"]["sentences"]["precision"] > 0.9


def test_gold_set_is_what_the_project_needs(gold_pairs):
    assert len(gold_pairs) >= 20
    for pair in gold_pairs:
        assert 3 <= len(pair.document) <= 8 and pair.summary
        for words, links in zip(pair.summary, pair.word_links):
            assert len(words) == len(links) and any(links)
            for word, link in zip(words, links):
                if link is not None:
                    assert pair.document[link[0]][link[1]].lower() == word.lower()


def test_gold_fragments_are_found_or_refused_with_the_line(tmp_path):
    path = tmp_path / "gold.txt"
    path.write_text("== one\nD the cat saw the cat .\nS [0.3| the cat ] { ran } .\n")
    pair, = ta.read_gold(path)
    assert pair.summary == [["the", "cat", "ran", "."]]
    assert pair.word_links == [[(0, 3), (0, 4), None, None]]
    for line, message in [("S [0| the cat ]", "occurs 2 times"),
                          ("S [0| dog ]", "does not occur"),
                          ("S [0.1| the cat ]", "is not at word 1"),
                          ("S [4| cat ]", "names no sentence"),
                          ("S [0| the cat", "without"),
                          ("S [x| cat ]", "malformed fragment start")]:
        path.write_text(f"== one\nD the cat saw the cat .\n{line}\n")
        with pytest.raises(ValueError, match=f"gold.txt:3: .*{message}"):
            ta.read_gold(path)
    path.write_text("D no header\n")
    with pytest.raises(ValueError, match="gold.txt:1: expected"):
        ta.read_gold(path)
    path.write_text("== empty\nD a b\n")
    with pytest.raises(ValueError, match="needs D and S lines"):
        ta.read_gold(path)
