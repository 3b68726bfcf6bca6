"""GRPOTrainer and RLOOTrainer end to end with calign's own sampler: bad
configurations, data and reward functions give one clear exception naming
the culprit; reward functions get what TRL 1.16 gives them (extra columns
per completion, trainer_state, completion_ids with the EOS, chat messages);
None rewards, reward models, truncation masking, the batch scheme
(steps_per_generation, num_iterations), the reference, evaluation, LoRA and
checkpoints behave as TRL's; and both trainers learn a reward that is cheap to
satisfy. tests/test_grpo_trl_parity.py compares single steps with TRL's.

The model is a tiny Llama over the word tokenizer (<pad> = 0, <eos> = 1,
then w0, w1, ...), sampled with calign's C sampler."""

import math

import numpy as np
import pytest

import calign
from calign import testing
from calign.lora import AdapterReference
from calign.trainers import rollouts

G = 4
VOCAB = 42
WORDS = testing.word_list(VOCAB - 2)
MODEL = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=None,
             intermediate_size=48, initializer_range=0.1, attention_bias=False, mlp_bias=False,
             rope_theta=10000.0, max_position_embeddings=64)


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tiny_tokenizer):
    return tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=VOCAB), **MODEL)


@pytest.fixture(scope="module")
def chat_checkpoint(tiny_model, tiny_tokenizer):
    """The same architecture with a chat template (<system>, <user> and
    <assistant> come after <eos>)."""
    return tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=VOCAB + 3, chat_template=True),
                      **MODEL)


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return calign.Tokenizer.from_pretrained(str(checkpoint))


def prompts(n, seed=0, length=3):
    rng = np.random.default_rng(seed)
    return [" ".join(WORDS[i] for i in rng.integers(2, len(WORDS), length)) for _ in range(n)]


def records(n, seed=0, **columns):
    return [dict({"prompt": p}, **{k: v[i] for k, v in columns.items()})
            for i, p in enumerate(prompts(n, seed))]


def settings(tmp_path, **overrides):
    """A few steps on two prompts a generation batch (8 completions, G = 4)."""
    values = dict(output_dir=str(tmp_path / "out"), disable_tqdm=True, seed=0,
                  save_strategy="no", learning_rate=0.05, max_steps=2, logging_steps=1,
                  per_device_train_batch_size=8, num_generations=G, max_completion_length=4)
    values.update(overrides)
    return values


def grpo(checkpoint, tmp_path, reward_funcs, data=None, peft_config=None, eval_dataset=None,
         **overrides):
    return calign.GRPOTrainer(str(checkpoint), reward_funcs=reward_funcs,
                              args=calign.GRPOConfig(**settings(tmp_path, **overrides)),
                              train_dataset=records(8) if data is None else data,
                              eval_dataset=eval_dataset, peft_config=peft_config)


def varied(prompts, completions, completion_ids, **kwargs):
    """A reward that differs between most completions of a prompt."""
    return [float(sum(ids) % 5) for ids in completion_ids]


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def count_calls(monkeypatch):
    """Wraps the sampler; returns the list of the prompts of each call."""
    calls = []
    sample = rollouts.sample

    def counted(model, examples, *args, **kwargs):
        calls.append([e.prompt for e in examples])
        return sample(model, examples, *args, **kwargs)

    monkeypatch.setattr(rollouts, "sample", counted)
    return calls


# ---- bad configurations ----------------------------------------------------------------

CONFIG_ERRORS = [
    ("grpo", dict(num_generations=1), "num_generations"),
    ("rloo", dict(num_generations=1), "num_generations"),
    ("grpo", dict(per_device_train_batch_size=2, generation_batch_size=6),
     r"generation_batch_size must be a multiple of num_generations \(4\)"),
    ("grpo", dict(per_device_train_batch_size=4, generation_batch_size=6),
     r"generation_batch_size must be a multiple of per_device_train_batch_size x ranks \(4\)"),
    ("rloo", dict(generation_batch_size=8, steps_per_generation=2),
     r"generation_batch_size \(8\) and steps_per_generation \(2\) cannot both be given"),
    ("grpo", dict(sync_ref_model=True), "sync_ref_model must be False when beta is 0"),
    ("rloo", dict(sync_ref_model=True, beta=0.0), "sync_ref_model must be False when beta is 0"),
    ("grpo", dict(max_prompt_length=16), "max_prompt_length must be None"),
    ("rloo", dict(max_prompt_length=16), "max_prompt_length must be None"),
    ("grpo", dict(log_completions=True), "log_completions must be False"),
    ("rloo", dict(log_completions=True), "log_completions must be False"),
    ("grpo", dict(entropy_coef=0.1), "entropy_coef must be 0.0"),
    ("grpo", dict(use_adaptive_entropy=True), "use_adaptive_entropy must be False"),
    ("grpo", dict(use_vllm=True), "use_vllm must be False"),
    ("rloo", dict(use_vllm=True), "use_vllm must be False"),
    ("grpo", dict(max_completion_length=0), "max_completion_length"),
    ("grpo", dict(max_length=8, max_completion_length=8), "max_completion_length must be below"),
    ("grpo", dict(temperature=0.0), "temperature"),
    ("grpo", dict(num_iterations=0), "num_iterations"),
    ("grpo", dict(reward_weights=[1.0, float("nan")]), r"reward_weights\[1\]"),
    ("grpo", dict(eval_strategy="steps", per_device_eval_batch_size=6),
     r"per_device_eval_batch_size must be a multiple of the evaluation's num_generations \(4\)"),
]


@pytest.mark.parametrize("kind, options, message", CONFIG_ERRORS,
                         ids=[f"{i}-{k}-{'-'.join(o)}" for i, (k, o, _) in
                              enumerate(CONFIG_ERRORS)])
def test_bad_config_is_refused_naming_the_field(tmp_path, kind, options, message):
    config_class = calign.GRPOConfig if kind == "grpo" else calign.RLOOConfig
    with pytest.raises(ValueError, match=message):
        config_class(**settings(tmp_path, **options))


def test_refused_values_at_their_defaults_are_accepted(tmp_path):
    config = calign.GRPOConfig(**settings(tmp_path, log_completions=False, entropy_coef=0.0,
                                          use_adaptive_entropy=False, use_vllm=False))
    assert config.generation_batch_size == 8 and config.steps_per_generation == 1


# ---- bad reward functions --------------------------------------------------------------

def test_a_reward_function_that_raises_is_named_and_chained(checkpoint, tmp_path):
    def lookup_answer(prompts, completions, **kwargs):
        return [kwargs["answer"] for _ in completions]

    trainer = grpo(checkpoint, tmp_path, lookup_answer)
    before = trainer.model.params.copy()
    with pytest.raises(RuntimeError, match="'lookup_answer' raised KeyError: 'answer'") as info:
        trainer.train()
    assert isinstance(info.value.__cause__, KeyError)
    np.testing.assert_array_equal(trainer.model.params, before)  # no step was taken
    assert trainer.state.global_step == 0


BAD_OUTPUTS = {
    "too-few": (lambda n: [1.0] * (n - 1), r"returned 7 rewards, but 8 were expected"),
    "too-many": (lambda n: [1.0] * (n + 1), r"returned 9 rewards, but 8 were expected"),
    "nan": (lambda n: [0.5] * (n - 1) + [float("nan")], "returned nan for completion 7"),
    "inf": (lambda n: [-math.inf] + [0.5] * (n - 1), "returned -inf for completion 0"),
    "beyond-float32": (lambda n: [0.0, 1e39] + [0.0] * (n - 2),
                       "returned 1e\\+39 for completion 1: a reward must be a finite float32"),
    "huge-int": (lambda n: [10 ** 400] * n, "returned 10+ for completion 0: a reward must be a "
                                              "finite"),
    "string-reward": (lambda n: ["1.0"] * n, "returned '1.0' for completion 0: a reward must "
                                             "be a number or None"),
    "nested-list": (lambda n: [[1.0]] * n, r"returned \[1.0\] for completion 0"),
    "a-string": (lambda n: "1" * n, "returned str, not a list of 8 rewards"),
    "a-dict": (lambda n: {i: 1.0 for i in range(n)}, "returned dict, not a list of 8 rewards"),
    "a-set": (lambda n: set(range(n)), "returned set, not a list of 8 rewards"),
    "a-number": (lambda n: 1.0, "returned float, not a list of 8 rewards"),
    "none": (lambda n: None, "returned NoneType, not a list of 8 rewards"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_a_bad_reward_output_is_refused_naming_the_function(checkpoint, tmp_path, case):
    make, message = BAD_OUTPUTS[case]

    def scorer(prompts, completions, **kwargs):
        return make(len(completions))

    trainer = grpo(checkpoint, tmp_path, scorer)
    before = trainer.model.params.copy()
    with pytest.raises(ValueError, match="the reward function 'scorer' " + message):
        trainer.train()
    np.testing.assert_array_equal(trainer.model.params, before)


def test_reward_outputs_of_any_number_type_are_taken(checkpoint, tmp_path):
    def numpy_rewards(prompts, completions, **kwargs):
        return np.arange(len(completions), dtype=np.float64) % 3

    def mixed(prompts, completions, **kwargs):
        return [True, 2, np.int64(1), np.float32(0.5), None, 1.5, False, 3][:len(completions)]

    trainer = grpo(checkpoint, tmp_path, [numpy_rewards, mixed], max_steps=1)
    trainer.train()
    np.testing.assert_array_equal(trainer.last_rollout.rewards[:, 0], np.arange(8) % 3)
    np.testing.assert_array_equal(trainer.last_rollout.rewards[:, 1],
                                  [1, 2, 1, 0.5, np.nan, 1.5, 0, 3])


@pytest.mark.parametrize("funcs, weights, error, message", [
    (None, None, ValueError, "reward_funcs is required"),
    ([], None, ValueError, "reward_funcs is empty"),
    (42, None, TypeError, r"reward_funcs\[0\] must be a callable, a calign.RewardModel or a "
                          "reward model folder, not int"),
    ([varied, "not a function"], None, OSError, "not a function"),
    ([varied], [1.0, 2.0], ValueError, r"reward_weights has 2 weights but there are 1 reward "
                                       r"functions \(varied\)"),
    ([varied, varied], [1.0], ValueError, "reward_weights has 1 weights but there are 2"),
], ids=["none", "empty", "int", "missing-folder", "two-weights", "one-weight"])
def test_bad_reward_funcs_are_refused(checkpoint, tmp_path, funcs, weights, error, message):
    with pytest.raises(error, match=message):
        grpo(checkpoint, tmp_path, funcs, reward_weights=weights)


# ---- bad data --------------------------------------------------------------------------

@pytest.mark.parametrize("data, error, message", [
    ([{"question": "w1 w2"}], KeyError, "train_dataset record 0 lacks the field 'prompt': it "
                                        r"is missing \(the fields with a value are "
                                        r"\['question'\]\)"),
    (records(2) + [{"prompt": None}], KeyError, "train_dataset record 2 lacks the field "
                                                "'prompt': it is None"),
    ([{"prompt": 5}], TypeError, "train_dataset record 0: prompt must be a string or a list of "
                                 r"\{'role', 'content'\} messages, got int"),
    ([{"prompt": ["w1", "w2"]}], TypeError, "train_dataset record 0: prompt must be a string"),
    ([{"prompt": [{"role": "user"}]}], TypeError, "train_dataset record 0: prompt must be"),
    ([{"prompt": ""}], ValueError, "train_dataset record 0: the prompt has no tokens"),
    ([], ValueError, "train_dataset is empty"),
    (records(1), ValueError, r"train_dataset has 1 prompts, fewer than a generation batch needs "
                             r"\(generation_batch_size 8 / num_generations 4 = 2\)"),
    ([{"prompt": " ".join((WORDS * 2)[:61])}] + records(1), ValueError,
     r"train_dataset record 0: the prompt \(61 tokens\) plus max_completion_length \(4\) "
     r"exceeds the model's maximum positions \(64\)"),
], ids=["no-prompt", "prompt-none", "int-prompt", "list-of-text", "message-without-content",
        "empty-prompt", "empty-dataset", "too-few-prompts", "too-long"])
def test_bad_train_data_is_refused_naming_the_record(checkpoint, tmp_path, data, error, message):
    with pytest.raises(error, match=message):
        grpo(checkpoint, tmp_path, varied, data=data)


def test_a_bad_eval_record_is_named_as_eval_dataset(checkpoint, tmp_path):
    with pytest.raises(KeyError, match="eval_dataset record 1 lacks the field 'prompt'"):
        grpo(checkpoint, tmp_path, varied, eval_dataset=records(1) + [{"text": "w1"}],
             eval_strategy="steps")


def test_mixed_text_and_conversational_prompts_are_refused(chat_checkpoint, tmp_path):
    data = records(3) + [{"prompt": [{"role": "user", "content": "w1 w2"}]}]
    with pytest.raises(ValueError, match="train_dataset mixes text and conversational prompts"):
        grpo(chat_checkpoint, tmp_path, varied, data=data)


def test_max_length_keeps_the_end_of_a_long_prompt(checkpoint, tmp_path, tokenizer):
    long_prompt = " ".join((WORDS * 2)[:61])
    trainer = grpo(checkpoint, tmp_path, varied, data=[{"prompt": long_prompt}] + records(1),
                   max_length=20, max_steps=1)
    assert trainer.train_examples[0].prompt_ids == tokenizer.encode(long_prompt)[-16:]
    trainer.train()
    assert all(len(e.prompt_ids) + len(c) <= 20 for e, c in zip(
        trainer.last_rollout.examples, trainer.last_rollout.completion_ids))


def test_lora_dropout_needs_disable_dropout(checkpoint, tmp_path):
    lora = calign.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.1)
    with pytest.raises(ValueError, match="lora_dropout must be 0 for GRPOTrainer"):
        grpo(checkpoint, tmp_path, varied, peft_config=lora)
    trainer = grpo(checkpoint, tmp_path, varied, peft_config=lora, disable_dropout=True)
    assert trainer.model.adapters.config.lora_dropout == 0.1


# ---- what reward functions get ---------------------------------------------------------

def test_reward_functions_get_columns_state_and_completion_ids(checkpoint, tmp_path, tokenizer):
    """TRL's call: the prompts and completions (decoded without special
    tokens) of the batch's rows, completion_ids ending with the EOS where the
    sampler stopped, every other column of the records one value per
    completion, the trainer's state, log_metric and log_extra."""
    data = records(8, label=list(range(8)), answer=[f"w{i}" for i in range(8)])
    calls = []

    def recorder(prompts, completions, completion_ids, label, answer, trainer_state,
                 log_metric, log_extra):
        calls.append(dict(prompts=prompts, completions=completions, ids=completion_ids,
                          label=label, answer=answer, step=trainer_state.global_step,
                          state=trainer_state))
        log_metric("call_number", len(calls))
        log_metric("call_number", len(calls) + 1)  # averaged over a step
        log_extra("first_word", [c.split()[0] if c else "" for c in completions])
        return [float(len(c)) for c in completions]

    trainer = grpo(checkpoint, tmp_path, recorder, data=data, max_steps=3,
                   max_completion_length=12, per_device_train_batch_size=16)
    trainer.train()
    assert [c["step"] for c in calls] == [0, 1, 2]
    assert all(c["state"] is trainer.state for c in calls)
    assert logged(trainer, "call_number") == [1.5, 2.5, 3.5]
    eos = tokenizer.eos_token_id
    stopped = truncated = 0
    for call in calls:
        assert len(call["prompts"]) == 16
        for i, (prompt, ids) in enumerate(zip(call["prompts"], call["ids"])):
            record = data[[r["prompt"] for r in data].index(prompt)]
            assert call["label"][i] == record["label"] and call["answer"][i] == record["answer"]
            assert call["prompts"][i - i % G:i - i % G + G] == [prompt] * G  # G adjacent rows
            assert call["completions"][i] == tokenizer.decode(ids, skip_special_tokens=True)
            if eos in ids:
                assert ids.index(eos) == len(ids) - 1  # the EOS ends it
                stopped += 1
            else:
                assert len(ids) == 12
                truncated += 1
    assert stopped > 0 and truncated > 0
    rollout = trainer.last_rollout
    assert calls[-1]["ids"] == rollout.completion_ids
    np.testing.assert_array_equal(rollout.truncated, [eos not in ids for ids in calls[-1]["ids"]])
    assert rollout.extra_logs["first_word"] == [c.split()[0] if c else ""
                                                for c in calls[-1]["completions"]]


def test_trl_arguments_win_over_columns_of_the_same_name(checkpoint, tmp_path):
    """TRL passes no "completion" or "completion_ids" column, and its own
    trainer_state replaces a column of that name."""
    data = records(8, completion=["w1"] * 8, completion_ids=[[3, 4]] * 8,
                   trainer_state=["x"] * 8, topic=["w2"] * 8)
    seen = {}

    def recorder(prompts, completions, completion_ids, trainer_state, **kwargs):
        seen.update(kwargs, completion_ids=completion_ids, trainer_state=trainer_state)
        return [1.0] * len(completions)

    trainer = grpo(checkpoint, tmp_path, recorder, data=data, max_steps=1)
    trainer.train()
    assert seen["completion_ids"] == trainer.last_rollout.completion_ids
    assert seen["trainer_state"] is trainer.state
    assert "completion" not in seen and seen["topic"] == ["w2"] * 8


def test_conversational_prompts_use_the_chat_template(chat_checkpoint, tmp_path):
    """A prompt of messages is rendered with the chat template and its
    generation prompt, as TRL renders it; its completions reach the reward
    function as one assistant message each."""
    transformers = pytest.importorskip("transformers")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(chat_checkpoint))
    tokenizer = calign.Tokenizer.from_pretrained(str(chat_checkpoint))
    messages = [[{"role": "user", "content": p}] for p in prompts(4)]
    messages[1] = [{"role": "system", "content": "w7"}] + messages[1]
    seen = []

    def recorder(prompts, completions, **kwargs):
        seen.append((prompts, completions))
        return [float(len(c[0]["content"])) for c in completions]

    trainer = grpo(chat_checkpoint, tmp_path, recorder,
                   data=[{"prompt": m, "id": i} for i, m in enumerate(messages)], max_steps=1)
    for example, m in zip(trainer.train_examples, messages):
        text = hf_tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        assert example.prompt_ids == hf_tokenizer(text)["input_ids"]
        assert tokenizer.decode(example.prompt_ids).endswith("<assistant>")
    trainer.train()
    rollout = trainer.last_rollout
    (given_prompts, completions), = seen
    assert given_prompts == [e.prompt for e in rollout.examples]
    assert all(p in messages for p in given_prompts)
    assert completions == [[{"role": "assistant",
                             "content": tokenizer.decode(ids, skip_special_tokens=True)}]
                           for ids in rollout.completion_ids]


@pytest.mark.parametrize("conversational", [False, True], ids=["text", "conversational"])
def test_a_reward_model_scores_prompt_plus_completion(checkpoint, chat_checkpoint, tmp_path,
                                                      conversational):
    """A calign.RewardModel scores the prompt + completion text re-encoded
    with its tokenizer (conversational: the messages through the chat
    template), as TRL's reward models do."""
    path = chat_checkpoint if conversational else checkpoint
    tokenizer = calign.Tokenizer.from_pretrained(str(path))
    reward_model = calign.RewardModel.from_causal_lm(str(path), seed=3)
    if conversational:
        data = [{"prompt": [{"role": "user", "content": p}]} for p in prompts(4)]
    else:
        data = [{"prompt": p + " "} for p in prompts(4)]  # the completion follows a space
    trainer = grpo(path, tmp_path, reward_model, data=data, max_steps=1)
    trainer.train()
    rollout = trainer.last_rollout
    texts = []
    for example, ids in zip(rollout.examples, rollout.completion_ids):
        completion = tokenizer.decode(ids, skip_special_tokens=True)
        texts.append(tokenizer.apply_chat_template(
            example.prompt + [{"role": "assistant", "content": completion}])
            if conversational else example.prompt + completion)
    expected = reward_model.score([tokenizer.encode(t, add_special_tokens=False) for t in texts])
    assert len(set(np.round(expected, 6))) > 1
    np.testing.assert_allclose(rollout.rewards[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert logged(trainer, "rewards/reward_model/mean")[0] == pytest.approx(expected.mean(),
                                                                            rel=1e-5)


def test_a_reward_model_folder_is_loaded_and_named(checkpoint, tmp_path, tokenizer):
    reward_model = calign.RewardModel.from_causal_lm(str(checkpoint), seed=3)
    reward_model.save_pretrained(tmp_path / "judge")
    trainer = grpo(checkpoint, tmp_path, [str(tmp_path / "judge"), varied],
                   reward_weights=[2.0, 1.0], data=records(4, seed=1), max_steps=1)
    trainer.train()
    rollout = trainer.last_rollout
    texts = [e.prompt + tokenizer.decode(ids, skip_special_tokens=True)
             for e, ids in zip(rollout.examples, rollout.completion_ids)]
    expected = reward_model.score([tokenizer.encode(t, add_special_tokens=False) for t in texts])
    np.testing.assert_allclose(rollout.rewards[:, 0], expected, rtol=1e-5, atol=1e-6)
    entry = trainer.state.log_history[0]
    assert entry["rewards/judge/mean"] == pytest.approx(expected.mean(), rel=1e-5)
    assert entry["reward"] == pytest.approx(
        np.mean(2.0 * rollout.rewards[:, 0] + rollout.rewards[:, 1]), rel=1e-5)


# ---- None rewards ----------------------------------------------------------------------

def test_none_rewards_are_skipped_and_unscorable_completions_get_no_advantage(checkpoint,
                                                                              tmp_path):
    """None is no reward from that function: the weighted sum skips it; a
    completion no function scores is left out of its group's statistics and
    gets advantage 0 (TRL 1.16)."""
    def even_rows(prompts, completions, completion_ids, **kwargs):
        return [None if i % 2 == 0 else float(sum(ids) % 7)
                for i, ids in enumerate(completion_ids)]

    def most_rows(prompts, completions, completion_ids, **kwargs):
        return [None if i % 4 == 0 else float(len(ids) + ids[0] % 3)
                for i, ids in enumerate(completion_ids)]

    trainer = grpo(checkpoint, tmp_path, [even_rows, most_rows], reward_weights=[1.0, 0.5],
                   data=records(4), max_steps=1, max_completion_length=6)
    trainer.train()
    rollout = trainer.last_rollout
    rewards = rollout.rewards.astype(np.float64)
    assert np.isnan(rewards[0::2, 0]).all() and np.isnan(rewards[0::4, 1]).all()
    total = np.where(np.isnan(rewards), 0.0, rewards) @ [1.0, 0.5]
    total[0::4] = np.nan  # no function scored these
    groups = total.reshape(-1, G)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(groups, axis=1, keepdims=True)
        std = np.nanstd(groups, axis=1, ddof=1, keepdims=True)
    expected = np.nan_to_num((groups - mean) / (std + 1e-4)).ravel()
    np.testing.assert_allclose(rollout.advantages, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rollout.advantages[0::4], 0.0)
    assert np.abs(rollout.advantages).max() > 0.5
    entry = trainer.state.log_history[0]
    assert entry["reward"] == pytest.approx(np.nanmean(total), rel=1e-6)
    assert entry["rewards/even_rows/mean"] == pytest.approx(np.nanmean(rewards[:, 0]), rel=1e-6)


def test_a_batch_without_rewards_trains_nothing_and_logs_no_nan(checkpoint, tmp_path):
    """All None: every advantage is 0, the step changes nothing, and the
    reward metrics are left out of the log, as TRL leaves NaN out of its
    averages; over a logging window they average the batches that had rewards."""
    def from_step_1(prompts, completions, completion_ids, trainer_state, **kwargs):
        if trainer_state.global_step == 0:
            return [None] * len(completions)
        return [float(sum(ids) % 5) for ids in completion_ids]

    trainer = grpo(checkpoint, tmp_path, from_step_1, max_steps=1)
    before = trainer.model.params.copy()
    trainer.train()
    np.testing.assert_array_equal(trainer.last_rollout.advantages, 0.0)
    np.testing.assert_array_equal(trainer.model.params, before)
    entry, = trainer.state.log_history
    assert "reward" not in entry and "rewards/from_step_1/mean" not in entry
    assert all(math.isfinite(v) for v in entry.values())

    trainer = grpo(checkpoint, tmp_path, from_step_1, max_steps=2, logging_steps=2)
    trainer.train()
    entry, = trainer.state.log_history
    rewards = trainer.last_rollout.rewards[:, 0]  # step 1's batch
    assert entry["reward"] == pytest.approx(rewards.mean(), rel=1e-6)
    assert all(math.isfinite(v) for v in entry.values())


# ---- truncation, batch scheme, reference -----------------------------------------------

def test_mask_truncated_completions_leaves_truncated_rows_out(checkpoint, tmp_path,
                                                              monkeypatch):
    trainer = grpo(checkpoint, tmp_path, varied, mask_truncated_completions=True,
                   max_completion_length=12, per_device_train_batch_size=16, max_steps=1)
    trainer.train()
    rollout = trainer.last_rollout
    assert rollout.truncated.any() and not rollout.truncated.all()
    np.testing.assert_array_equal(rollout.trained, ~rollout.truncated)
    assert rollout.num_items == sum(len(c) for c, t in zip(rollout.completion_ids,
                                                            rollout.truncated) if not t)

    # every row truncated: nothing trains with the mask, everything without it
    sample = rollouts.sample

    def all_truncated(*args, **kwargs):
        rollout = sample(*args, **kwargs)
        rollout.truncated[:] = True
        return rollout

    monkeypatch.setattr(rollouts, "sample", all_truncated)
    for mask in (True, False):
        trainer = grpo(checkpoint, tmp_path, varied, mask_truncated_completions=mask)
        before = trainer.model.params.copy()
        trainer.train()
        changed = np.abs(trainer.model.params - before).max()
        assert (changed == 0.0) == mask, (mask, changed)
        assert (logged(trainer, "grad_norm")[0] == 0.0) == mask


SCHEMES = {
    # (config, optimizer steps, sampler calls)
    "spg4-accum2-iter2": (dict(per_device_train_batch_size=4, steps_per_generation=4,
                               gradient_accumulation_steps=2, num_iterations=2), 8, 2),
    "spg2-accum1": (dict(per_device_train_batch_size=4, generation_batch_size=8,
                         gradient_accumulation_steps=1), 4, 2),
    "accum2-iter3": (dict(per_device_train_batch_size=4, gradient_accumulation_steps=2,
                          num_iterations=3), 6, 2),
    "default": (dict(), 3, 3),
}


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_a_generation_batch_serves_several_optimizer_steps(checkpoint, tmp_path, monkeypatch,
                                                           scheme, kind):
    """TRL's scheme: a generation batch of generation_batch_size completions
    is split into steps_per_generation micro-batches and used num_iterations
    times; gradient_accumulation_steps micro-batches make a step. The rounds
    of an epoch take the (shuffled) prompts without repeating one."""
    options, steps, expected_calls = SCHEMES[scheme]
    calls = count_calls(monkeypatch)
    config_class, trainer_class = ((calign.GRPOConfig, calign.GRPOTrainer) if kind == "grpo"
                                   else (calign.RLOOConfig, calign.RLOOTrainer))
    config = config_class(**settings(tmp_path, max_steps=steps, learning_rate=0.02, **options))
    per_round = config.generation_batch_size // G
    data = records(per_round * expected_calls)  # one epoch
    trainer = trainer_class(str(checkpoint), reward_funcs=varied, args=config,
                            train_dataset=data)
    before = trainer.model.params.copy()
    trainer.train()
    assert len(calls) == expected_calls
    assert all(len(c) == per_round for c in calls)
    used = [p for c in calls for p in c]
    assert sorted(used) == sorted(r["prompt"] for r in data)  # one epoch, each prompt once
    history = trainer.state.log_history
    assert [h["step"] for h in history] == list(range(1, steps + 1))
    steps_per_round = steps // expected_calls
    fresh = [h["step"] for h in history if "reward" in h]  # logged once per generation batch
    assert fresh == list(range(1, steps + 1, steps_per_round))
    for h in history:
        assert all(math.isfinite(v) for v in h.values())
        assert h["entropy"] > 0
        if kind == "grpo":
            assert 0.0 <= h["clip_ratio/region_mean"] <= 1.0
    if kind == "grpo":  # the first micro-batches of a batch are on-policy: nothing is clipped
        assert history[0]["clip_ratio/region_mean"] == 0.0
    assert np.abs(trainer.model.params - before).max() > 0


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_beta_keeps_a_frozen_reference_equal_to_the_start(checkpoint, tmp_path, kind):
    config_class, trainer_class = ((calign.GRPOConfig, calign.GRPOTrainer) if kind == "grpo"
                                   else (calign.RLOOConfig, calign.RLOOTrainer))

    def make(steps, **options):
        return trainer_class(str(checkpoint), reward_funcs=varied, args=config_class(
            **settings(tmp_path, max_steps=steps, learning_rate=0.1, **options)),
            train_dataset=records(8))

    trainer = make(1, beta=0.2)
    start = trainer.model.params.copy()
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    trainer.train()
    rollout = trainer.last_rollout
    for ref, sampled in zip(rollout.ref_logps, rollout.sampling_logps):
        np.testing.assert_allclose(ref, sampled, atol=2e-5)
    assert trainer.state.log_history[0]["kl"] == pytest.approx(0.0, abs=1e-5)

    trainer = make(6, beta=0.2)
    trainer.train()
    np.testing.assert_array_equal(trainer.ref_model.params, start)
    assert np.abs(trainer.model.params - start).max() > 1e-3
    assert logged(trainer, "kl")[-1] > 1e-4  # the policy left the reference

    trainer = make(1, beta=0.0)
    assert trainer.ref_model is None
    trainer.train()
    assert trainer.last_rollout.ref_logps is None
    assert "kl" not in trainer.state.log_history[0]


def test_rloo_keeps_a_reference_by_default(checkpoint, tmp_path):
    trainer = calign.RLOOTrainer(str(checkpoint), reward_funcs=varied,
                                 args=calign.RLOOConfig(**settings(tmp_path)),
                                 train_dataset=records(8))
    assert trainer.args.beta == 0.05 and trainer.ref_model is not None


# ---- evaluation, LoRA, checkpoints -----------------------------------------------------

def test_evaluation_logs_eval_rewards(checkpoint, tmp_path):
    """eval_strategy="steps": per_device_eval_batch_size / num_generations_eval
    prompts a batch, sampled afresh; the eval_ metrics average the batches'."""
    batches = []

    def recorder(prompts, completions, completion_ids, **kwargs):
        rewards = [float(sum(ids) % 5) for ids in completion_ids]
        batches.append((len(set(prompts)), len(prompts), rewards))
        return rewards

    trainer = grpo(checkpoint, tmp_path, recorder, eval_dataset=records(3, seed=9), max_steps=4,
                   eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
                   num_generations_eval=2)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_reward" in h]
    assert [h["step"] for h in evals] == [2, 4]
    for h in evals:
        for key in ("eval_loss", "eval_reward_std", "eval_rewards/recorder/mean",
                    "eval_completions/mean_length", "eval_entropy", "eval_frac_reward_zero_std"):
            assert math.isfinite(h[key]), key
    # the calls: 2 training steps, 2 evaluation batches (2 prompts, then 1), twice
    assert [(b[0], b[1]) for b in batches] == [(2, 8), (2, 8), (2, 4), (1, 2)] * 2
    last = batches[-2:]
    assert evals[-1]["eval_reward"] == pytest.approx(np.mean([np.mean(b[2]) for b in last]))

    before = trainer.model.params.copy()
    result = trainer.evaluate()
    assert set(result) == set(evals[-1]) - {"epoch", "step", "num_tokens"}
    np.testing.assert_array_equal(trainer.model.params, before)
    assert trainer.state.global_step == 4


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_lora_trains_only_the_adapters(checkpoint, tmp_path, beta):
    trainer = grpo(checkpoint, tmp_path, varied, max_steps=3,
                   peft_config=calign.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                   beta=beta)
    base = trainer.model.params.copy()
    adapters = trainer.model.adapters.params.copy()
    if beta == 0.0:
        assert trainer.ref_model is None
    else:  # the reference is the base: the policy with its adapters off
        assert isinstance(trainer.ref_model, AdapterReference)
    trainer.train()
    np.testing.assert_array_equal(trainer.model.params, base)
    assert np.abs(trainer.model.adapters.params - adapters).max() > 1e-4
    if beta != 0.0:
        assert trainer.state.log_history[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    trainer.save_model(str(tmp_path / "adapter"))
    loaded = calign.Model.from_pretrained(str(checkpoint))
    loaded.load_adapter(str(tmp_path / "adapter"))
    np.testing.assert_allclose(loaded.adapters.params, trainer.model.adapters.params)


@pytest.mark.parametrize("options", [
    dict(),
    dict(beta=0.1, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5),
    dict(per_device_train_batch_size=4, steps_per_generation=1, num_iterations=2),
], ids=["plain", "synced-reference", "reused-batches"])
def test_resume_continues_the_run_to_the_same_end(checkpoint, tmp_path, options):
    """A run saved at step 2 (a generation batch's boundary) and resumed
    reaches max_steps with the weights, log and reference of the run that was
    not interrupted."""
    whole = grpo(checkpoint, tmp_path / "whole", varied, max_steps=4, save_strategy="steps",
                 save_steps=2, **options)
    whole.train()
    saved = tmp_path / "whole" / "out" / "checkpoint-2"
    assert (saved / "trainer_state.json").is_file()
    assert (saved / "ref_model").is_dir() == bool(options.get("sync_ref_model"))
    resumed = grpo(checkpoint, tmp_path / "resumed", varied, max_steps=4, **options)
    resumed.train(resume_from_checkpoint=str(saved))
    assert resumed.state.global_step == 4
    np.testing.assert_allclose(resumed.model.params, whole.model.params, rtol=0, atol=1e-6)
    if options.get("sync_ref_model"):
        np.testing.assert_allclose(resumed.ref_model.params, whole.ref_model.params, atol=1e-6)
        assert np.abs(whole.ref_model.params - whole.model.params).max() > 0
    assert [h["step"] for h in resumed.state.log_history] == [1, 2, 3, 4]
    np.testing.assert_allclose(logged(resumed, "loss"), logged(whole, "loss"), atol=1e-6)


# ---- learning --------------------------------------------------------------------------

def starts_with_w3(prompts, completions, **kwargs):
    return [1.0 if c.split()[:1] == ["w3"] else 0.0 for c in completions]


@pytest.mark.experiment
@pytest.mark.parametrize("kind", ["grpo", "rloo"])
@pytest.mark.parametrize("seed", [0, 1])
def test_training_raises_a_cheap_reward(checkpoint, tmp_path, record_metric, kind, seed):
    """Reward 1 when the completion starts with w3 (1 in 40 at the start):
    40 steps of 16 completions (G = 8) make it the policy's habit. (RLOO
    without its KL penalty: with the default beta = 0.05 it learns too, more
    slowly and less steadily.)"""
    config_class, trainer_class, options = (
        (calign.GRPOConfig, calign.GRPOTrainer, {}) if kind == "grpo"
        else (calign.RLOOConfig, calign.RLOOTrainer, dict(beta=0.0)))
    trainer = trainer_class(str(checkpoint), reward_funcs=starts_with_w3, args=config_class(
        **settings(tmp_path, seed=seed, learning_rate=0.02, max_steps=40, num_generations=8,
                   per_device_train_batch_size=16, **options)), train_dataset=records(16))
    trainer.train()
    rewards = logged(trainer, "reward")
    assert len(rewards) == 40
    record_metric("reward", rewards)
    improvement = testing.assert_improves(rewards, window=5, min_improvement=0.4)
    assert improvement.first < 0.3 and improvement.last > 0.7, improvement
