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
                             len(model.target_vocab), iterations, model2=model.kind == "ibm2",
                             p0=0.1, tension=3.0, alpha=alpha)
    np.testing.assert_allclose(dense_table(model), t, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.log_likelihoods, lls, rtol=1e-9)
    if model.kind == "ibm2":
        assert model.tension == pytest.approx(tension, rel=1e-9)


def test_em_on_synthetic_corpus_equals_numpy():
    pairs, _, _ = wa.synthetic_corpus(60, seed=3, vocab_size=80)
    model = wa.IBM2(alpha=0.0).fit(pairs, iterations=3)
    t, tension, _ = ref.em(id_pairs(model, pairs), len(model.source_vocab),
                           len(model.target_vocab), 3, model2=True)
    np.testing.assert_allclose(dense_table(model), t, rtol=1e-9, atol=1e-12)
    assert model.tension == pytest.approx(tension, rel=1e-9)


def test_deterministic_and_thread_independent_up_to_rounding(calign_threads):
    pairs, _, _ = wa.synthetic_corpus(3500, seed=4)  # above 32768 target words: 2 threads run
    calign_threads(2)
    a = wa.IBM2().fit(pairs, 3)
    b = wa.IBM2().fit(pairs, 3)
    calign_threads(1)
    c = wa.IBM2().fit(pairs, 3)
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
        scores[name + "+gdfa"] = wa.aer([wa.symmetrize(x, y) for x, y in zip(f, r, strict=True)], sure,
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
    with pytest.raises(ValueError, match="threshold must be a finite number in"):
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
    gdfa = [wa.symmetrize(f, r) for f, r in zip(forward.align(pairs), reverse.align(pairs), strict=True)]
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
    with pytest.raises(ValueError, match="threshold must be a finite number in"):
        wa.OTAligner(threshold=2.0)
    cost, a, b = ot_problem(3)
    with pytest.raises(ValueError, match=r"mass must be a finite number in \(0, 1\] \(0 to the"):
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
        scores[name] = wa.aer([wa.symmetrize(f, r) for f, r in zip(forward, reverse, strict=True)], sure,
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
    for (s, g), (src, tgt), links in zip(pairs, id_pairs(model, pairs), paths, strict=True):
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
    corpus arrays (as decoding takes them) and Viterbi links: what the
    fertility sampler starts from."""
    from calign import _C
    from calign.wordalign.corpus import flatten, with_unseen_sources

    pairs, _, _ = wa.synthetic_corpus(n_pairs, seed=5, vocab_size=25, min_length=2, max_length=7)
    model = wa.JointHMM(fertility=False).fit(pairs, 2)
    hmm = model.forward
    arrays = with_unseen_sources(flatten(pairs, hmm.source_vocab, hmm.target_vocab, grow=False),
                                 len(hmm.source_vocab))
    start = _C.wa_viterbi(hmm.c_model, *arrays)
    return pairs, hmm, arrays, start


@pytest.mark.parametrize("cached", [False, True])
def test_fertility_sampler_equals_numpy(cached):
    """Same random streams, same links: every sample of the C sampler is the
    NumPy sampler's, written from the fertility HMM's conditionals."""
    from calign import _C

    pairs, hmm, arrays, start = sampler_inputs()
    post, last = _C.wa_fertility_sample(hmm.c_model, *arrays, max_fertility=2,
                                        fertility_prior=0.7, burn_in=2, samples=3, seed=12345,
                                        start=start, link_cache_bytes=1 << 30 if cached else 0)
    ids = id_pairs(hmm, pairs)
    starts = np.split(start.astype(int), arrays[3][1:-1])
    expected = ref.fertility_sample(ids, dense_table(hmm), hmm.jump, hmm.p0, starts,
                                    len(hmm.source_vocab), 2, 0.7, 5, 2, 12345)
    np.testing.assert_array_equal(last, np.concatenate(starts))  # the reference's last sample
    np.testing.assert_array_equal(post, np.concatenate([p.ravel() for p in expected]))
    # start=None starts from the Viterbi links: the same run
    again, _ = _C.wa_fertility_sample(hmm.c_model, *arrays, max_fertility=2, fertility_prior=0.7,
                                      burn_in=2, samples=3, seed=12345)
    np.testing.assert_array_equal(again, post)


def test_fertility_sampler_does_not_depend_on_threads(calign_threads):
    from calign import _C

    _, hmm, arrays, start = sampler_inputs(4500)  # above 32768 target words
    results = []
    for threads in (1, 2):
        calign_threads(threads)
        results.append(_C.wa_fertility_sample(hmm.c_model, *arrays, max_fertility=3,
                                              fertility_prior=1.0, burn_in=1, samples=3,
                                              seed=7, link_cache_bytes=0)[0])
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
    expected = [((f[:, 1:].T + r[:, 1:]) / 2 > 0.45).ravel() for f, r in zip(forward, reverse, strict=True)]
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
                                                    for f, r in zip(forward, reverse, strict=True)]
    post = model.posteriors(pairs[0])  # fertility learned on this pair alone, as align([pair])
    assert post.shape == (len(pairs[0][0]), len(pairs[0][1]))
    assert [tuple(map(int, x)) for x in zip(*np.nonzero(post > model.threshold), strict=True)] == \
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
    for kwargs, message in (({"threshold": 1.0}, "threshold must be a finite number in"),
                            ({"burn_in": -1}, "burn_in must be an integer"),
                            ({"samples": 0}, "samples must be an integer"),
                            ({"max_fertility": 0}, "max_fertility must be an integer"),
                            ({"max_fertility": 65},
                             r"max_fertility must be an integer in \[1, 64\]"),
                            ({"fertility_prior": float("nan")}, "fertility_prior must be"),
                            ({"seed": -1}, "seed must be an integer"),
                            ({"p0": 1.5}, "p0 must be a finite number in"),
                            ({"max_jump": 65}, "max_jump must be an integer in")):
        with pytest.raises(ValueError, match=message):
            wa.JointHMM(**kwargs)
    with pytest.raises(ValueError, match="not trained"):
        wa.JointHMM().align(SMALL)
    with pytest.raises(ValueError, match=r"iterations must be an integer in \[1, 2147483647\]"):
        wa.JointHMM().fit(SMALL, 0)
    model = wa.JointHMM().fit(SMALL, 1)
    with pytest.raises(ValueError, match="method must be one of"):
        model.align(SMALL, "gdfa")
    with pytest.raises(ValueError, match="threshold must be a finite number in"):
        model.align(SMALL, threshold=-0.1)
    with pytest.raises(TypeError, match="list of string tokens"):
        model.align([(["a", 1], ["b"])])


def test_sampler_and_soft_union_bad_arrays():
    from calign import _C

    _, hmm, arrays, start = sampler_inputs(5)
    settings = dict(max_fertility=3, fertility_prior=1.0, burn_in=1, samples=1, seed=0)
    bad = start.copy()
    bad[0] = 99
    with pytest.raises(ValueError, match="start: pair 0 links a target word to source position 99"):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **settings, start=bad)
    with pytest.raises(ValueError, match=r"start\[0\] holds -1, outside \[0, "):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **settings, start=np.full_like(start, -1))
    with pytest.raises(ValueError, match="start has length .* but target_ids has length"):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **settings, start=start[1:])
    with pytest.raises(TypeError, match="start must have an integer dtype"):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **settings, start=start.astype(np.float64))
    with pytest.raises(ValueError, match=r"max_fertility must be an integer in \[1, 64\], got 0"):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **{**settings, "max_fertility": 0})
    with pytest.raises(ValueError, match="fertility_prior must be a finite number > 0, got 0"):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **{**settings, "fertility_prior": 0.0})
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64 - 1\]"):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **{**settings, "seed": -1})
    with pytest.raises(ValueError, match=r"burn_in \+ samples must be at most 2147483647"):
        _C.wa_fertility_sample(hmm.c_model, *arrays, **{**settings, "burn_in": 2**31 - 1})
    with pytest.raises(ValueError, match="forward has 3 posteriors but the offsets need"):
        _C.wa_soft_union(arrays[1], arrays[3], np.zeros(3), np.zeros(3), 0.5)
    with pytest.raises(TypeError, match="reverse must be a contiguous float64 vector"):
        _C.wa_soft_union(arrays[1], arrays[3], np.zeros(3), np.zeros(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="target_offsets has length 1 but source_offsets has"):
        _C.wa_soft_union(arrays[1], arrays[3][:1], np.zeros(3), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="threshold must be a finite number in"):
        _C.wa_soft_union(arrays[1], arrays[3], np.zeros(3), np.zeros(3), float("nan"))


# ---- bad input: clear errors before any long computation ------------------------------------

TINY = [(["a", "b"], ["x", "y"]), (["b", "c"], ["y", "z"]), (["a"], ["x"])]


def test_constructor_counts_and_probabilities_are_checked():
    for make, message in ((lambda: wa.HMM(ibm1_iterations=-1), r"ibm1_iterations must be an "
                                                              r"integer in \[0, 2147483647\]"),
                          (lambda: wa.JointHMM(ibm1_iterations=-1), "ibm1_iterations must be"),
                          (lambda: wa.HMM(ibm1_iterations=2.5), "ibm1_iterations must be an"),
                          (lambda: wa.HMM(ibm1_iterations=True), "ibm1_iterations must be an"),
                          (lambda: wa.HMM(max_jump=np.float64(3)), "max_jump must be an integer"),
                          (lambda: wa.HMM(p0="a"),
                           r"p0 must be a finite number in \(0, 1\), got 'a'"),
                          (lambda: wa.HMM(p0=True), r"p0 must be a finite number in \(0, 1\)"),
                          (lambda: wa.IBM2(p0=float("nan")),
                           r"p0 must be a finite number in \[0, 1\)"),
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
    from calign.wordalign.ibm import ALPHA_MAX

    for alpha in (1e308, float("inf"), -0.1, True, "0.1"):
        with pytest.raises(ValueError,
                           match=r"alpha must be a finite number in \[0, 4\.18\d*e\+298\]"):
            make(alpha=alpha)
    model = make(alpha=ALPHA_MAX).fit(TINY, 2)  # the largest allowed: rows uniform, no NaN
    assert np.isfinite(model.log_likelihoods).all()


def test_em_breakdown_is_a_floating_point_error_not_out_of_memory():
    from calign import _C
    from calign.wordalign.corpus import flatten

    for make, phase in ((lambda: wa.IBM1(), (0, 2)), (lambda: wa.HMM(alpha=0.0), (0, 3)),
                        (lambda: wa.HMM(alpha=0.0), (2, 3))):
        model = make().fit(SMALL, 1)
        arrays = flatten(SMALL, model.source_vocab, model.target_vocab, grow=False)
        row_start, cols, prob = model.table
        # a table of zeros: every pair has probability 0
        _C.wa_model_set_table(model.c_model, row_start, cols, np.zeros_like(prob),
                              target_vocabulary_size=len(model.target_vocab))
        ibm1_iterations, iterations = phase
        with pytest.raises(FloatingPointError,
                           match=f"EM iteration 1 of {ibm1_iterations or iterations}: the "
                                 "log-likelihood is (-inf|NaN): the model broke down"):
            _C.wa_train(model.c_model, *arrays, iterations=iterations,
                        ibm1_iterations=ibm1_iterations)
    with pytest.raises(ValueError, match=r"iterations must be an integer in \[0, 2147483647\], "
                                         "got -1"):
        _C.wa_train(model.c_model, *arrays, iterations=-1)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0, got nan"):
        _C.wa_model_new(kind="hmm", p0=0.1, max_jump=2, alpha=float("nan"))
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
                          r"iterations must be an integer in \[1, 2147483647\]"),
                         (lambda: wa.JointHMM().fit(SMALL, iterations=10**12),
                          r"iterations must be an integer in \[1, 2147483647\]"),
                         (lambda: wa.HMM().fit(SMALL, iterations=2.0),
                          r"iterations must be an integer in \[1, 2147483647\]"),
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
        with pytest.raises(ValueError, match=r"threshold must be a finite number in \[0, 1\), got"):
            model.align(SMALL, threshold=bad)
    for bad in (np.bool_(False), float("nan"), "0.5"):
        with pytest.raises(ValueError, match=r"threshold must be a finite number in \[0, 1\], got"):
            ibm2.align(SMALL, "posterior", bad)
        with pytest.raises(ValueError, match=r"threshold must be a finite number in \[0, 1\], got"):
            wa.OTAligner(threshold=bad)


# ---- the models' state in C (a capsule), files of the previous format, keyword calls --------

SAVED_V1 = __import__("os").path.join(__import__("os").path.dirname(__file__), "data", "wordalign",
                                      "saved_v1")


def assert_same_state(a, b):
    """Two models' tables, settings and vocabularies are identical, bit for bit."""
    for x, y in zip(a.table, b.table, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    from calign import _C

    sa, sb = _C.wa_model_settings(a.c_model), _C.wa_model_settings(b.c_model)
    if sa["jump"] is not None:
        np.testing.assert_array_equal(sa.pop("jump"), sb.pop("jump"))
    assert sa == sb
    assert a.source_vocab.ids == b.source_vocab.ids and a.target_vocab.ids == b.target_vocab.ids


@pytest.mark.parametrize("make", [lambda: wa.IBM1(alpha=0.05), lambda: wa.IBM2(reverse=True),
                                  lambda: wa.HMM(max_jump=3)])
def test_fitted_model_survives_save_load_and_pickle_bit_for_bit(make, tmp_path):
    import copy
    import pickle

    pairs, _, _ = wa.synthetic_corpus(200, seed=6)
    model = make().fit(pairs, 3)
    path = str(tmp_path / "model.npz")
    model.save(path)
    loaded = type(model).load(path)
    assert_same_state(model, loaded)
    assert loaded.align(pairs[:50]) == model.align(pairs[:50])
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), copy.copy(model)):
        assert_same_state(model, clone)
        assert clone.c_model is not model.c_model  # its own C model: training one leaves the other
    clone.fit(pairs[:20], 1)
    assert len(model.table[2]) != len(clone.table[2])
    assert pickle.loads(pickle.dumps(make())).table is None  # unfitted models too


def test_joint_hmm_survives_save_load_bit_for_bit(tmp_path):
    model = wa.JointHMM(samples=2, burn_in=1).fit(TINY, 2)
    model.save(str(tmp_path / "joint.npz"))
    loaded = wa.JointHMM.load(str(tmp_path / "joint.npz"))
    assert_same_state(model.forward, loaded.forward)
    assert_same_state(model.reverse, loaded.reverse)


@pytest.mark.parametrize("name,load", [("ibm1", wa.IBM1.load), ("ibm2", wa.IBM2.load),
                                       ("hmm", wa.HMM.load), ("joint", wa.JointHMM.load)])
def test_models_saved_in_the_previous_format_align_identically(name, load):
    """Files saved by calign before its models moved into C (saved_v1/README.md)."""
    import json
    import os

    with open(os.path.join(SAVED_V1, "expected.json")) as f:
        expected = json.load(f)[name]
    pairs = wa.read_fast_align(os.path.join(SAVED_V1, "..", "gold.en-fr.txt"))
    model = load(os.path.join(SAVED_V1, name + ".npz"))
    links = [[list(link) for link in pair] for pair in model.align(pairs)]
    assert links == expected["align"]
    if name != "joint":
        assert [[list(link) for link in pair] for pair in model.align(pairs, "posterior", 0.3)] \
            == expected["posterior_links"]
    # the same numbers up to rounding (the kernels' SIMD variant depends on the CPU)
    np.testing.assert_allclose(model.posteriors(pairs[0]), np.array(expected["posteriors_0"]),
                               rtol=1e-12, atol=1e-15)


def test_a_model_written_by_hand_in_the_file_format(tmp_path):
    """The .npz format, written without calign: the table's three arrays and
    the JSON metadata; a table that does not fit is refused naming the file."""
    import json

    def write(path, cols, prob):
        meta = {"format": "calign.wordalign/1", "model": "IBM1", "reverse": False, "alpha": 0.0,
                "p0": 0.0, "tension": 0.0, "source_vocab": {"a": 1, "b": 2},
                "target_vocab": {"x": 1, "y": 2}}
        np.savez(path, row_start=np.array([0, 2, 3, 4], np.int64), cols=np.array(cols, np.int32),
                 prob=np.array(prob), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
        return str(path)

    model = wa.IBM1.load(write(tmp_path / "m.npz", [1, 2, 1, 2], [0.5, 0.5, 1.0, 1.0]))
    assert model.align([(["a", "b"], ["y", "x"])]) == [[(0, 1), (1, 0)]]
    np.testing.assert_array_equal(model.posteriors((["a"], ["x"])), [[1 / 3, 2 / 3]])
    for cols, prob, message in (([2, 1, 1, 2], [0.5] * 4, "cols must increase within each row"),
                                ([1, 2, 1, 3], [0.5] * 4, r"cols\[3\] holds 3, outside \[1, 3\)"),
                                ([1, 2, 1, 2], [0.5, 0.5, 1.5, 1.0], r"prob\[2\] = 1.5 is not a"),
                                ([1, 2, 1, 2], [0.5, np.nan, 1, 1], "prob contains NaN")):
        path = write(tmp_path / "bad.npz", cols, prob)
        with pytest.raises(ValueError, match=f"{path!r} is not a saved IBM1 model: {message}"):
            wa.IBM1.load(path)


def test_keyword_calls_name_the_python_arguments():
    from calign import _C
    from calign.wordalign.corpus import flatten

    model = wa.HMM(p0=0.2, max_jump=2).fit(SMALL, 2)
    source_ids, source_offsets, target_ids, target_offsets = flatten(
        SMALL, model.source_vocab, model.target_vocab)
    corpus = dict(source_ids=source_ids, source_offsets=source_offsets, target_ids=target_ids,
                  target_offsets=target_offsets)
    c_model = _C.wa_model_new(kind="hmm", p0=0.2, max_jump=2, alpha=0.1)
    _C.wa_start(model=c_model, **corpus, source_vocabulary_size=len(model.source_vocab),
                target_vocabulary_size=len(model.target_vocab))
    lls = _C.wa_train(model=c_model, **corpus, iterations=2, ibm1_iterations=5,
                      link_cache_bytes=0)
    assert lls == model.log_likelihoods
    np.testing.assert_array_equal(_C.wa_model_table(model=c_model)[2], model.table[2])
    np.testing.assert_array_equal(_C.wa_posteriors(model=c_model, **corpus),
                                  _C.wa_posteriors(model.c_model, *corpus.values()))
    cost, a, b = ot_problem(4)
    plan, iterations = _C.ot_transport(cost=cost, a=a, b=b, kind="partial", reg=0.05, reg_m=1.0,
                                       mass=0.5, max_iterations=500, tolerance=1e-9)
    np.testing.assert_array_equal(plan, wa.transport_plan(cost, a, b, "partial", reg=0.05,
                                                          mass=0.5, max_iterations=500,
                                                          tolerance=1e-9))
    assert 0 < iterations <= 500
    with pytest.raises(TypeError, match="'iteration' is an invalid keyword argument"):
        _C.wa_train(c_model, **corpus, iterations=1, iteration=1)


def test_c_model_bad_settings_and_tables_are_named():
    from calign import _C

    for kwargs, error, message in (
            ({"kind": "ibm3"}, ValueError, r"kind must be one of \['ibm1', 'ibm2', 'hmm'\], got 'ibm3'"),
            ({"kind": "ibm2", "p0": 1.0}, ValueError, r"p0 must be a finite number in \[0, 1\)"),
            ({"kind": "hmm", "p0": 0.0, "max_jump": 1}, ValueError, r"p0 must be in \(0, 1\)"),
            ({"kind": "ibm2", "tension": True}, TypeError, "tension must be a real number"),
            ({"kind": "ibm2", "alpha": "0.1"}, TypeError, "alpha must be a real number"),
            ({"kind": "ibm1", "max_jump": 3}, ValueError,
             "max_jump and jump are settings of an HMM"),
            ({"kind": "hmm", "p0": 0.1, "max_jump": 0}, ValueError,
             r"max_jump must be in \[1, 64\]"),
            ({"kind": "hmm", "p0": 0.1, "max_jump": 65}, ValueError, "max_jump must be an integer"),
            ({"kind": "hmm", "p0": 0.1, "max_jump": 1, "jump": [1.0, 1.0]}, ValueError,
             r"jump must hold 2 max_jump \+ 1 = 3 weights, got 2"),
            ({"kind": "hmm", "p0": 0.1, "max_jump": 1, "jump": [1.0, -1.0, 1.0]}, ValueError,
             r"jump\[1\] = -1 is not a finite weight >= 0"),
            ({"kind": "hmm", "p0": 0.1, "max_jump": 1, "jump": [1.0, np.inf, 1.0]}, ValueError,
             "jump contains NaN or infinity")):
        with pytest.raises(error, match=message):
            _C.wa_model_new(**kwargs)
    c_model = _C.wa_model_new(kind="ibm1")
    assert _C.wa_model_table(c_model) is None
    table = dict(row_start=[0, 1, 2], cols=[1, 2], prob=[1.0, 1.0], target_vocabulary_size=3)
    for change, error, message in (
            ({"row_start": [0, 2, 1]}, ValueError, "row_start must run from 0 to the 2 entries"),
            ({"row_start": [0, 2, 1, 2]}, ValueError, "row_start decreases after row 1"),
            ({"row_start": []}, ValueError, "row_start must hold at least one offset"),
            ({"prob": [1.0]}, ValueError, "prob has length 1 but cols has length 2"),
            ({"cols": [1, 3]}, ValueError, r"cols\[1\] holds 3, outside \[1, 3\)"),
            ({"row_start": [0, 2, 2], "cols": [2, 1]}, ValueError,
             "cols must increase within each row; row 0 does not"),
            ({"cols": np.array([1.0, 2.0])}, TypeError, "cols must have an integer dtype"),
            ({"target_vocabulary_size": 0}, ValueError, "target_vocabulary_size must be an")):
        with pytest.raises(error, match=message):
            _C.wa_model_set_table(c_model, **{**table, **change})
    assert _C.wa_model_table(c_model) is None  # a refused table leaves none
    with pytest.raises(TypeError, match="model must be a word-alignment model"):
        _C.wa_model_table(np.zeros(3))
    with pytest.raises(TypeError, match="forward must be a word-alignment model"):
        _C.wa_train_joint("forward", c_model, [], [0], [], [0], iterations=1)


def test_c_corpus_and_training_errors_are_named():
    from calign import _C
    from calign.wordalign.corpus import flatten

    model = wa.HMM().fit(SMALL, 1)
    arrays = flatten(SMALL, model.source_vocab, model.target_vocab, grow=False)
    corpus = dict(zip(("source_ids", "source_offsets", "target_ids", "target_offsets"), arrays, strict=True))
    n_source = len(model.source_vocab)
    for change, message in (
            ({"source_ids": np.full_like(arrays[0], n_source)},
             rf"source_ids\[0\] holds {n_source}, outside \[1, {n_source}\) \(the model's source "),
            ({"target_ids": np.zeros_like(arrays[2])}, r"target_ids\[0\] holds 0, outside \[1, "),
            ({"source_offsets": arrays[1][::-1].copy()}, "source_offsets must run from 0 to the "),
            ({"target_offsets": arrays[3][:-1]}, "target_offsets has length 7 but source_offsets"),
            ({"source_offsets": np.array([0, 4, 2, 6, 7, 7, 9, 12])},
             r"source_offsets must not decrease \(pair 1\)"),
            ({"source_offsets": []}, r"source_offsets must hold at least one offset \(0\)")):
        with pytest.raises(ValueError, match=message):
            _C.wa_train(model.c_model, **{**corpus, **change}, iterations=1)
    # the corpus must be the one the model was started on
    other = [(["the", "book"], ["haus"])]
    ids = flatten(other, model.source_vocab, model.target_vocab, grow=False)
    with pytest.raises(ValueError, match="the model's translation table lacks a word pair of "
                                         "pair 0 of the corpus"):
        _C.wa_train(model.c_model, *ids, iterations=1)
    with pytest.raises(ValueError, match="no translation table: start it on a corpus first"):
        _C.wa_train(_C.wa_model_new(kind="ibm1"), *arrays, iterations=1)
    with pytest.raises(ValueError, match="Viterbi decoding needs an HMM, not ibm2"):
        _C.wa_viterbi(wa.IBM2().fit(SMALL, 1).c_model, *arrays)
    with pytest.raises(ValueError, match="the fertility sampler needs an HMM, not ibm1"):
        _C.wa_fertility_sample(wa.IBM1().fit(SMALL, 1).c_model, *arrays, max_fertility=3,
                               fertility_prior=1.0, burn_in=0, samples=1, seed=0)
    with pytest.raises(ValueError, match="forward and reverse must be two models"):
        _C.wa_train_joint(model.c_model, model.c_model, *arrays, iterations=1)
    ibm = wa.IBM1().fit(SMALL, 1)
    with pytest.raises(ValueError, match="forward and reverse must be HMMs"):
        _C.wa_train_joint(ibm.c_model, model.c_model, *arrays, iterations=1)


def test_ot_bad_arguments_are_named():
    from calign import _C

    cost, a, b = ot_problem(5, n=3, m=4)
    args = dict(cost=cost, a=a, b=b, kind="balanced", reg=0.1, reg_m=1.0, mass=1.0,
                max_iterations=100, tolerance=1e-9)
    for change, error, message in (
            ({"kind": "sliced"}, ValueError, r"kind must be one of \['balanced', 'unbalanced', "
                                             r"'partial'\], got 'sliced'"),
            ({"kind": 2}, TypeError, "must be str, not int"),
            ({"reg": 0.0}, ValueError, "reg must be a finite number > 0, got 0"),
            ({"reg_m": -1.0, "kind": "unbalanced"}, ValueError,
             "reg_m must be a finite number > 0"),
            ({"mass": 0.0, "kind": "partial"}, ValueError, "mass must be a finite number > 0"),
            ({"mass": np.nan}, ValueError, "mass must be a finite number, got nan"),
            ({"a": np.zeros(3)}, ValueError, r"the masses must be > 0, but a\[0\] = 0"),
            ({"b": b[:2]}, ValueError, "b has length 2 but cost's columns has length 4"),
            ({"max_iterations": -1}, ValueError, r"max_iterations must be an integer in \[0, "),
            ({"tolerance": -1.0}, ValueError, "max_iterations and tolerance must be >= 0"),
            ({"cost": np.zeros((2**31, 0))}, ValueError,
             "cost has 2147483648 rows, more than a C int holds")):
        with pytest.raises(error, match=message):
            _C.ot_transport(**{**args, **change})
    with pytest.raises(ValueError, match="distortion must be a finite number, got inf"):
        _C.ot_cost(np.ones((2, 3)), np.ones((2, 3)), distortion=np.inf)
    with pytest.raises(ValueError, match="source_embeddings has 2147483648 rows, more than a C"):
        _C.ot_cost(np.zeros((2**31, 0)), np.ones((2, 0)), distortion=0.0)
    with pytest.raises(ValueError, match=r"b must be positive masses"):
        wa.transport_plan(cost, a, -b)
    assert set(wa.optimal_transport.KINDS) == {"balanced", "unbalanced", "partial"}
    for kind in wa.optimal_transport.KINDS:  # every Python name is one the C solvers know
        _C.ot_transport(**{**args, "kind": kind, "mass": 0.5})


def test_a_model_in_use_by_another_thread_is_refused_not_shared():
    import threading

    from calign import _C
    from calign.wordalign.corpus import flatten

    pairs, _, _ = wa.synthetic_corpus(2000, seed=8)
    model = wa.HMM().fit(pairs, 1)
    arrays = flatten(pairs, model.source_vocab, model.target_vocab)
    trainer = threading.Thread(target=_C.wa_train, args=(model.c_model, *arrays),
                               kwargs={"iterations": 40})
    trainer.start()
    refused = None
    while trainer.is_alive() and refused is None:  # the training call releases the GIL
        try:
            _C.wa_model_table(model.c_model)
        except RuntimeError as exc:
            refused = exc
    trainer.join()
    assert "model is being used by another thread" in str(refused)
    assert len(_C.wa_model_table(model.c_model)) == 3  # free again once the call returned
