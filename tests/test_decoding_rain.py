"""RAIN (calign.decoding.rain): Eq. 1's selection, the backup and Eq. 2's
similarity update by hand, and whole searches on a tiny model."""

import numpy as np
import pytest

import calign
from calign.decoding import rain
from calign.decoding.rain import Bounds, Node, backup, rain_generate, select_child
from calign.testing.models import tiny_config
from calign.testing.threads import num_threads
from calign.testing.wordtokenizer import save_word_tokenizer, word_list

SMALL = dict(max_new_tokens=6, max_searches=4, min_searches=2, max_rollout_tokens=4,
             n_candidates=4, token_set_lengths=(1, 2, 3))


def visited(node, n, q, embedding=None):
    node.n, node.fn, node.q = float(n), int(n), q
    node.embedding = None if embedding is None else np.asarray(embedding, np.float64)
    return node


def test_selection_is_eq1_with_normalised_q():
    root = visited(Node((), 1.0), 10, 0.0)
    a = visited(Node((1,), 0.5, root), 4, 0.5)
    b = Node((2,), 0.3, root)
    c = visited(Node((3,), 0.2, root), 6, 0.9)
    root.children = [a, b, c]
    # by hand, c = 2, q normalised with min -1, max 1:
    # a: (0.5 + 1) / (2 + 1e-5) + 2 * 0.5 * sqrt(10) / 5 = 0.74999625 + 0.63245553 = 1.38245178
    # b: 0 (unvisited) + 2 * 0.3 * sqrt(10) / 1 = 1.89736660
    # c: 1.9 / 2.00001 + 2 * 0.2 * sqrt(10) / 7 = 0.94999525 + 0.18070158 = 1.13069683
    bounds = Bounds()
    assert rain.selection_score(a, 10, bounds, 2.0) == pytest.approx(1.38245178)
    assert rain.selection_score(c, 10, bounds, 2.0) == pytest.approx(1.13069683)
    assert select_child(root, bounds) is b
    visited(b, 3, -1.0)  # b: 0 + 2 * 0.3 * sqrt(10) / 4 = 0.47434165
    assert select_child(root, bounds) is a
    assert select_child(root, bounds, c_puct=0.0) is c  # the value alone
    bounds.see(-3.0)  # a wider range shrinks qh: a 3.5/4 + 0.632 = 1.507, c 3.9/4 + 0.181 = 1.156
    assert rain.selection_score(a, 10, bounds, 2.0) == pytest.approx(3.5 / 4.00001 + 0.63245553)


def test_ties_select_the_first_child():
    root = visited(Node((), 1.0), 2, 0.0)
    root.children = [Node((5,), 0.5, root), Node((6,), 0.5, root)]
    assert select_child(root, Bounds()) is root.children[0]


def test_backup_and_similarity_update_by_hand():
    root = visited(Node((), 1.0), 3, 0.0)
    x = visited(Node((1,), 0.4, root), 2, 0.5, [1.0, 0.0])
    y = visited(Node((2,), 0.4, root, depth=1), 1, -1.0, [1.0, 0.1])
    w = visited(Node((3,), 0.2, root), 1, 0.2, [0.0, 1.0])
    root.children = [x, y, w]
    z = Node((4, 5), 1.0, y, depth=2)
    y.children = [z]
    bounds = Bounds()
    backup(z, 1.0, {z: np.array([0.0, 2.0]), y: np.array([1.0, 0.0])}, bounds)
    # z: n 1, q = 0 + (1 - 0) / 1 = 1, its embedding its first path embedding
    assert (z.n, z.fn, z.q) == (1.0, 1, 1.0)
    np.testing.assert_array_equal(z.embedding, [0.0, 2.0])
    # y: n 2, embedding [1, 0.1] + ([1, 0] - [1, 0.1]) / 2 = [1, 0.05], q = -1 + 2 / 2 = 0
    assert (y.n, y.fn, y.q) == (2.0, 2, 0.0)
    np.testing.assert_allclose(y.embedding, [1.0, 0.05])
    # x: cos([1, 0.05], [1, 0]) = 1 / sqrt(1.0025) = 0.99875234 >= 0.95, weight 0.2 of it:
    # n = 2 + 0.19975047 = 2.19975047, q = (0.5 * 2 + 0.19975047 * 1) / 2.19975047 = 0.54460...
    assert x.n == pytest.approx(2.19975047)
    assert x.q == pytest.approx(1.19975047 / 2.19975047)
    assert x.fn == 2
    # w: cos([1, 0.05], [0, 1]) = 0.0499 < 0.95: unchanged
    assert (w.n, w.q) == (1.0, 0.2)
    # the root: n 4, q = 0 + (1 - 0) / 4
    assert (root.n, root.fn, root.q) == (4.0, 4, 0.25)
    assert (bounds.min_q, bounds.max_q) == (-1.0, 1.0)  # q stays in [-1, 1]


def test_most_visited_breaks_ties_by_value():
    root = Node((), 1.0)
    root.children = [visited(Node((1,), 0.5, root), 3, 0.1),
                     visited(Node((2,), 0.5, root), 3, 0.7),
                     visited(Node((3,), 0.5, root), 2, 0.9)]
    assert rain.most_visited(root) is root.children[1]
    np.testing.assert_allclose(rain.smoothed([0.6, 0.3, 0.1], 0.75),
                               [0.75 * p + 0.25 / 3 for p in (0.6, 0.3, 0.1)])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    words = word_list(40) + ["A", "B", "Human:", "Assistant:", ".", ","]
    return calign.Tokenizer.from_pretrained(str(save_word_tokenizer(
        tmp_path_factory.mktemp("rain_words"), words, pre_tokenizer="whitespace")))


@pytest.fixture(scope="module")
def model(tokenizer):
    return calign.Model.from_config(tiny_config("llama", vocab_size=tokenizer.vocab_size,
                                                num_hidden_layers=1), seed=1)


def test_same_seed_same_answer_at_any_thread_count(model, tokenizer):
    runs = []
    for threads in (1, 2):
        with num_threads(threads):
            runs.append(rain_generate(model, tokenizer, "w1 w2 w3", seed=7, return_details=True,
                                      **SMALL))
    assert runs[0]["tokens"] == runs[1]["tokens"] and runs[0]["answer"] == runs[1]["answer"]
    assert runs[0]["searches"] == runs[1]["searches"]
    assert 1 <= len(runs[0]["tokens"]) <= 6
    assert all(n >= 2 for n in runs[0]["searches"])  # at least min_searches a step
    assert runs[0]["judge_calls"] == runs[1]["judge_calls"]


def test_moves_reuse_the_cache(model, tokenizer, monkeypatch):
    appended = []
    original = calign.decoding.session.Session.append_batch

    def recording(self, slots, input_ids, **kwargs):
        appended.extend((slot, len(ids)) for slot, ids in zip(slots, input_ids))
        return original(self, slots, input_ids, **kwargs)

    monkeypatch.setattr(calign.decoding.session.Session, "append_batch", recording)
    details = rain_generate(model, tokenizer, "w4 w5", seed=1, return_details=True, **SMALL)
    prompt_length = len(tokenizer.encode("Human: w4 w5\n\nAssistant:"))
    cursor = [n for slot, n in appended if slot == 0]
    assert cursor[0] == prompt_length  # the prompt, once
    assert max(cursor[1:]) <= 3 * 2  # afterwards only a path's token sets, never the prompt
    assert details["judge_calls"] >= 1


def test_judge_verdict_from_both_option_orders(model, tokenizer):
    a, b = rain.judge_option_ids(tokenizer)
    assert (tokenizer.decode([a]), tokenizer.decode([b])) == ("A", "B")
    settings = dict(max_new_tokens=6, token_set_lengths=(1,), n_candidates=3, top_k=15,
                    max_rollout_tokens=2, judge_instruction=rain.JUDGE_INSTRUCTION, eos={1})
    search = rain.RainSearch(model, tokenizer, "w9", tokenizer.encode("Human: w9"), settings,
                             np.random.default_rng(0))
    for response in ("w1 w2", "w3 .", "w30 w31 w32"):
        head = tokenizer.encode(rain.JUDGE_INSTRUCTION)
        body = tokenizer.encode(f"\n\nHuman: w9\n\nAssistant: {response}\n",
                                add_special_tokens=False)
        verdicts = []
        for options, harmless in ((rain.OPTIONS_HARMLESS_FIRST, a),
                                  (rain.OPTIONS_HARMFUL_FIRST, b)):
            ids = head + body + tokenizer.encode(options, add_special_tokens=False)
            logits = model.logits([ids])[0, -1]
            verdicts.append(1 if logits[harmless] > logits[a + b - harmless] else 0)
        assert search.evaluate(response) == (sum(verdicts) / 2 - 0.5) * 2
    assert search.evaluations == 3
    search.evaluate("w1 w2")  # cached by text
    assert search.evaluations == 3


def test_bad_input(model, tokenizer, tmp_path):
    plain = calign.Tokenizer.from_pretrained(str(save_word_tokenizer(tmp_path, vocab_size=50)))
    with pytest.raises(ValueError, match="tokenizer must be a tokenizer whose vocabulary holds"):
        rain_generate(model, plain, "w1", **SMALL)
    with pytest.raises(ValueError, match="token_set_lengths must be a non-empty list"):
        rain_generate(model, tokenizer, "w1", **dict(SMALL, token_set_lengths=(1, 0)))
    with pytest.raises(ValueError, match="query must be a non-empty string"):
        rain_generate(model, tokenizer, "", **SMALL)
    with pytest.raises(ValueError, match="similarity_threshold must be"):
        rain_generate(model, tokenizer, "w1", similarity_threshold=2.0)
    with pytest.raises(ValueError, match="max_new_tokens must be small enough"):
        rain_generate(model, tokenizer, "w1", max_new_tokens=10_000)
