"""The binding's contracts: names defined once in C, integers never wrapped on
their way to C, one model used from two threads, workspaces grown once."""

import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import calign
from calign import _C, losses
from calign import wordalign as wa
from calign.model.config import engine_config

VOCAB = 211
CONFIG = dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=48, vocab_size=VOCAB,
              max_position_embeddings=128, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model():
    return calign.Model.from_config(CONFIG, seed=1)


# ---- one source of truth across the language line ------------------------------------------

def test_python_names_come_from_c():
    names = _C.describe()
    assert losses.DPO_LOSS_TYPES == tuple(names["dpo_loss_types"])
    assert losses.KTO_LOSS_TYPES == tuple(names["kto_loss_types"])
    assert losses.CPO_LOSS_TYPES == tuple(names["cpo_loss_types"])
    assert losses.F_DIVERGENCE_TYPES == tuple(names["f_divergence_types"])
    assert losses.GRPO_LOSS_TYPES == tuple(names["grpo_loss_types"])
    assert losses.IMPORTANCE_SAMPLING_LEVELS == tuple(names["importance_sampling_levels"])
    assert losses.SCALE_REWARDS_KINDS == tuple(names["scale_rewards_kinds"])
    assert losses.MULTI_OBJECTIVE_AGGREGATIONS == tuple(names["multi_objective_aggregations"])
    assert losses.KL_ESTIMATORS == tuple(names["kl_estimators"])
    assert set(losses.dpo_settings()) == set(names["dpo_settings"])
    assert set(losses.grpo_settings()) == set(names["grpo_settings"])
    assert set(engine_config(CONFIG)) == set(names["engine_config"])
    assert names["forward_modes"] == ("inference", "train", "train_checkpointed")
    assert wa.optimal_transport.KINDS == names["ot_kinds"]
    assert set(names["wordalign_models"]) == {"ibm1", "ibm2", "hmm"}
    # the groups the trainers and wrappers rely on, as the C table states them
    assert set(losses.BATCH_COUPLED_DPO_LOSS_TYPES) == {"aot", "aot_unpaired", "sft"}
    assert set(losses.LENGTH_NORMALISED_DPO_LOSS_TYPES) == {"ipo", "sigmoid_norm", "sft", "scpo"}
    assert set(losses.CHOSEN_LENGTH_DPO_LOSS_TYPES) == {"sft", "scpo"}


def test_settings_and_modes_cross_by_name(model):
    batch = calign.pack_shared_prefix([([1, 2], [[3], [4]])])
    with pytest.raises(ValueError, match=r"mode must be one of \['inference', 'train', "):
        _C.model_forward(model._handle, model._engine_params, batch.input_ids,
                         batch.position_ids, batch.sequence_starts, batch.branch_ids,
                         mode="training")
    settings = losses.dpo_settings()
    hidden = model.forward_packed(batch)
    for broken, match in ((dict(settings, loss_type=["nope"]), "loss_type must be one of"),
                          ({k: v for k, v in settings.items() if k != "beta"}, "lack beta"),
                          (dict(settings, extra=1), "keys besides")):
        with pytest.raises(ValueError, match=match):
            model.score_dpo_pairs(hidden, batch, [1, 1], [[-1.0, -1.0]], broken)
    with pytest.raises(TypeError, match="unexpected keyword|keyword argument"):
        _C.model_create(**dict(engine_config(CONFIG), colour=1))
    with pytest.raises(ValueError, match="vocab must be an integer in"):
        _C.model_create(**dict(engine_config(CONFIG), vocab=2**32 + 5))


# ---- integers are checked before they are narrowed -------------------------------------------

@pytest.mark.parametrize("ids, shown", [
    ([[7, 2**32 + 5, 9]], "4294967301"),       # wrapped to 5 before
    ([[-2**63]], "-9223372036854775808"),      # read as token 0 before
    ([[7, 2**31]], "2147483648"),              # reported as -2147483648 before
    (np.array([[7, 2**64 - 1]], np.uint64), "18446744073709551615"),
    ([[7, 2**70]], str(2**70)),
])
def test_token_ids_are_never_wrapped(model, ids, shown):
    for call in (model.logits, model.hidden_states,
                 lambda x: model.token_logprobs(x, x)):
        with pytest.raises(ValueError, match=shown):
            call(ids)


def test_preference_ids_are_never_wrapped(model):
    batch = calign.pack_shared_prefix([([1, 2**32 + 2], [[3], [4]])])
    with pytest.raises(ValueError, match="token id 4294967298, outside"):
        model.forward_packed(batch)
    with pytest.raises(ValueError, match="which is not a token id"):
        calign.pack_shared_prefix([([1, 2], [[2**64 + 3], [4]])])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, VOCAB - 1), st.integers(-2**63, 2**64 - 1)),
                min_size=1, max_size=6),
       st.sampled_from(["list", "int64", "uint64"]))
def test_random_ids_give_the_right_logits_or_name_the_bad_one(model, ids, kind):
    if kind == "int64":
        ids = [i for i in ids if -2**63 <= i < 2**63] or [0]
        given_ids = np.array([ids], np.int64)
    elif kind == "uint64":
        ids = [i for i in ids if i >= 0] or [0]
        given_ids = np.array([ids], np.uint64)
    else:
        given_ids = [ids]
    bad = [i for i in ids if not 0 <= i < VOCAB]
    if not bad:
        np.testing.assert_array_equal(model.logits(given_ids),
                                      model.logits(np.array([ids], np.int64)))
        return
    with pytest.raises(ValueError) as error:
        model.logits(given_ids)
    assert any(str(b) in str(error.value) for b in bad), (str(error.value), bad)


# ---- one model, two threads ----------------------------------------------------------------------

def entry_points(model):
    """(name, call) for every Model method that runs the engine; each returns
    arrays to compare."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (1, 59))
    labels = ids.copy()
    batch = calign.pack_shared_prefix([(ids[0, :20].tolist(), [ids[0, 20:40].tolist(),
                                                                ids[0, 40:].tolist()])])
    settings = losses.dpo_settings()

    def fused_pairs():
        model.zero_grad()
        hidden = model.forward_packed(batch, train=True)
        out = model.score_dpo_pairs(hidden, batch, [20, 19], [[-60.0, -55.0]], settings)
        model.backward_packed(batch, out.d_hidden)
        return out.losses, model.grad_buffer.copy()

    def score_backward():
        model.zero_grad()
        hidden = model.forward_packed(batch)
        d_hidden, logprobs = model.score_backward(hidden, batch, np.ones(39))
        return d_hidden, logprobs, model.grad_buffer.copy()

    return [
        ("logits", lambda: (model.logits(ids),)),
        ("hidden_states", lambda: (model.hidden_states(ids),)),
        ("token_logprobs", lambda: (model.token_logprobs(ids, labels),)),
        ("packed_token_logprobs", lambda: (model.packed_token_logprobs(batch),)),
        ("generate", lambda: (np.array(model.generate([ids[0, :8].tolist()],
                                                      max_new_tokens=6, do_sample=True,
                                                      seed=3)),)),
        ("lm_loss_backward", lambda: (np.array(model.lm_loss_backward(ids, labels)),
                                      model.grad_buffer.copy())),
        ("score_dpo_pairs", fused_pairs),
        ("score_backward", score_backward),
    ]


def hammer(calls, expected, rounds):
    """Two threads run every call `rounds` times; returns (wrong results,
    other errors, busy refusals)."""
    wrong, errors, busy = [], [], [0]
    start = threading.Barrier(2)

    def worker(offset):
        start.wait()
        for r in range(rounds):
            for k in range(len(calls)):
                name, call = calls[(k + offset) % len(calls)]
                try:
                    got = call()
                except RuntimeError as error:
                    if "being used by another thread" in str(error):
                        busy[0] += 1
                        continue
                    errors.append((name, repr(error)))
                    continue
                except Exception as error:  # anything else is a failure to report
                    errors.append((name, repr(error)))
                    continue
                for a, b in zip(got, expected[name], strict=True):
                    if not np.allclose(a, b, rtol=1e-5, atol=1e-6):
                        wrong.append(name)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wrong, errors, busy[0]


def test_two_threads_on_one_model_get_right_answers_or_busy(model):
    calls = entry_points(model)
    expected = {name: call() for name, call in calls}
    wrong, errors, busy = hammer(calls, expected, rounds=12)
    assert not errors, errors
    assert not wrong, wrong


def test_two_threads_on_the_engine_directly(model):
    """Below the Python methods: raw forward and scoring calls on one engine
    handle from two threads, each returning its own arrays."""
    rng = np.random.default_rng(1)
    batch = calign.pack_shared_prefix([(rng.integers(0, VOCAB, 30).tolist(),
                                        [rng.integers(0, VOCAB, 29).tolist()])])
    args = (model._handle, model._engine_params, batch.input_ids, batch.position_ids,
            batch.sequence_starts, batch.branch_ids)
    hidden = _C.model_forward(*args, mode="inference")
    calls = [
        ("forward", lambda: (_C.model_forward(*args, mode="inference"),)),
        ("logits", lambda: (_C.model_logits(model._handle, model._engine_params, hidden),)),
        ("score", lambda: (_C.model_score(model._handle, model._engine_params, hidden,
                                          batch.score_rows, batch.score_targets),)),
    ]
    expected = {name: call() for name, call in calls}
    wrong, errors, busy = hammer(calls, expected, rounds=40)
    assert not errors, errors
    assert not wrong, wrong


def test_a_model_in_use_refuses_every_method(model):
    """Deterministic: while another thread holds the model, every method
    that runs the engine raises instead of running."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with model._in_use:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        for name, call in entry_points(model):
            with pytest.raises(RuntimeError, match="being used by another thread"):
                call()
    finally:
        release.set()
        holder.join()
    model.logits([[1, 2, 3]])  # usable again


# ---- workspaces are grown once -------------------------------------------------------------------

def test_second_call_of_a_shape_allocates_nothing(model):
    prompts = [[1, 2, 3, 4], [5, 6]]
    model.generate(prompts, max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=0)
    before = model.workspace_allocations()
    first = model.generate(prompts, max_new_tokens=5, do_sample=True, num_return_sequences=3,
                           seed=0)
    assert model.workspace_allocations() == before
    # smaller calls fit in what is there; scoring shares the workspace
    model.generate([[1, 2]], max_new_tokens=3)
    model.token_logprobs([[1, 2, 3, 4]], [[1, 2, 3, 4]])
    assert model.generate(prompts, max_new_tokens=5, do_sample=True, num_return_sequences=3,
                          seed=0) == first
    ids = np.arange(1, 40)[None, :]
    model.token_logprobs(ids, ids)
    settled = model.workspace_allocations()
    for _ in range(3):
        model.token_logprobs(ids, ids)
        model.generate(prompts, max_new_tokens=5, do_sample=True, num_return_sequences=3,
                       seed=0)
    assert model.workspace_allocations() == settled


@pytest.mark.parametrize("setting, value, match", [
    ("top_k", 10**12, r"top_k must be an integer in \[0, 2147483647\]"),
    ("max_new_tokens", 2**40, r"max_new_tokens must be an integer in \[1, 127\]"),
    ("num_return_sequences", 2**40, "num_return_sequences must be an integer in"),
    ("eos_token_id", 2**70, r"eos_token_id must be an integer in \[0, 2147483647\]"),
    ("temperature", 1e-50, "temperature = 1e-50 does not fit float32"),
    ("top_p", float("nan"), "top_p must be a finite number in"),
    ("do_sample", "yes", "do_sample must be True or False"),
])
def test_generate_settings_beyond_c_are_refused_by_name(model, setting, value, match):
    kwargs = dict(max_new_tokens=3, do_sample=True)
    kwargs[setting] = value
    with pytest.raises(ValueError, match=match):
        model.generate([[1, 2]], **kwargs)


def test_seeds_beyond_64_bits_are_taken_modulo_2_64(model):
    """As numpy's SeedSequence-free samplers: seed and seed + 2**64 draw alike."""
    a = model.generate([[1, 2]], max_new_tokens=4, do_sample=True, seed=5)
    assert model.generate([[1, 2]], max_new_tokens=4, do_sample=True, seed=5 + 2**64) == a


def test_numbers_c_keeps_as_float32_must_fit_it(model):
    """A double beyond float32 would become inf (or 0) in C without a word."""
    optimizer = calign.optim.AdamW(model, lr=1e39)
    with pytest.raises(ValueError, match=r"lr = 1e\+39 does not fit float32"):
        optimizer.step()
    with pytest.raises(ValueError, match=r"lr = 1e\+300 does not fit float32"):
        calign.optim.SGD(model).step(lr=1e300)
    hidden = np.ones((2, 4), np.float32)
    weight = np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        calign.ops.token_logprobs(hidden, weight, [1, 2], temperature=1e300)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        model.token_logprobs([[1, 2, 3]], [[1, 2, 3]], temperature=1e-60)
