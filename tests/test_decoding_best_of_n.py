"""Best-of-N (calign.decoding.best_of_n): shared-prefill samples, scored, the best kept."""

import numpy as np
import pytest

import calign
from calign.decoding.best_of_n import best_of_n
from calign.testing.models import tiny_config
from calign.testing.threads import num_threads
from calign.testing.wordtokenizer import save_word_tokenizer

SAMPLING = dict(max_new_tokens=6, temperature=1.0, seed=3)


@pytest.fixture(scope="module")
def model():
    return calign.Model.from_config(tiny_config("qwen2", vocab_size=40), seed=2)


@pytest.fixture(scope="module")
def reward_model():
    return calign.RewardModel.from_config(tiny_config("llama", vocab_size=40), seed=4)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return calign.Tokenizer.from_pretrained(str(save_word_tokenizer(
        tmp_path_factory.mktemp("words"), vocab_size=40)))


PROMPTS = [[3, 4, 5], [9, 8]]


def count_of_seven(prompts, completions):
    return [c.count(7) - 0.01 * len(c) for c in completions]


def test_best_is_the_argmax_over_generates_samples(model):
    result = best_of_n(model, PROMPTS, count_of_seven, n=5, return_all=True, **SAMPLING)
    samples = model.generate(PROMPTS, do_sample=True, num_return_sequences=5, **SAMPLING)
    assert result.completions == [samples[:5], samples[5:]]
    expected = np.array(count_of_seven(None, samples)).reshape(2, 5)
    np.testing.assert_array_equal(result.scores, expected)
    assert result.best == [samples[int(np.argmax(expected[0]))],
                           samples[5 + int(np.argmax(expected[1]))]]
    assert best_of_n(model, PROMPTS, count_of_seven, n=5, **SAMPLING) == result.best


def test_ties_go_to_the_lowest_index(model):
    result = best_of_n(model, PROMPTS, lambda p, c: [1.0] * len(c), n=4, return_all=True,
                       **SAMPLING)
    assert result.best == [result.completions[0][0], result.completions[1][0]]
    assert len(set(map(tuple, result.completions[0]))) > 1  # the samples differ


def test_same_seed_same_answer_at_any_thread_count(model):
    runs = []
    for threads in (1, 2):
        with num_threads(threads):
            runs.append(best_of_n(model, PROMPTS, count_of_seven, n=6, return_all=True,
                                  **SAMPLING))
    assert runs[0].completions == runs[1].completions and runs[0].best == runs[1].best


def test_reward_model_on_ids(model, reward_model):
    result = best_of_n(model, PROMPTS, reward_model, n=3, return_all=True, **SAMPLING)
    flat = [c for group in result.completions for c in group]
    expected = reward_model.score([PROMPTS[k // 3] + c for k, c in enumerate(flat)])
    np.testing.assert_allclose(result.scores.ravel(), expected, rtol=1e-6)
    assert result.best[1] == result.completions[1][int(np.argmax(expected[3:]))]


def test_reward_model_on_text_with_its_tokenizer(model, reward_model, tokenizer):
    prompts = ["w1 w2 w3", "w7"]
    result = best_of_n(model, prompts, reward_model, n=3, tokenizer=tokenizer,
                       return_all=True, **SAMPLING)
    assert all(isinstance(c, str) for group in result.completions for c in group)
    texts = [prompts[i] + c for i, group in enumerate(result.completions) for c in group]
    expected = reward_model.score([tokenizer.encode(t, add_special_tokens=False) or [1]
                                   for t in texts])
    np.testing.assert_allclose(result.scores.ravel(), expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(scorer=lambda p, c: [0.0]), "scorer must return 4 scores"),
    (dict(scorer=lambda p, c: [0.0, np.nan, 0, 0]), "scorer returned nan for completion 1"),
    (dict(scorer="best"), "scorer must be a calign.RewardModel or a callable"),
    (dict(scorer=count_of_seven, n=0), "n must be an integer in"),
    (dict(scorer=count_of_seven, prompts=["w1"]), "pass tokenizer="),
    (dict(scorer=count_of_seven, prompts=[]), "prompts must be a non-empty list"),
])
def test_bad_input(model, kwargs, message):
    arguments = dict(prompts=PROMPTS, n=2, **SAMPLING)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        best_of_n(model, arguments.pop("prompts"), arguments.pop("scorer"), **arguments)
