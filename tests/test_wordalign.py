"""calign.wordalign against a plain NumPy EM, hand-worked cases and gold links."""

import numpy as np
import pytest

from calign import wordalign as wa
from reference import wordalign_numpy as ref

SMALL = [("the house".split(), "das haus".split()),
         ("the book".split(), "das buch".split()),
         ("a book".split(), "ein buch".split()),
         ("book".split(), "buch".split()),          # length 1
         ([], "allein".split()),                     # empty source
         ("nothing here".split(), []),               # empty target
         ("the small house".split(), "das kleine haus".split())]


def dense_table(model):
    """The model's sparse t table as dense [source ids, target ids]."""
    row_start, cols, prob = model.table
    t = np.zeros((len(model.source_vocab), len(model.target_vocab)))
    for e in range(len(row_start) - 1):
        t[e, cols[row_start[e]:row_start[e + 1]]] = prob[row_start[e]:row_start[e + 1]]
    return t


def id_pairs(model, pairs):
    return [(np.array([model.source_vocab.ids[w] for w in s], int),
             np.array([model.target_vocab.ids[w] for w in t], int)) for s, t in pairs]


@pytest.mark.parametrize("make,alpha", [
    (lambda: wa.IBM1(), 0.0), (lambda: wa.IBM2(p0=0.1, tension=3.0, alpha=0.0), 0.0),
    (lambda: wa.IBM1(alpha=0.05), 0.05), (lambda: wa.IBM2(p0=0.1, tension=3.0, alpha=0.2), 0.2)])
@pytest.mark.parametrize("iterations", [1, 4])
def test_em_equals_numpy(make, alpha, iterations):
    model = make().fit(SMALL, iterations=iterations)
    t, tension, lls = ref.em(id_pairs(model, SMALL), len(model.source_vocab),
                             len(model.target_vocab), iterations, model2=model.model2,
                             p0=0.1, tension=3.0, alpha=alpha)
    np.testing.assert_allclose(dense_table(model), t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.log_likelihoods, lls, rtol=1e-9)
    if model.model2:
        assert model.tension == pytest.approx(tension, rel=1e-9)


def test_em_on_synthetic_corpus_equals_numpy():
    pairs, _, _ = wa.synthetic_corpus(60, seed=3, vocab_size=80)
    model = wa.IBM2(alpha=0.0).fit(pairs, iterations=3)
    t, tension, _ = ref.em(id_pairs(model, pairs), len(model.source_vocab),
                           len(model.target_vocab), 3, model2=True)
    np.testing.assert_allclose(dense_table(model), t, rtol=1e-9, atol=1e-12)
    assert model.tension == pytest.approx(tension, rel=1e-9)


def test_deterministic_and_thread_independent_up_to_rounding():
    import calign

    pairs, _, _ = wa.synthetic_corpus(3500, seed=4)  # above 32768 target words: 2 threads run
    previous = calign.get_num_threads()
    try:
        calign.set_num_threads(2)
        a = wa.IBM2().fit(pairs, 3)
        b = wa.IBM2().fit(pairs, 3)
        calign.set_num_threads(1)
        c = wa.IBM2().fit(pairs, 3)
    finally:
        calign.set_num_threads(previous)
    np.testing.assert_array_equal(a.table[2], b.table[2])
    np.testing.assert_allclose(a.table[2], c.table[2], rtol=1e-12)


def test_model_quality_ordering_on_synthetic_data():
    pairs, sure, possible = wa.synthetic_corpus(3000, seed=0)
    scores = {}
    for name, make in (("ibm1", wa.IBM1), ("ibm2", wa.IBM2)):
        forward = make().fit(pairs, 5)
        reverse = make(reverse=True).fit(pairs, 5)
        f, r = forward.align(pairs), reverse.align(pairs)
        scores[name] = wa.aer(f, sure, possible)
        scores[name + "+gdfa"] = wa.aer([wa.symmetrize(x, y) for x, y in zip(f, r)], sure,
                                        possible)
    assert scores["ibm2"] < scores["ibm1"]
    assert scores["ibm2"] < 0.15 and scores["ibm1+gdfa"] < scores["ibm1"]


def test_align_methods_and_reverse_orientation():
    model = wa.IBM2().fit(SMALL, 5)
    links = model.align([("the house".split(), "das haus".split())])[0]
    assert links == [(0, 0), (1, 1)]
    post = model.posteriors(("the house".split(), "das haus".split()))
    assert post.shape == (2, 3) and np.allclose(post.sum(axis=1), 1)
    assert model.align([("the house".split(), "das haus".split())], method="posterior",
                       threshold=0.3)[0] == [(0, 0), (1, 1)]
    reverse = wa.IBM2(reverse=True).fit(SMALL, 5)
    assert reverse.align([("the house".split(), "das haus".split())])[0] == [(0, 0), (1, 1)]
    # unseen words do not crash and get no link
    assert model.align([("zebra".split(), "zebra".split())]) == [[]]


def test_symmetrize_hand_worked():
    forward = [(0, 0), (1, 1), (2, 1)]
    reverse = [(0, 0), (1, 1), (2, 2)]
    assert wa.symmetrize(forward, reverse, "intersect") == [(0, 0), (1, 1)]
    assert wa.symmetrize(forward, reverse, "union") == [(0, 0), (1, 1), (2, 1), (2, 2)]
    # grow-diag from (1, 1): (2, 1) joins (source 2 unaligned), then the diagonal
    # (2, 2) joins too (target 2 still unaligned) -- Koehn's "either unaligned"
    assert wa.symmetrize(forward, reverse, "grow-diag") == [(0, 0), (1, 1), (2, 1), (2, 2)]
    # without the (1, 1) anchor nothing grows; final-and then needs both words unaligned
    assert wa.symmetrize([(0, 0), (2, 1)], [(0, 0), (2, 2)], "grow-diag") == [(0, 0)]
    assert wa.symmetrize([(0, 0), (2, 1)], [(0, 0), (2, 2)], "grow-diag-final-and") == \
        [(0, 0), (2, 1)]
    assert wa.symmetrize([(0, 0), (2, 1)], [(0, 0), (2, 2)], "grow-diag-final") == \
        [(0, 0), (2, 1), (2, 2)]
    assert wa.symmetrize([(0, 0), (3, 3)], [(0, 0)], "grow-diag-final") == [(0, 0), (3, 3)]
    with pytest.raises(ValueError, match="method must be one of"):
        wa.symmetrize([], [], "gdfa")


def test_aer_precision_recall_closed_form():
    predicted = [[(0, 0), (1, 1), (2, 0)]]
    sure, possible = [[(0, 0), (1, 2)]], [[(1, 1)]]
    # |A|=3, |S|=2, |A∩S|=1, |A∩P|=2 (P includes S)
    assert wa.aer(predicted, sure, possible) == pytest.approx(1 - 3 / 5)
    assert wa.precision(predicted, sure, possible) == pytest.approx(2 / 3)
    assert wa.recall(predicted, sure, possible) == pytest.approx(1 / 2)
    assert wa.f1(predicted, sure, possible) == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_pharaoh_and_fast_align_files(tmp_path):
    path = tmp_path / "links.txt"
    wa.write_pharaoh(str(path), [[(0, 1), (2, 0)], []])
    assert wa.read_pharaoh(str(path)) == [[(0, 1), (2, 0)], []]
    path.write_text("0-1 1-1\n\n3-x\n")
    with pytest.raises(ValueError, match=r"links.txt:3: malformed link '3-x'"):
        wa.read_pharaoh(str(path))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the house ||| das haus\n\nthe book ||| das buch\n")
    assert wa.read_fast_align(str(corpus)) == [(["the", "house"], ["das", "haus"]),
                                               (["the", "book"], ["das", "buch"])]
    corpus.write_text("the house ||| das haus\nno separator here\n")
    with pytest.raises(ValueError, match="corpus.txt:2: a line must read"):
        wa.read_fast_align(str(corpus))


def test_save_load_round_trip(tmp_path):
    model = wa.IBM2(reverse=True).fit(SMALL, 3)
    model.save(str(tmp_path / "m.npz"))
    again = wa.IBM2.load(str(tmp_path / "m.npz"))
    assert again.align(SMALL) == model.align(SMALL)
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a saved calign.wordalign model"):
        wa.IBM2.load(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="not a saved IBM1 model"):
        wa.IBM1.load(str(tmp_path / "m.npz"))


def test_bad_input():
    with pytest.raises(ValueError, match="the corpus is empty"):
        wa.IBM1().fit([])
    with pytest.raises(TypeError, match="list of string tokens"):
        wa.IBM1().fit([(["a", 3], ["b"])])
    with pytest.raises(ValueError, match="pair 0 must be"):
        wa.IBM1().fit([("a b".split(),)])
    with pytest.raises(ValueError, match="threshold must be in"):
        wa.IBM1().fit(SMALL).align(SMALL, method="posterior", threshold=1.5)
    with pytest.raises(ValueError, match="not trained"):
        wa.IBM1().align(SMALL)
    with pytest.raises(ValueError, match="p0 must be"):
        wa.IBM2(p0=1.0)
    with pytest.raises(ValueError, match="iterations"):
        wa.IBM1().fit(SMALL, iterations=0)


def test_command_line_align(tmp_path):
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{' '.join(s)} ||| {' '.join(t)}\n" for s, t in SMALL if s and t))
    out = subprocess.run([sys.executable, "-m", "calign", "align", "--method", "ibm2", "--input",
                          str(corpus), "--symmetrize", "gdfa"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5 and lines[0] == "0-0 1-1"
    out = subprocess.run([sys.executable, "-m", "calign", "align", "--method", "joint", "--input",
                          str(corpus)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 5
    corpus.write_text("no separator\n")
    out = subprocess.run([sys.executable, "-m", "calign", "align", "--input", str(corpus)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "corpus.txt:1: a line must read" in out.stderr


@pytest.mark.parametrize("iterations,alpha", [(1, 0.0), (3, 0.0), (3, 0.1)])
def test_hmm_em_equals_numpy(iterations, alpha):
    pairs = SMALL + [("a small book here".split(), "ein kleines buch hier".split()),
                     ("house the".split(), "haus das".split())]
    model = wa.HMM(p0=0.3, max_jump=2, ibm1_iterations=2, alpha=alpha).fit(pairs, iterations)
    ids = id_pairs(model, pairs)
    t_ibm1, _, _ = ref.em(ids, len(model.source_vocab), len(model.target_vocab), 2, alpha=alpha)
    jump0 = np.ones(5) / 5
    t, jump, lls = ref.hmm_em(ids, len(model.source_vocab), len(model.target_vocab), t_ibm1,
                              jump0, 0.3, iterations, alpha=alpha)
    np.testing.assert_allclose(dense_table(model), t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.jump, jump, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.log_likelihoods[2:], lls, rtol=1e-9)


def test_hmm_beats_ibm2_beats_ibm1_on_synthetic_data():
    pairs, sure, possible = wa.synthetic_corpus(3000, seed=1)
    scores = {name: wa.aer(make().fit(pairs, 5).align(pairs), sure, possible)
              for name, make in (("ibm1", wa.IBM1), ("ibm2", wa.IBM2), ("hmm", wa.HMM))}
    assert scores["ibm1"] > scores["ibm2"] > scores["hmm"], scores
    forward, reverse = wa.HMM().fit(pairs, 5), wa.HMM(reverse=True).fit(pairs, 5)
    gdfa = [wa.symmetrize(f, r) for f, r in zip(forward.align(pairs), reverse.align(pairs))]
    assert wa.aer(gdfa, sure, possible) < 0.12


def test_hmm_viterbi_posteriors_and_files(tmp_path):
    model = wa.HMM().fit(SMALL, 5)
    post = model.posteriors(("the small house".split(), "das kleine haus".split()))
    assert post.shape == (3, 4) and np.allclose(post.sum(axis=1), 1)
    assert model.align([("the small house".split(), "das kleine haus".split())]) == \
        [[(0, 0), (1, 1), (2, 2)]]
    model.save(str(tmp_path / "hmm.npz"))
    again = wa.HMM.load(str(tmp_path / "hmm.npz"))
    np.testing.assert_array_equal(again.jump, model.jump)
    assert again.align(SMALL) == model.align(SMALL)
    # a target word never seen in training can only come from NULL (was NaN)
    post = model.posteriors(("the zebra".split(), "das gnu".split()))
    assert np.isfinite(post).all() and post[1, 0] == 1.0
    assert model.align([("the zebra".split(), "das gnu".split())]) == [[(0, 0)]]
    with pytest.raises(ValueError, match="max_jump"):
        wa.HMM(max_jump=0)


# ---- optimal transport ---------------------------------------------------------------------

def ot_problem(seed, n=6, m=8):
    rng = np.random.default_rng(seed)
    cost = rng.random((n, m))
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return cost, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_sinkhorn_plans_equal_pot(seed):
    import warnings

    import ot

    cost, a, b = ot_problem(seed)
    tight = dict(numItermax=200000, stopThr=1e-15)
    np.testing.assert_allclose(wa.transport_plan(cost, a, b, "balanced", reg=0.05),
                               ot.sinkhorn(a, b, cost, 0.05, **tight), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that reg_type="entropy" overrides c
        expected = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, 0.05, 0.3, reg_type="entropy",
                                                     **tight)
    np.testing.assert_allclose(wa.transport_plan(cost, a, b, "unbalanced", reg=0.05, reg_m=0.3),
                               expected, atol=1e-6)
    np.testing.assert_allclose(wa.transport_plan(cost, a, b, "partial", reg=0.05, mass=0.7),
                               ot.partial.entropic_partial_wasserstein(a, b, cost, 0.05, m=0.7,
                                                                       **tight), atol=1e-6)


def test_ot_aligner_recovers_a_permutation_and_leaves_extra_words_unaligned():
    rng = np.random.default_rng(2)
    source = rng.standard_normal((6, 16))
    order = [2, 0, 1, 5, 4, 3]
    target = np.vstack([source[order] + 0.05 * rng.standard_normal((6, 16)),
                        rng.standard_normal((2, 16))])  # two target words with no source
    links = wa.OTAligner(kind="partial", reg=0.02, mass_fraction=0.7,
                         threshold=0.5).align([(source, target)])[0]
    assert sorted(links) == sorted((i, j) for j, i in enumerate(order))
    plan = wa.OTAligner(kind="balanced", reg=0.02).plan(source, target[:6])
    assert plan.sum() == pytest.approx(1.0)
    assert wa.OTAligner().align([(np.zeros((0, 4)), np.ones((3, 4)))]) == [[]]


def test_ot_bad_input():
    with pytest.raises(ValueError, match="source_embeddings contains NaN"):
        wa.OTAligner().plan(np.array([[np.nan, 1.0]]), np.ones((2, 2)))
    with pytest.raises(ValueError, match="target_embeddings must be a 2-D"):
        wa.OTAligner().plan(np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="differ in dimension"):
        wa.OTAligner().plan(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="threshold must be in"):
        wa.OTAligner(threshold=2.0)
    cost, a, b = ot_problem(3)
    with pytest.raises(ValueError, match="mass must be in"):
        wa.transport_plan(cost, a, b, "partial", mass=1.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        wa.transport_plan(cost, a, b, "sliced")


def test_hand_made_gold_set():
    """32 English-French pairs written for the project, trained on themselves."""
    import os

    folder = os.path.join(os.path.dirname(__file__), "data", "wordalign")
    pairs = wa.read_fast_align(os.path.join(folder, "gold.en-fr.txt"))
    sure = wa.read_pharaoh(os.path.join(folder, "gold.sure.txt"))
    possible = wa.read_pharaoh(os.path.join(folder, "gold.possible.txt"))
    assert len(pairs) == len(sure) == len(possible) == 32
    scores = {}
    for name, make in (("ibm1", wa.IBM1), ("ibm2", wa.IBM2), ("hmm", wa.HMM)):
        forward = make().fit(pairs, 5).align(pairs)
        reverse = make(reverse=True).fit(pairs, 5).align(pairs)
        scores[name] = wa.aer([wa.symmetrize(f, r) for f, r in zip(forward, reverse)], sure,
                              possible)
    scores["joint"] = wa.aer(wa.JointHMM().fit(pairs, 5).align(pairs), sure, possible)
    # measured: ibm1 0.413, ibm2 0.193, hmm 0.178, joint 0.120 (eflomal 2.0, one run: model 3 0.139)
    assert scores["hmm"] < 0.25 and scores["ibm2"] < 0.25, scores
    assert scores["ibm1"] > max(scores["ibm2"], scores["hmm"]), scores
    assert scores["joint"] < 0.13 and scores["joint"] < scores["hmm"], scores


def test_hmm_em_equals_numpy_with_long_jumps():
    """Sentences of 6-10 words with max_jump 2: most transitions fall in the
    clipped classes, which the C recursion sums from prefix and suffix sums."""
    pairs, _, _ = wa.synthetic_corpus(10, seed=7, vocab_size=40, min_length=6, max_length=10)
    model = wa.HMM(p0=0.2, max_jump=2, ibm1_iterations=1, alpha=0.0).fit(pairs, 2)
    ids = id_pairs(model, pairs)
    t_ibm1, _, _ = ref.em(ids, len(model.source_vocab), len(model.target_vocab), 1)
    t, jump, lls = ref.hmm_em(ids, len(model.source_vocab), len(model.target_vocab), t_ibm1,
                              np.ones(5) / 5, 0.2, 2)
    np.testing.assert_allclose(dense_table(model), t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.jump, jump, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.log_likelihoods[1:], lls, rtol=1e-9)


def test_training_without_the_link_cache_is_identical(monkeypatch):
    from calign.wordalign import ibm

    pairs, _, _ = wa.synthetic_corpus(200, seed=2)
    cached = wa.HMM().fit(pairs, 2)
    monkeypatch.setattr(ibm, "LINK_CACHE_BYTES", 0)
    looked_up = wa.HMM().fit(pairs, 2)
    np.testing.assert_array_equal(cached.table[2], looked_up.table[2])
    np.testing.assert_array_equal(cached.jump, looked_up.jump)


@pytest.mark.parametrize("max_jump", [1, 2, 7])
def test_hmm_viterbi_and_posteriors_equal_enumeration(max_jump):
    """Every alignment of small pairs enumerated: the C Viterbi path is a most
    probable one (max_jump 1 makes ties) and the C posteriors are the exact
    link marginals."""
    pairs, _, _ = wa.synthetic_corpus(40, seed=11, vocab_size=12, min_length=1, max_length=4)
    model = wa.HMM(p0=0.15, max_jump=max_jump, alpha=0.0).fit(pairs, 2)
    t = dense_table(model)
    paths = model.align(pairs)
    for (s, g), (src, tgt), links in zip(pairs, id_pairs(model, pairs), paths):
        probs = ref.hmm_paths(src, tgt, t, model.jump, model.p0)
        path = [0] * len(tgt)
        for i, j in links:
            path[j] = i + 1
        assert probs[tuple(path)] == pytest.approx(max(probs.values()), rel=1e-12)
        z = sum(probs.values())
        expected = np.zeros((len(tgt), len(src) + 1))
        for a, p in probs.items():
            expected[np.arange(len(tgt)), list(a)] += p / z
        np.testing.assert_allclose(model.posteriors((s, g)), expected, rtol=1e-10, atol=1e-13)


# ---- JointHMM: agreement, fertility sampling, soft union ------------------------------------

def joint_tables(model):
    """(dense forward table [source id, target id], dense reverse table
    [target id, source id]) of a JointHMM (the two share vocabularies)."""
    return dense_table(model.forward), dense_table(model.reverse)


@pytest.mark.parametrize("iterations,alpha", [(1, 0.0), (3, 0.1)])
def test_agreement_em_equals_numpy(iterations, alpha):
    pairs = SMALL + [("a small book here".split(), "ein kleines buch hier".split()),
                     ("house the".split(), "haus das".split())]
    model = wa.JointHMM(p0=0.3, max_jump=2, ibm1_iterations=2, alpha=alpha).fit(pairs,
                                                                              iterations)
    ids = id_pairs(model.forward, pairs)
    n_src, n_tgt = len(model.forward.source_vocab), len(model.forward.target_vocab)
    t_f, _, _ = ref.em(ids, n_src, n_tgt, 2, alpha=alpha)
    t_r, _, _ = ref.em([(t, s) for s, t in ids], n_tgt, n_src, 2, alpha=alpha)
    jump0 = np.ones(5) / 5
    t_f, jump_f, t_r, jump_r, lls = ref.hmm_agreement_em(ids, t_f, jump0, t_r, jump0, 0.3,
                                                         iterations, alpha=alpha)
    forward, reverse = joint_tables(model)
    np.testing.assert_allclose(forward, t_f, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(reverse, t_r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.forward.jump, jump_f, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.reverse.jump, jump_r, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.log_likelihoods, lls, rtol=1e-9)


def sampler_inputs(n_pairs=30):
    """A JointHMM trained on a small synthetic corpus, its forward direction's
    corpus arrays and Viterbi links: what the fertility sampler starts from."""
    from calign import _C
    from calign.wordalign.corpus import flatten

    pairs, _, _ = wa.synthetic_corpus(n_pairs, seed=5, vocab_size=25, min_length=2, max_length=7)
    model = wa.JointHMM(fertility=False).fit(pairs, 2)
    hmm = model.forward
    arrays = flatten(pairs, hmm.source_vocab, hmm.target_vocab, grow=False)
    vocabs = (len(hmm.source_vocab), len(hmm.target_vocab))
    start = _C.wa_hmm_decode(*hmm.table, *arrays, *vocabs, hmm.p0, hmm.jump, True, None)
    return pairs, hmm, arrays, vocabs, start


@pytest.mark.parametrize("cached", [False, True])
def test_fertility_sampler_equals_numpy(cached):
    """Same random streams, same links: every sample of the C sampler is the
    NumPy sampler's, written from the fertility HMM's conditionals."""
    from calign import _C

    pairs, hmm, arrays, vocabs, start = sampler_inputs()
    links = _C.wa_links(*hmm.table, *arrays, *vocabs) if cached else None
    align = start.copy()
    post = _C.wa_fertility_sample(*hmm.table, *arrays, *vocabs, hmm.p0, hmm.jump, links, align,
                                  2, 0.7, 5, 2, 12345)
    ids = id_pairs(hmm, pairs)
    starts = np.split(start.astype(int), arrays[3][1:-1])
    expected = ref.fertility_sample(ids, dense_table(hmm), hmm.jump, hmm.p0, starts, vocabs[0],
                                    2, 0.7, 5, 2, 12345)
    np.testing.assert_array_equal(align, np.concatenate(starts))
    np.testing.assert_array_equal(post, np.concatenate([p.ravel() for p in expected]))


def test_fertility_sampler_does_not_depend_on_threads():
    import calign
    from calign import _C

    _, hmm, arrays, vocabs, start = sampler_inputs(4500)  # above 32768 target words
    previous = calign.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            calign.set_num_threads(threads)
            results.append(_C.wa_fertility_sample(*hmm.table, *arrays, *vocabs, hmm.p0, hmm.jump,
                                                  None, start.copy(), 3, 1.0, 4, 1, 7))
    finally:
        calign.set_num_threads(previous)
    np.testing.assert_array_equal(results[0], results[1])


def test_soft_union_equals_numpy():
    from calign import _C

    rng = np.random.default_rng(3)
    lengths = [(3, 4), (0, 2), (2, 0), (1, 1), (5, 2)]
    src_off = np.cumsum([0] + [i for i, _ in lengths])
    tgt_off = np.cumsum([0] + [j for _, j in lengths])
    forward = [rng.random((j, i + 1)) for i, j in lengths]
    reverse = [rng.random((i, j + 1)) for i, j in lengths]
    keep = _C.wa_soft_union(src_off, tgt_off, np.concatenate([f.ravel() for f in forward]),
                            np.concatenate([r.ravel() for r in reverse]), 0.45)
    expected = [((f[:, 1:].T + r[:, 1:]) / 2 > 0.45).ravel() for f, r in zip(forward, reverse)]
    np.testing.assert_array_equal(keep.astype(bool), np.concatenate(expected))


def test_joint_hmm_beats_independent_hmms_on_synthetic_data():
    pairs, sure, possible = wa.synthetic_corpus(2000, seed=1)
    scores = {}
    for name, model in (("independent", wa.JointHMM(agreement=False, fertility=False)),
                        ("agreement", wa.JointHMM(fertility=False)),
                        ("fertility", wa.JointHMM())):
        model.fit(pairs, 5)
        scores[name] = wa.aer(model.align(pairs), sure, possible)
    assert scores["fertility"] < scores["agreement"] < scores["independent"], scores
    assert scores["fertility"] < 0.04, scores


def test_joint_hmm_align_methods_save_load_and_unknown_words(tmp_path):
    pairs, _, _ = wa.synthetic_corpus(300, seed=2)
    model = wa.JointHMM(samples=4, burn_in=2).fit(pairs, 3)
    links = model.align(pairs[:20])
    forward, reverse = model.align(pairs[:20], "forward"), model.align(pairs[:20], "reverse")
    assert model.align(pairs[:20], "intersect") == [wa.symmetrize(f, r, "intersect")
                                                    for f, r in zip(forward, reverse)]
    post = model.posteriors(pairs[0])  # fertility learned on this pair alone, as align([pair])
    assert post.shape == (len(pairs[0][0]), len(pairs[0][1]))
    assert [tuple(map(int, x)) for x in zip(*np.nonzero(post > model.threshold))] == \
        model.align(pairs[:1])[0]
    model.save(str(tmp_path / "joint.npz"))
    again = wa.JointHMM.load(str(tmp_path / "joint.npz"))
    assert again.align(pairs[:20]) == links
    assert again.threshold == model.threshold and again.samples == 4
    assert model.align([("zebra s0".split(), "zebra t0 gnu".split())]) == [[(1, 1)]]
    with pytest.raises(ValueError, match="not a saved JointHMM model"):
        wa.HMM().fit(SMALL, 1).save(str(tmp_path / "hmm.npz")) or \
            wa.JointHMM.load(str(tmp_path / "hmm.npz"))


def test_joint_hmm_bad_input():
    for kwargs, message in (({"threshold": 1.0}, "threshold must be in"),
                            ({"burn_in": -1}, "burn_in must be an integer"),
                            ({"samples": 0}, "samples must be an integer"),
                            ({"max_fertility": 0}, "max_fertility must be an integer"),
                            ({"max_fertility": 65},
                             r"max_fertility must be an integer in \[1, 64\]"),
                            ({"fertility_prior": float("nan")}, "fertility_prior must be"),
                            ({"seed": -1}, "seed must be an integer"),
                            ({"p0": 1.5}, "p0 must be in"),
                            ({"max_jump": 65}, "max_jump must be an integer in")):
        with pytest.raises(ValueError, match=message):
            wa.JointHMM(**kwargs)
    with pytest.raises(ValueError, match="not trained"):
        wa.JointHMM().align(SMALL)
    with pytest.raises(ValueError, match="iterations must be a positive integer"):
        wa.JointHMM().fit(SMALL, 0)
    model = wa.JointHMM().fit(SMALL, 1)
    with pytest.raises(ValueError, match="method must be one of"):
        model.align(SMALL, "gdfa")
    with pytest.raises(ValueError, match="threshold must be in"):
        model.align(SMALL, threshold=-0.1)
    with pytest.raises(TypeError, match="list of string tokens"):
        model.align([(["a", 1], ["b"])])


def test_sampler_and_soft_union_bad_arrays():
    from calign import _C

    _, hmm, arrays, vocabs, start = sampler_inputs(5)
    args = (*hmm.table, *arrays, *vocabs, hmm.p0, hmm.jump, None)
    bad = start.copy()
    bad[0] = 99
    with pytest.raises(ValueError, match="align: pair 0 links a target word to source position 99"):
        _C.wa_fertility_sample(*args, bad, 3, 1.0, 2, 1, 0)
    with pytest.raises(TypeError, match="align must be a writable contiguous int32 vector"):
        _C.wa_fertility_sample(*args, start.astype(np.int64), 3, 1.0, 2, 1, 0)
    with pytest.raises(ValueError, match="align must hold one link per target word"):
        _C.wa_fertility_sample(*args, start[1:].copy(), 3, 1.0, 2, 1, 0)
    with pytest.raises(ValueError, match="max_fertility must be in"):
        _C.wa_fertility_sample(*args, start.copy(), 0, 1.0, 2, 1, 0)
    with pytest.raises(TypeError, match="links must be a contiguous int32 vector"):
        _C.wa_hmm_decode(*hmm.table, *arrays, *vocabs, hmm.p0, hmm.jump, True, [1, 2])
    with pytest.raises(ValueError, match="links does not fit the corpus"):
        _C.wa_hmm_decode(*hmm.table, *arrays, *vocabs, hmm.p0, hmm.jump, True,
                         np.zeros(3, np.int32))
    cols = hmm.table[1].copy()
    cols[0] = vocabs[1]
    with pytest.raises(ValueError, match="cols must hold target ids"):
        _C.wa_links(hmm.table[0], cols, hmm.table[2], *arrays, *vocabs)
    with pytest.raises(ValueError, match="forward has 3 posteriors but the offsets need"):
        _C.wa_soft_union(arrays[1], arrays[3], np.zeros(3), np.zeros(3), 0.5)
    with pytest.raises(TypeError, match="reverse must be a contiguous float64 vector"):
        _C.wa_soft_union(arrays[1], arrays[3], np.zeros(3), np.zeros(3, np.float32), 0.5)


# ---- bad input: clear errors before any long computation ------------------------------------

TINY = [(["a", "b"], ["x", "y"]), (["b", "c"], ["y", "z"]), (["a"], ["x"])]


def test_constructor_counts_and_probabilities_are_checked():
    for make, message in ((lambda: wa.HMM(ibm1_iterations=-1), r"ibm1_iterations must be an "
                                                              r"integer in \[0, 2147483647\]"),
                          (lambda: wa.JointHMM(ibm1_iterations=-1), "ibm1_iterations must be"),
                          (lambda: wa.HMM(ibm1_iterations=2.5), "ibm1_iterations must be an"),
                          (lambda: wa.HMM(ibm1_iterations=True), "ibm1_iterations must be an"),
                          (lambda: wa.HMM(max_jump=np.float64(3)), "max_jump must be an integer"),
                          (lambda: wa.HMM(p0="a"), r"p0 must be in \(0, 1\), got 'a'"),
                          (lambda: wa.HMM(p0=True), r"p0 must be in \(0, 1\)"),
                          (lambda: wa.IBM2(p0=float("nan")), r"p0 must be in \[0, 1\)"),
                          (lambda: wa.IBM2(tension="a"), "tension must be a finite number > 0"),
                          (lambda: wa.JointHMM(fertility_prior="1"), "fertility_prior must be")):
        with pytest.raises(ValueError, match=message):
            make()
    # NumPy scalars are numbers like any other (kept as Python numbers)
    model = wa.HMM(p0=np.float32(0.25), max_jump=np.int64(3), ibm1_iterations=np.int32(2),
                   alpha=np.float32(0.1)).fit(SMALL, np.int64(2))
    assert type(model.p0) is float and type(model.max_jump) is int and \
        type(model.ibm1_iterations) is int and len(model.log_likelihoods) == 4
    joint = wa.JointHMM(burn_in=np.int64(1), samples=np.uint8(2), seed=np.uint64(3),
                        fertility_prior=np.float32(0.5))
    assert (joint.burn_in, joint.samples, joint.seed, joint.fertility_prior) == (1, 2, 3, 0.5)


@pytest.mark.parametrize("make", [wa.IBM1, wa.IBM2, wa.HMM, wa.JointHMM])
def test_alpha_that_would_overflow_the_dirichlet_update_is_rejected(make):
    from calign.wordalign.checks import ALPHA_MAX

    for alpha in (1e308, float("inf"), -0.1, True, "0.1"):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 4\.18\d*e\+298\]"):
            make(alpha=alpha)
    model = make(alpha=ALPHA_MAX).fit(TINY, 2)  # the largest allowed: rows uniform, no NaN
    assert np.isfinite(model.log_likelihoods).all()


def test_em_breakdown_is_a_floating_point_error_not_out_of_memory():
    from calign import _C
    from calign.wordalign.corpus import flatten

    model = wa.HMM(alpha=0.0).fit(SMALL, 1)
    arrays = flatten(SMALL, model.source_vocab, model.target_vocab, grow=False)
    vocabs = (len(model.source_vocab), len(model.target_vocab))
    table = (model.table[0], model.table[1], np.full_like(model.table[2], np.nan))
    with pytest.raises(FloatingPointError, match="EM iteration 1 of 2: the log-likelihood is NaN"):
        _C.wa_em(*table, *arrays, *vocabs, False, 0.0, 0.0, False, 2, 0.0, None)
    with pytest.raises(FloatingPointError, match="EM iteration 1 of 3: the log-likelihood is NaN"):
        _C.wa_hmm_em(*table, *arrays, *vocabs, 0.1, model.jump.copy(), 3, 0.0, None)
    with pytest.raises(ValueError, match="iterations must be >= 0, got -1"):
        _C.wa_em(*model.table, *arrays, *vocabs, False, 0.0, 0.0, False, -1, 0.0, None)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        _C.wa_hmm_em(*model.table, *arrays, *vocabs, 0.1, model.jump, 1, float("nan"), None)
    # a tiny alpha rounds rarely counted links to probability 0: said so, not MemoryError
    pairs, _, _ = wa.synthetic_corpus(300, seed=2)
    with pytest.raises(FloatingPointError, match="an alpha below about 0.0015 rounds"):
        wa.JointHMM(alpha=1e-5).fit(pairs, 3)


@pytest.mark.parametrize("make", [wa.HMM, wa.JointHMM])
def test_hmm_em_runs_on_after_jump_weights_reach_zero(make):
    # on three tiny pairs EM drives every jump weight reachable from the last
    # source position to 0; (1 - p0) / 0 there made the pair NaN (MemoryError)
    model = make(alpha=0.0).fit(TINY, 40)
    jump = model.jump if make is wa.HMM else model.forward.jump
    assert np.isfinite(model.log_likelihoods).all() and (jump == 0).any()
    assert model.align(TINY)[2] == [(0, 0)]


def test_counts_beyond_a_c_int_are_rejected():
    for fit, message in ((lambda: wa.IBM1().fit(SMALL, iterations=10**12),
                          r"iterations must be a positive integer \(at most 2147483647\)"),
                         (lambda: wa.JointHMM().fit(SMALL, iterations=10**12),
                          r"iterations must be a positive integer \(at most 2147483647\)"),
                         (lambda: wa.HMM().fit(SMALL, iterations=2.0),
                          "iterations must be a positive integer"),
                         (lambda: wa.JointHMM(samples=2**31),
                          r"samples must be an integer in \[1, 2147483647\], got 2147483648"),
                         (lambda: wa.JointHMM(burn_in=10**12),
                          r"burn_in must be an integer in \[0, 2147483647\]"),
                         (lambda: wa.JointHMM(burn_in=2**31 - 5, samples=10),
                          r"burn_in \+ samples must be at most 2147483647"),
                         (lambda: wa.JointHMM(seed=2**64), "seed must be an integer in")):
        with pytest.raises(ValueError, match=message):
            fit()


def _rewrite_npz(source, target, drop_arrays=(), drop_meta=(), drop_direction=None):
    """A copy of a saved model without some arrays, meta keys or (drop_direction
    = (direction, key)) a key of one JointHMM direction's meta."""
    import json

    with np.load(source) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    for key in drop_meta:
        del meta[key]
    if drop_direction:
        del meta[drop_direction[0]][drop_direction[1]]
    arrays = {name: value for name, value in arrays.items() if name not in drop_arrays}
    np.savez(target, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return str(target)


def test_damaged_files_are_not_saved_models(tmp_path):
    import re

    joint = str(tmp_path / "joint.npz")
    wa.JointHMM(samples=2, burn_in=1).fit(TINY, 1).save(joint)
    ibm2 = str(tmp_path / "ibm2.npz")
    wa.IBM2().fit(TINY, 1).save(ibm2)
    hmm = str(tmp_path / "hmm.npz")
    wa.HMM().fit(TINY, 1).save(hmm)
    damaged = tmp_path / "damaged.npz"
    with open(joint, "rb") as f:
        damaged.write_bytes(f.read()[:-100])  # truncated: was zipfile.BadZipFile
    with pytest.raises(ValueError, match=re.escape(repr(str(damaged))) +
                       " is not a saved calign.wordalign model"):
        wa.JointHMM.load(str(damaged))
    cases = ((wa.JointHMM.load, joint, {"drop_arrays": ["reverse_prob"]},  # was KeyError
              "not a saved JointHMM model: it lacks the array 'reverse_prob'"),
             (wa.JointHMM.load, joint, {"drop_meta": ["reverse"]},
              "not a saved JointHMM model: its metadata lack 'reverse'"),
             (wa.JointHMM.load, joint, {"drop_meta": ["settings"]},
              "not a saved JointHMM model: its metadata lack 'settings'"),
             (wa.JointHMM.load, joint, {"drop_direction": ("forward", "jump")},
              "not a saved JointHMM model: its 'forward' metadata lack 'jump'"),
             (wa.IBM2.load, ibm2, {"drop_arrays": ["prob"]},
              "not a saved IBM2 model: it lacks the array 'prob'"),
             (wa.IBM2.load, ibm2, {"drop_meta": ["source_vocab"]},
              "not a saved IBM2 model: its metadata lack 'source_vocab'"),
             (wa.HMM.load, hmm, {"drop_meta": ["max_jump"]},
              "not a saved HMM model: its metadata lack 'max_jump'"),
             (wa.IBM2.load, ibm2, {"drop_meta": ["format"]},
              "not a saved calign.wordalign model"))
    for k, (load, source, damage, message) in enumerate(cases):
        path = _rewrite_npz(source, tmp_path / f"damaged{k}.npz", **damage)
        with pytest.raises(ValueError, match=re.escape(repr(path)) + " is " + message):
            load(path)


def test_numpy_scalar_thresholds_are_accepted_and_bad_ones_named():
    model = wa.JointHMM(samples=2, burn_in=1, threshold=np.float64(0.45)).fit(SMALL, 1)
    assert model.align(SMALL, threshold=np.float32(0.5)) == model.align(SMALL, threshold=0.5)
    ibm2 = wa.IBM2().fit(SMALL, 2)
    assert ibm2.align(SMALL, "posterior", np.float32(0.25)) == ibm2.align(SMALL, "posterior", 0.25)
    assert wa.OTAligner(threshold=np.float32(0.5), mass_fraction=np.float32(0.5)).threshold == 0.5
    for bad in (True, float("nan"), "0.5", np.float32(1.0)):
        with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\), got"):
            model.align(SMALL, threshold=bad)
    for bad in (np.bool_(False), float("nan"), "0.5"):
        with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got"):
            ibm2.align(SMALL, "posterior", bad)
        with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got"):
            wa.OTAligner(threshold=bad)
