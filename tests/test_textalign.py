"""calign.textalign: Jing & McKeown's Viterbi and the phrase HMM against
independent references (tests/reference/textalign_numpy.py), the similarity
methods against hand-worked cases, and bad input."""

import math

import numpy as np
import pytest

from calign import _C
from calign import textalign as ta
from calign.textalign.decompose import DEFAULT_RULES
from reference import textalign_numpy as ref

DOC = [s.split() for s in ["the city council met on monday .",
                           "it approved a new budget for the schools .",
                           "the mayor said the budget was fair ."]]
SUMMARY = "the council approved a new budget , the mayor said .".split()


def random_case(rng, n_summary, n_sentences, vocab):
    document = [[f"t{int(rng.integers(vocab))}" for _ in range(int(rng.integers(2, 6)))]
                for _ in range(n_sentences)]
    summary = [f"t{int(rng.integers(vocab + 2))}" for _ in range(n_summary)]
    return summary, document


# ---- Jing & McKeown ---------------------------------------------------------------

def test_hand_worked_decomposition():
    positions = ta.decompose(SUMMARY, DOC)
    # "the council" cannot be adjacent: "the" is kept at (0, 0) before "council" (0, 2)
    assert positions == [(0, 0), (0, 2), (1, 1), (1, 2), (1, 3), (1, 4), None, (2, 0), (2, 1),
                         (2, 2), (2, 7)]
    assert ta.fragments(positions) == [
        ta.Fragment(0, 1, 0, 0), ta.Fragment(1, 2, 0, 2), ta.Fragment(2, 6, 1, 1),
        ta.Fragment(6, 7, None, None), ta.Fragment(7, 10, 2, 0), ta.Fragment(10, 11, 2, 7)]


def test_new_word_between_adjacent_words_keeps_the_chain():
    document = [["a", "b", "c"], ["q"], ["r"], ["x"]]
    # "x" exists three sentences away: p_far twice (0.0025) loses to a new
    # word between b and c, which keeps b -> c adjacent (p_new p_adjacent, 0.1)
    assert ta.decompose(["a", "b", "x", "c"], document) == [(0, 0), (0, 1), None, (0, 2)]
    assert ta.decompose(["zz", "yy"], document) == [None, None]


def test_case_is_ignored_unless_asked():
    document = [["The", "Cat", "sat"]]
    assert ta.decompose(["the", "cat"], document) == [(0, 0), (0, 1)]
    assert ta.decompose(["the", "cat"], document, lowercase=False) == [None, None]


@pytest.mark.parametrize("seed", range(40))
def test_viterbi_equals_brute_force_on_small_cases(seed):
    rng = np.random.default_rng(seed)
    summary, document = random_case(rng, int(rng.integers(1, 6)), int(rng.integers(1, 4)), 4)
    settings = dict(DEFAULT_RULES)
    if seed % 2:  # other constants, and a near that matters
        settings.update(p_adjacent=0.9, p_same_later=0.6, p_same_earlier=0.25, p_near_later=0.2,
                        p_near_earlier=0.07, p_far=0.01, near=2, p_new=0.03)
    rules = {k: v for k, v in settings.items()}
    got = ta.decompose(summary, document, **rules)
    best, path, n_best = ref.brute_force(settings, summary, document)
    assert ref.path_score(settings, got) == pytest.approx(best, abs=1e-12)
    if n_best == 1:  # a unique best path: the same path
        assert got == path


@pytest.mark.parametrize("seed", range(20))
def test_viterbi_equals_python_viterbi_exactly(seed):
    rng = np.random.default_rng(100 + seed)
    summary, document = random_case(rng, int(rng.integers(5, 25)), int(rng.integers(2, 7)), 6)
    assert ta.decompose(summary, document) == ref.viterbi(DEFAULT_RULES, summary, document)[1]


def test_decompose_all_is_decompose_per_pair_and_thread_independent(calign_threads):
    pairs = [(s, p.document) for p in ta.synthetic_corpus(30, seed=5) for s in p.summary]
    calign_threads(1)
    one = ta.decompose_all(pairs)
    calign_threads(2)
    assert ta.decompose_all(pairs) == one
    assert [ta.decompose(*pair) for pair in pairs[:10]] == one[:10]


def test_fragments_group_runs_and_new_words():
    positions = [None, None, (1, 3), (1, 4), (1, 6), (0, 7), (0, 8), None]
    assert ta.fragments(positions) == [
        ta.Fragment(0, 2, None, None), ta.Fragment(2, 4, 1, 3), ta.Fragment(4, 5, 1, 6),
        ta.Fragment(5, 7, 0, 7), ta.Fragment(7, 8, None, None)]
    assert ta.fragments([]) == []


def test_overlap_baseline_takes_the_first_occurrence():
    assert ta.align_by_overlap(["the", "mayor", "zz"], DOC) == [(0, 0), (2, 1), None]


# ---- the phrase HMM ---------------------------------------------------------------

TINY = [(["a", "b", "z"], [["a", "b"], ["c", "a"]]),
        (["c", "a", "b"], [["b", "c", "a"]]),
        (["q"], [["a"], ["b"]])]


def reference_pairs(model, pairs):
    ids = model.vocabulary
    out = []
    for summary, document in pairs:
        s = [ids.get(t, 0) for t in summary]
        d = [ids.get(t, 1) for sent in document for t in sent]
        sent = [k for k, sentence in enumerate(document) for _ in sentence]
        out.append((s, d, sent))
    return out


def model_dict(model):
    return {"p_null": model.p_null, "identity": model.identity, "length": model.length.copy(),
            "jump": model.jump.copy(), "rewrite": model.rewrite.copy(),
            "generate": model.generate.copy()}


@pytest.mark.parametrize("max_length,max_jump", [(1, 0), (2, 1), (3, 2)])
def test_phrase_em_equals_enumeration(max_length, max_jump):
    model = ta.PhraseHMM(max_phrase_length=max_length, max_jump=max_jump, smoothing=0.05)
    model.fit(TINY, iterations=0)
    pairs = reference_pairs(model, TINY)
    for iteration in range(3):
        expected, loglik = ref.phrase_em_update(model_dict(model), pairs, 0.05)
        p_null, identity, lls = _C.ta_phrase_em(
            *model._arrays(TINY, grow=False), **model._model(), iterations=1, smoothing=0.05)
        model.p_null, model.identity = p_null, identity
        assert lls[0] == pytest.approx(loglik, rel=1e-12)
        for key, value in expected.items():
            np.testing.assert_allclose(getattr(model, key), value, rtol=1e-10, err_msg=key)


def test_phrase_viterbi_equals_enumeration():
    model = ta.PhraseHMM(max_phrase_length=3, max_jump=2).fit(TINY, iterations=3)
    pairs = reference_pairs(model, TINY)
    for (s, d, sent), positions, (summary, document) in zip(pairs, model.align(TINY), TINY):
        _, terms = ref.phrase_likelihood_and_best(model_dict(model), s, d, sent)
        assert terms[0][0] > terms[1][0] * (1 + 1e-9)  # a unique best
        expected = [None] * len(s)
        for seg in terms[0][1]:
            if seg[0] == "phrase":
                _, j, a, l = seg
                for k in range(l):
                    flat = a + k
                    sentence = sent[flat]
                    expected[j + k] = (sentence, flat - sent.index(sentence))
        assert positions == expected


def test_phrase_hmm_learns_and_is_thread_independent(calign_threads):
    corpus = ta.synthetic_corpus(12, seed=2)
    pairs = [([t for s in p.summary for t in s], p.document) for p in corpus]
    calign_threads(1)
    one = ta.PhraseHMM().fit(pairs, iterations=4)
    calign_threads(2)
    two = ta.PhraseHMM().fit(pairs, iterations=4)
    assert one.log_likelihoods == two.log_likelihoods
    assert np.array_equal(one.rewrite, two.rewrite) and np.array_equal(one.jump, two.jump)
    assert one.align(pairs) == two.align(pairs)
    assert all(b >= a - 1e-9 for a, b in zip(one.log_likelihoods, one.log_likelihoods[1:]))
    # most copied words are copied as themselves, in phrases longer than a word
    assert one.identity > 0.8
    assert one.length[1:].sum() > one.length[0]
    phrases = one.phrases(pairs)
    assert all(f.stop - f.start >= 1 for fs in phrases for f in fs)
    assert [f.stop for f in phrases[0]][-1] == len(pairs[0][0])


def test_phrase_hmm_unseen_words_are_generated_not_identical():
    model = ta.PhraseHMM().fit(TINY, iterations=2)
    assert model.align([(["new1", "new2"], [["new1"], ["new2"]])]) == [[None, None]]


# ---- similarity -------------------------------------------------------------------

def test_align_sentences_cosine_by_hand():
    doc = [["a", "b"], ["a", "c", "c"], ["d"]]
    got = ta.align_sentences([["a", "c"]], doc, top_k=None, weighting="tf")[0]
    # tf cosines: [a c].[a b] = 1/(sqrt2 sqrt2); [a c].[a c c] = 3/(sqrt2 sqrt5)
    assert [s for s, _ in got] == [1, 0]
    assert got[0][1] == pytest.approx(3 / math.sqrt(10))
    assert got[1][1] == pytest.approx(0.5)
    assert ta.align_sentences([["a", "c"]], doc, top_k=None, threshold=0.6, weighting="tf") == \
        [[(1, pytest.approx(3 / math.sqrt(10)))]]
    # idf: "a" (in 2 of 3 sentences) weighs less than "c" (in 1)
    idf_a, idf_c = math.log(4 / 3) + 1, math.log(4 / 2) + 1
    s = np.array([idf_a, idf_c]); d = np.array([idf_a, 2 * idf_c])
    got = ta.align_sentences([["a", "c"]], doc)[0]
    assert got == [(1, pytest.approx(s @ d / np.linalg.norm(s) / np.linalg.norm(d)))]
    assert ta.align_sentences([["zz"]], doc) == [[]]


def test_extract_deletes_what_does_not_help():
    doc = [["x", "y", ",", "a", "b"], ["c", "d"], ["a", "b", "c"]]
    units = ta.extract([["a", "b", "c"]], doc, weighting="tf")
    assert units == [ta.Unit(2, 0, 3)]
    sentences = ta.extract([["a", "b"], ["c", "d"]], doc, unit="sentence", weighting="tf")
    assert {u.sentence for u in sentences} <= {0, 1, 2} and ta.Unit(1, 0, 2) in sentences
    # clause units split after the comma
    assert ta.extract([["x", "y", ","]], doc, weighting="tf") == [ta.Unit(0, 0, 3)]


def test_tokenize_and_split_sentences():
    assert ta.tokenize("The mayor's plan, at last.") == ["The", "mayor's", "plan", ",", "at",
                                                          "last", "."]
    assert ta.split_sentences("One two. Three? Four") == [["One", "two", "."], ["Three", "?"],
                                                          ["Four"]]


# ---- synthetic corpus and scores --------------------------------------------------

def test_synthetic_corpus_is_seeded_and_its_links_are_right():
    a, b = ta.synthetic_corpus(20, seed=9), ta.synthetic_corpus(20, seed=9)
    assert a == b and a != ta.synthetic_corpus(20, seed=10)
    n_new = n_paraphrase = 0
    for pair in a:
        for words, links in zip(pair.summary, pair.word_links):
            assert len(words) == len(links)
            for word, link in zip(words, links):
                if link is None:
                    n_new += 1
                    continue
                source = pair.document[link[0]][link[1]]
                assert word in (source, source + "p")
                n_paraphrase += word != source
    assert n_new > 0 and n_paraphrase > 0


def test_scores_by_hand():
    gold = [[[(0, 0), (0, 1), None]]]
    pred = [[[(0, 0), (1, 1), (2, 2)]]]
    s = ta.word_scores(pred, gold)
    assert (s["precision"], s["recall"]) == (pytest.approx(1 / 3), 0.5)
    assert s["f1"] == pytest.approx(0.4)
    assert ta.sentence_links(pred[0]) == {(0, 0), (0, 1), (0, 2)}
    assert ta.sentence_scores([{(0, 0)}], [{(0, 0), (0, 1)}])["recall"] == 0.5
    assert ta.extract_scores([set()], [{1}]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# ---- bad input --------------------------------------------------------------------

@pytest.mark.parametrize("summary,document,name", [
    ([], DOC, "summary_words"),
    ("the council", DOC, "summary_words"),
    (["the", 3], DOC, "summary_words"),
    (SUMMARY, [], "document_sentences"),
    (SUMMARY, [["a"], []], r"document_sentences\[1\]"),
    (SUMMARY, ["a b"], r"document_sentences\[0\]"),
])
def test_empty_or_malformed_texts_are_refused_by_name(summary, document, name):
    with pytest.raises(ValueError, match=name):
        ta.decompose(summary, document)
    with pytest.raises(ValueError, match=name):
        ta.align_by_overlap(summary, document)


@pytest.mark.parametrize("rules,name", [
    ({"p_adjacent": 0.0}, "p_adjacent"), ({"p_far": 1.5}, "p_far"),
    ({"p_same_later": float("nan")}, "p_same_later"),
    ({"p_near_later": 0.6}, "p_near_later"),          # above p_same_earlier: out of order
    ({"near": 0}, "near"), ({"near": 2.5}, "near"), ({"p_new": 1.0}, "p_new"),
    ({"p_new": True}, "p_new")])
def test_bad_rule_constants_are_refused_by_name(rules, name):
    with pytest.raises(ValueError, match=name):
        ta.decompose(SUMMARY, DOC, **rules)
    with pytest.raises(TypeError, match="unknown setting 'p_typo'"):
        ta.decompose(SUMMARY, DOC, p_typo=0.5)


def test_the_binding_checks_its_own_arguments():
    args = dict(word_offsets=[0, 2], candidate_offsets=[0, 1, 2], candidate_sentences=[0, 0],
                candidate_words=[0, 1], **DEFAULT_RULES)
    assert _C.ta_decompose(**args)[0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="p_far must be at most p_near_earlier"):
        _C.ta_decompose(**{**args, "p_far": 0.5})
    with pytest.raises(ValueError, match="word_offsets must end at 2"):
        _C.ta_decompose(**{**args, "word_offsets": [0, 3]})
    with pytest.raises(ValueError, match="candidate_offsets must not decrease"):
        _C.ta_decompose(**{**args, "candidate_offsets": [0, 2, 1], "word_offsets": [0, 2]})
    with pytest.raises(ValueError, match="candidate_words"):
        _C.ta_decompose(**{**args, "candidate_words": [0]})
    with pytest.raises(ValueError, match="candidate_sentences"):
        _C.ta_decompose(**{**args, "candidate_sentences": [0, -1]})


def test_bad_phrase_hmm_settings_and_pairs_are_refused_by_name():
    for kwargs, name in [({"max_phrase_length": 0}, "max_phrase_length"),
                         ({"max_jump": 65}, "max_jump"), ({"p_null": 0.0}, "p_null"),
                         ({"identity": 1.0}, "identity"), ({"smoothing": 0}, "smoothing")]:
        with pytest.raises(ValueError, match=name):
            ta.PhraseHMM(**kwargs)
    with pytest.raises(ValueError, match="not trained"):
        ta.PhraseHMM().align(TINY)
    with pytest.raises(ValueError, match=r"pairs\[1\] summary_words"):
        ta.PhraseHMM().fit([TINY[0], ([], [["a"]])])
    with pytest.raises(ValueError, match=r"pairs\[0\] document_sentences"):
        ta.PhraseHMM().fit([(["a"], [])])
    with pytest.raises(ValueError, match="iterations"):
        ta.PhraseHMM().fit(TINY, iterations=-1)
    model = ta.PhraseHMM().fit(TINY, iterations=1)
    arrays = model._arrays(TINY, grow=False)
    with pytest.raises(ValueError, match="jump must hold an odd number"):
        _C.ta_phrase_viterbi(*arrays, **{**model._model(), "jump": np.ones(4)})
    with pytest.raises(ValueError, match=r"rewrite\[0\] must be a finite number"):
        bad = model.rewrite.copy()
        bad[0] = -1.0
        _C.ta_phrase_viterbi(*arrays, **{**model._model(), "rewrite": bad})
    with pytest.raises(ValueError, match="summary_ids"):
        _C.ta_phrase_viterbi(np.array([10**6]), *arrays[1:], **model._model())
    with pytest.raises(ValueError, match="document 0 has no words"):
        _C.ta_phrase_viterbi(arrays[0], arrays[1], np.zeros(0, np.int64),
                             np.zeros(len(arrays[3]), np.int64), np.zeros(0, np.int64),
                             **model._model())


def test_other_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="top_k"):
        ta.align_sentences([SUMMARY], DOC, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        ta.align_sentences([SUMMARY], DOC, threshold=2.0)
    with pytest.raises(ValueError, match="weighting"):
        ta.align_sentences([SUMMARY], DOC, weighting="bm25")
    with pytest.raises(ValueError, match="summary_sentences"):
        ta.align_sentences([], DOC)
    with pytest.raises(ValueError, match="unit"):
        ta.extract([SUMMARY], DOC, unit="paragraph")
    with pytest.raises(ValueError, match=r"document_sentences\[3\]"):
        ta.extract([SUMMARY], DOC + [[]])
    with pytest.raises(ValueError, match="gold"):
        ta.word_scores([[[None]]], [])
    with pytest.raises(ValueError, match=r"predicted\[0\]\[0\]"):
        ta.word_scores([[[None, None]]], [[[None]]])
    with pytest.raises(ValueError, match=r"predicted\[0\]"):
        ta.word_scores([[[None], [None]]], [[[None]]])
    with pytest.raises(ValueError, match="n_pairs"):
        ta.synthetic_corpus(0)
    with pytest.raises(ValueError, match="seed"):
        ta.synthetic_corpus(2, seed="x")
