"""calign.decoding.Session: a KV cache that outlives calls, against Model.logits."""

import numpy as np
import pytest

import calign
from calign.decoding import Session
from calign.testing.models import FAMILIES, tiny_config


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return calign.Model.from_config(tiny_config(request.param), seed=3)


def tokens(model, n, seed=0):
    return np.random.default_rng(seed).integers(0, model.vocab_size, n)


def test_append_rewind_reappend_equals_full_logits(model):
    ids = tokens(model, 21)
    full = model.logits([ids])[0]
    session = Session(model, n_slots=2, capacity=32)
    np.testing.assert_allclose(session.append(0, ids[:5], all_logits=True), full[:5], atol=1e-5)
    for t in range(5, 14):  # one token at a time, as decoding goes
        np.testing.assert_allclose(session.append(0, [ids[t]]), full[t], atol=1e-5)
    session.truncate(0, 8)  # back to 8 tokens: their cache is kept, nothing recomputed
    assert session.length(0) == 8
    np.testing.assert_allclose(session.append(0, ids[8:], all_logits=True), full[8:], atol=1e-5)
    assert list(session.lengths()) == [21, 0]


def test_rewind_then_other_tokens_forget_the_old_ones(model):
    ids, other = tokens(model, 12, seed=1), tokens(model, 12, seed=2)
    session = Session(model, capacity=16)
    session.append(0, ids)
    session.truncate(0, 4)
    mixed = np.concatenate([ids[:4], other[4:]])
    np.testing.assert_allclose(session.append(0, other[4:], all_logits=True),
                               model.logits([mixed])[0][4:], atol=1e-5)


def test_fork_then_diverge_equals_independent_runs(model):
    prompt, left, right = tokens(model, 9, 3), tokens(model, 5, 4), tokens(model, 3, 5)
    session = Session(model, n_slots=3, capacity=20)
    session.append(1, prompt)
    session.copy(1, 2)
    logits = session.append_batch([1, 2], [left, right], all_logits=True)
    np.testing.assert_allclose(logits[:5], model.logits([np.concatenate([prompt, left])])[0][9:],
                               atol=1e-5)
    np.testing.assert_allclose(logits[5:], model.logits([np.concatenate([prompt, right])])[0][9:],
                               atol=1e-5)
    last = session.append_batch([2, 1], [[7], [8]])  # last-token logits, one row a slot
    np.testing.assert_allclose(last[0], model.logits([np.concatenate([prompt, right, [7]])])[0][-1],
                               atol=1e-5)
    np.testing.assert_allclose(last[1], model.logits([np.concatenate([prompt, left, [8]])])[0][-1],
                               atol=1e-5)


def test_hidden_states_and_other_calls_in_between(model):
    ids = tokens(model, 10, 6)
    session = Session(model, capacity=10)
    logits, hidden = session.append(0, ids[:6], return_hidden=True)
    model.generate([ids[:3]], max_new_tokens=4)  # reuses the model's workspace, not the session's
    np.testing.assert_allclose(hidden, model.hidden_states([ids[:6]])[0], atol=1e-5)
    np.testing.assert_allclose(session.append(0, ids[6:]), model.logits([ids])[0][-1], atol=1e-5)


def test_greedy_decoding_matches_generate():
    model = calign.Model.from_config(tiny_config("qwen2"), seed=5)
    prompt = tokens(model, 6, 7)
    expected = model.generate([prompt], max_new_tokens=8)[0]
    session = Session(model, capacity=14)
    logits, out = session.append(0, prompt), []
    for _ in range(8):
        out.append(int(np.argmax(logits)))
        logits = session.append(0, [out[-1]])
    assert out == expected


def test_lora_adapters_apply_as_in_logits():
    model = calign.Model.from_config(tiny_config("llama"), seed=8)
    adapters = model.add_adapter(calign.LoraConfig(r=2, target_modules="all-linear"))
    adapters.params[...] = np.random.default_rng(0).normal(0, 0.2, adapters.params.shape)
    ids = tokens(model, 7, 9)
    session = Session(model, n_slots=2, capacity=8)
    np.testing.assert_allclose(session.append(0, ids), model.logits([ids])[0][-1], atol=1e-5)
    with model.disable_adapter():
        base = session.append(1, ids)
        np.testing.assert_allclose(base, model.logits([ids])[0][-1], atol=1e-5)
    assert np.abs(base - model.logits([ids])[0][-1]).max() > 1e-3  # the adapters change it


@pytest.fixture(scope="module")
def small():
    return calign.Model.from_config(tiny_config("gpt2"), seed=1)


@pytest.mark.parametrize("call,message", [
    (lambda s: s.append(0, [1] * 7), "capacity 6"),
    (lambda s: s.append(0, [5000]), "input_ids[0] holds token id 5000"),
    (lambda s: s.append(0, [-1]), "input_ids[0] holds token id -1"),
    (lambda s: s.append(2, [1]), "slots[0] must be an integer in [0, 1]"),
    (lambda s: s.append(0, []), "input_ids[0] must be a non-empty"),
    (lambda s: s.append_batch([0, 0], [[1], [2]]), "slot 0 is given twice"),
    (lambda s: s.append_batch([0, 1], [[1]]), "input_ids must be a list of 2"),
    (lambda s: s.truncate(0, 1), "length must be in [0, 0]"),
    (lambda s: s.truncate(-1, 0), "slot must be"),
    (lambda s: s.copy(0, 5), "target must be"),
])
def test_bad_input_raises_naming_it(small, call, message):
    session = Session(small, n_slots=2, capacity=6)
    with pytest.raises(ValueError) as error:
        call(session)
    assert message in str(error.value)
    assert list(session.lengths()) == [0, 0]  # nothing changed


def test_bad_sizes(small):
    with pytest.raises(ValueError, match="capacity must be"):
        Session(small, capacity=small.max_positions + 1)
    with pytest.raises(ValueError, match="n_slots must be"):
        Session(small, n_slots=0)
    with pytest.raises(TypeError, match="integer token ids"):
        Session(small).append(0, [1.5])


def test_busy_model_refuses(small):
    session = Session(small, capacity=4)
    with small._in_use:  # another use of the model holds it (same thread may nest)
        session.append(0, [1])
    import threading
    errors = []
    small._in_use.acquire()
    try:
        thread = threading.Thread(target=lambda: errors.append(
            pytest.raises(RuntimeError, session.append, 0, [2])))
        thread.start()
        thread.join()
    finally:
        small._in_use.release()
    assert errors and "another thread" in str(errors[0].value)
