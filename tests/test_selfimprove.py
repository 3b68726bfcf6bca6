"""calign.selfimprove on hand-checkable cases: a tiny model's seeded samples
and simple scorers whose right answer can be worked out from the samples."""

from collections import Counter

import numpy as np
import pytest
import transformers

import calign
from calign import selfimprove as si
from calign.selfimprove.builders import _ngram_rarity, _sequence_logps

VOCAB = 23


@pytest.fixture(scope="module")
def model(tiny_model):
    # seed 10: a draw whose samples hold the cases the tests below need (on-policy
    # pairs for a transformers tokenizer, judgements that do and do not parse);
    # seeds 0-9 miss one of them
    return calign.Model.from_pretrained(str(tiny_model(
        "llama", seed=10, hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, head_dim=None, intermediate_size=32, vocab_size=VOCAB,
        initializer_range=0.5, max_position_embeddings=256, attention_bias=False,
        mlp_bias=False, rope_theta=10000.0)))


PROMPTS = [[1, 2, 3], [4, 5], [6]]
SAMPLING = dict(max_new_tokens=5, seed=3)


def count_high(prompt, completion):
    """A stand-in reward: how many tokens are 12 or above."""
    return float(sum(t >= 12 for t in completion))


def test_on_policy_pairs_best_vs_worst_and_ties(model):
    records, summary = si.on_policy_pairs(model, PROMPTS, count_high, n=6, **SAMPLING)
    _, samples = si.sample(model, PROMPTS, 6, **SAMPLING)
    expected = 0
    for prompt, completions in zip(PROMPTS, samples, strict=True):
        scores = [count_high(prompt, c) for c in completions]
        if max(scores) == min(scores):
            continue
        record = next(r for r in records if r["prompt_input_ids"] == prompt)
        assert record["chosen_input_ids"] == completions[int(np.argmax(scores))]
        assert record["rejected_input_ids"] == completions[int(np.argmin(scores))]
        expected += 1
    assert summary["pairs"] == expected == len(records) >= 1
    _, summary = si.on_policy_pairs(model, PROMPTS, lambda p, c: 1.0, n=4, **SAMPLING)
    assert summary == {"prompts": 3, "pairs": 0, "skipped_ties": 3}


def test_scpo_votes_and_weights(model):
    def first_token(completion):
        return completion[0] % 3

    records, summary = si.scpo_pairs(model, PROMPTS, first_token, n=8, **SAMPLING)
    _, samples = si.sample(model, PROMPTS, 8, **SAMPLING)
    for prompt, completions in zip(PROMPTS, samples, strict=True):
        votes = Counter(first_token(c) for c in completions).most_common()
        kept = [r for r in records if r["prompt_input_ids"] == prompt]
        if len(votes) < 2 or votes[0][1] == votes[-1][1]:
            assert not kept
            continue
        assert kept[0]["weight"] == pytest.approx((votes[0][1] - votes[-1][1]) / 8)
        assert first_token(kept[0]["chosen_input_ids"]) == votes[0][0]
        assert first_token(kept[0]["rejected_input_ids"]) == votes[-1][0]
    assert summary["pairs"] + summary["dropped"] == 3 and records
    everything_same, _ = si.scpo_pairs(model, PROMPTS, lambda c: "same", n=4, **SAMPLING)
    assert everything_same == []
    strict, _ = si.scpo_pairs(model, PROMPTS, first_token, n=8, min_margin=1.0, **SAMPLING)
    assert strict == []


@pytest.mark.parametrize("diversity", ["logprob", "ngram"])
def test_divpo_picks_diverse_good_and_typical_bad(model, diversity):
    records, summary = si.divpo_pairs(model, PROMPTS, count_high, n=8, diversity=diversity,
                                      **SAMPLING)
    _, samples = si.sample(model, PROMPTS, 8, **SAMPLING)
    for prompt, completions in zip(PROMPTS, samples, strict=True):
        scores = np.array([count_high(prompt, c) for c in completions])
        good = scores >= np.percentile(scores, 50)
        kept = [r for r in records if r["prompt_input_ids"] == prompt]
        if good.all():
            assert not kept
            continue
        if diversity == "logprob":
            div = [-x for x in _sequence_logps(model, prompt, completions)]
        else:
            div = _ngram_rarity(completions)
        best = max(np.nonzero(good)[0], key=lambda i: div[i])
        worst = min(np.nonzero(~good)[0], key=lambda i: div[i])
        assert kept[0]["chosen_input_ids"] == completions[best]
        assert kept[0]["rejected_input_ids"] == completions[worst]
    assert summary["pairs"] == len(records) >= 1


def test_judge_scores_are_parsed_and_unparsable_dropped(model, tmp_path):
    assert si.parse_judge_score("good answer.\nScore: 4") == 4.0
    assert si.parse_judge_score("Score: 2 ... Score: 5") == 5.0
    assert si.parse_judge_score("no score here") is None
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "w1"}')
    tok = calign.Tokenizer.from_pretrained(str(tmp_path))
    records, summary = si.self_rewarding_pairs(model, ["w3 w4", "w5"], tok, n=2,
                                               judge_samples=2, judge_max_new_tokens=4,
                                               **SAMPLING)
    # a random model's judgements never contain "Score:": every sample is dropped
    assert records == [] and summary["unparsable_samples"] == 4
    with pytest.raises(ValueError, match="placeholders"):
        si.self_rewarding_pairs(model, ["w3"], tok, judge_template="rate: {prompt}")


def test_select_by_reward_gap_equals_the_loss_library(model):
    reference = calign.Model(model.config)
    reference.params[...] = model.params * 0.9
    rng = np.random.default_rng(0)
    data = [{"prompt_input_ids": rng.integers(1, VOCAB, 3).tolist(),
             "chosen_input_ids": rng.integers(1, VOCAB, 2).tolist(),
             "rejected_input_ids": rng.integers(1, VOCAB, 3).tolist()} for _ in range(10)]
    kept, gaps = si.select_by_reward_gap(model, reference, data, beta=0.3, fraction=0.3)

    def logp(m, r, key):
        batch = calign.pack_shared_prefix([(r["prompt_input_ids"], [r[key]])])
        return float(m.packed_token_logprobs(batch).sum())

    out = calign.losses.dpo_loss(
        [logp(model, r, "chosen_input_ids") for r in data],
        [logp(model, r, "rejected_input_ids") for r in data],
        [logp(reference, r, "chosen_input_ids") for r in data],
        [logp(reference, r, "rejected_input_ids") for r in data], beta=0.3)
    np.testing.assert_allclose(gaps, out.chosen_rewards - out.rejected_rewards, atol=1e-5)
    smallest = sorted(np.argsort(gaps)[:3])
    assert kept == [data[i] for i in smallest]


def test_bad_input(model):
    with pytest.raises(ValueError, match="prompts is empty"):
        si.on_policy_pairs(model, [], count_high)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        si.on_policy_pairs(model, PROMPTS, count_high, n=1)
    with pytest.raises(ValueError, match="not a finite number"):
        si.on_policy_pairs(model, PROMPTS, lambda p, c: float("nan"), **SAMPLING)
    with pytest.raises(RuntimeError, match="boom"):
        si.on_policy_pairs(model, PROMPTS, lambda p, c: (_ for _ in ()).throw(
            RuntimeError("boom")), **SAMPLING)
    with pytest.raises(ValueError, match="text prompts need tokenizer"):
        si.on_policy_pairs(model, ["hello"], count_high)
    with pytest.raises(ValueError, match="fraction"):
        si.select_by_reward_gap(model, model, [], beta=0.1, fraction=0)


@pytest.mark.parametrize("builder,options", [
    (si.scpo_pairs, dict(extract_answer=lambda c: c[0])),
    (si.divpo_pairs, dict(scorer=count_high)),
    (si.on_policy_pairs, dict(scorer=count_high)),
])
def test_every_builder_rejects_empty_prompts_and_small_n(model, builder, options):
    with pytest.raises(ValueError, match="prompts is empty"):
        builder(model, [], **options, **SAMPLING)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        builder(model, PROMPTS, n=1, **options, **SAMPLING)


def test_bad_scorers_and_extractors(model, judge_tokenizer):
    def boom(*args):
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match="not a finite number"):
        si.divpo_pairs(model, PROMPTS, lambda p, c: float("nan"), n=4, **SAMPLING)
    with pytest.raises(ValueError, match="the scorer returned 'high', not a number"):
        si.divpo_pairs(model, PROMPTS, lambda p, c: "high", n=4, **SAMPLING)
    with pytest.raises(RuntimeError, match="boom"):
        si.divpo_pairs(model, PROMPTS, boom, n=4, **SAMPLING)
    with pytest.raises(RuntimeError, match="boom"):
        si.scpo_pairs(model, PROMPTS, boom, n=4, **SAMPLING)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        si.self_rewarding_pairs(model, ["w3"], judge_tokenizer, n=1)
    with pytest.raises(ValueError, match="placeholders"):
        si.self_rewarding_pairs(model, ["w3"], judge_tokenizer, judge_template="{response} only")


def test_dpo_trainer_uses_the_weight_field(model, tmp_path):
    """A pair with weight 0 contributes nothing: training on it alone leaves the
    parameters where they were (weight decay off)."""
    record = {"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4],
              "weight": 0.0}
    trainer = calign.DPOTrainer(model, args=calign.DPOConfig(
        output_dir=str(tmp_path), max_steps=2, learning_rate=1e-2, save_steps=0,
        disable_tqdm=True), train_dataset=[record])
    before = model.params.copy()
    trainer.train()
    np.testing.assert_array_equal(trainer.model.params, before)
    assert trainer.state.log_history[-1]["loss"] == 0.0


def test_online_dpo_ranks_fresh_samples_and_trains(model, tmp_path):
    prompts = [{"prompt_input_ids": p} for p in PROMPTS + [[7, 8], [9, 10, 11]]]
    settings = dict(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=5,
                    learning_rate=1e-2, beta=0.5, max_new_tokens=4, save_steps=0,
                    logging_steps=1, disable_tqdm=True)
    runs = []
    for _ in range(2):
        start = calign.Model(model.config)
        start.params[...] = model.params
        trainer = calign.OnlineDPOTrainer(start, reward_model=count_high,
                                          args=calign.OnlineDPOConfig(**settings),
                                          train_dataset=prompts)
        trainer.train()
        runs.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
        for pair in trainer.last_pairs:
            chosen, rejected = pair.completions
            assert count_high(None, chosen) >= count_high(None, rejected)
    assert runs[0][0] == pytest.approx(np.log(2), abs=1e-9)  # policy = reference at step 1
    assert runs[0] == runs[1]  # seeded: the same samples, the same run
    with pytest.raises(TypeError, match="reward_model must be"):
        calign.OnlineDPOTrainer(model, reward_model="judge", args=calign.OnlineDPOConfig(
            output_dir=str(tmp_path)), train_dataset=prompts)
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        calign.OnlineDPOConfig(precompute_ref_log_probs=True)


def test_dpo_trainer_scpo_step_equals_the_loss_library(model, tmp_path):
    """loss_type="scpo" in the trainer: the first step's loss and rewards are
    calign.losses on the same log-probs, with the records' vote weights."""
    rng = np.random.default_rng(4)
    data = [{"prompt_input_ids": rng.integers(1, VOCAB, 3).tolist(),
             "chosen_input_ids": rng.integers(1, VOCAB, int(rng.integers(1, 5))).tolist(),
             "rejected_input_ids": rng.integers(1, VOCAB, 3).tolist(),
             "weight": float(rng.integers(1, 8)) / 8} for _ in range(6)]
    reference = calign.Model(model.config)
    reference.params[...] = model.params * 0.9

    def logp(m, r, key):
        batch = calign.pack_shared_prefix([(r["prompt_input_ids"], [r[key]])])
        return float(m.packed_token_logprobs(batch).sum())

    expected = calign.losses.dpo_loss(
        [logp(model, r, "chosen_input_ids") for r in data],
        [logp(model, r, "rejected_input_ids") for r in data],
        [logp(reference, r, "chosen_input_ids") for r in data],
        [logp(reference, r, "rejected_input_ids") for r in data], beta=0.3, loss_type="scpo",
        scpo_alpha=0.7, chosen_lengths=[len(r["chosen_input_ids"]) for r in data],
        weights=[r["weight"] for r in data])
    start = calign.Model(model.config)
    start.params[...] = model.params
    trainer = calign.DPOTrainer(start, ref_model=reference, args=calign.DPOConfig(
        output_dir=str(tmp_path), loss_type="scpo", scpo_alpha=0.7, beta=0.3, max_steps=1,
        per_device_train_batch_size=6, learning_rate=1e-2, save_steps=0, logging_steps=1,
        disable_tqdm=True), train_dataset=data)
    trainer.train()
    row = trainer.state.log_history[0]
    assert row["loss"] == pytest.approx(expected.losses.mean(), rel=1e-5)
    assert row["rewards/chosen"] == pytest.approx(expected.chosen_rewards.mean(), rel=1e-5)
    assert not np.array_equal(trainer.model.params, model.params)


@pytest.fixture(scope="module")
def judge_tokenizer(tmp_path_factory):
    """Words w0..w16, then "Score:" and the digits 1 to 5: the tiny model's
    random judgements sometimes read "... Score: 4 ...", so some parse."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(17)] + ["Score:", "1", "2", "3", "4", "5"]
    assert len(words) == VOCAB
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path_factory.mktemp("judge_tok")
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text('{"eos_token": "w1"}')
    return calign.Tokenizer.from_pretrained(str(path))


JUDGE = dict(judge_template="w2 {prompt} w3 {response} w4 Score:", n=4, judge_samples=3,
             judge_max_new_tokens=10, max_new_tokens=4)
ITERATION_PROMPTS = ["w5 w6", "w7", "w8 w9 w10", "w11 w12", "w13", "w14 w15"]


def test_iterate_self_rewarding_rounds(model, judge_tokenizer, tmp_path):
    """M1 -> M2 -> M3: each iteration's pairs are what self_rewarding_pairs gives
    for the model of that iteration, DPO starts from it with it as reference
    (first step's loss ln 2), and the model changes."""
    args = calign.DPOConfig(output_dir=str(tmp_path), max_steps=1, learning_rate=5e-2,
                            beta=0.5, per_device_train_batch_size=8, logging_steps=1,
                            save_steps=0, disable_tqdm=True)
    start = model.params.copy()
    models, summaries = si.iterate(model, ITERATION_PROMPTS, args, iterations=2,
                                   tokenizer=judge_tokenizer, seed=3, **JUDGE)
    np.testing.assert_array_equal(model.params, start)  # the starting model is left alone
    assert len(models) == 3 and [s["iteration"] for s in summaries] == [1, 2]
    for t, summary in enumerate(summaries, start=1):
        records, expected = si.self_rewarding_pairs(models[t - 1], ITERATION_PROMPTS,
                                                    judge_tokenizer, seed=3 + t - 1, **JUDGE)
        assert {k: summary[k] for k in expected} == expected
        assert summary["pairs"] == len(records) >= 1
        assert summary["unparsable_samples"] >= 1  # some judgements did not parse
        assert summary["steps"] == 1
        assert summary["loss"] == pytest.approx(np.log(2), abs=1e-6)
        assert not np.array_equal(models[t].params, models[t - 1].params)


def test_iterate_with_other_builders_and_evaluate(model, tmp_path):
    """ScPO rounds: scpo_pairs with the ScPO loss; evaluate() lands in the summary;
    an iteration without pairs keeps the model."""
    args = calign.DPOConfig(output_dir=str(tmp_path), max_steps=2, learning_rate=1e-2,
                            loss_type="scpo", save_steps=0, disable_tqdm=True)
    models, summaries = si.iterate(
        model, PROMPTS, args, iterations=2, pairs=si.scpo_pairs,
        extract_answer=lambda c: c[0] % 3, n=8, max_new_tokens=5,
        evaluate=lambda m: {"norm": float(np.linalg.norm(m.params))})
    for t, summary in enumerate(summaries, start=1):
        assert summary["pairs"] >= 1 and summary["steps"] == 2
        assert summary["norm"] == pytest.approx(float(np.linalg.norm(models[t].params)))
    models, summaries = si.iterate(model, PROMPTS, args, iterations=1, pairs=si.on_policy_pairs,
                                   scorer=lambda p, c: 1.0, max_new_tokens=3)
    assert summaries[0]["pairs"] == 0 and summaries[0]["steps"] == 0
    np.testing.assert_array_equal(models[1].params, model.params)


def test_iterate_bad_input(model, judge_tokenizer, tmp_path):
    args = calign.DPOConfig(output_dir=str(tmp_path), max_steps=1)
    for iterations in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
            si.iterate(model, ITERATION_PROMPTS, args, iterations=iterations,
                       tokenizer=judge_tokenizer)
    with pytest.raises(TypeError, match="args must be a calign.DPOConfig"):
        si.iterate(model, ITERATION_PROMPTS, {"beta": 0.1}, tokenizer=judge_tokenizer)
    with pytest.raises(TypeError, match="model must be a calign.Model"):
        si.iterate("folder", ITERATION_PROMPTS, args, tokenizer=judge_tokenizer)
    with pytest.raises(TypeError, match="pairs must be a pair builder"):
        si.iterate(model, ITERATION_PROMPTS, args, pairs="self_rewarding",
                   tokenizer=judge_tokenizer)
    with pytest.raises(ValueError, match="prompts is empty"):
        si.iterate(model, [], args, tokenizer=judge_tokenizer)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        si.iterate(model, ITERATION_PROMPTS, args, tokenizer=judge_tokenizer, n=1)
    with pytest.raises(ValueError, match="placeholders"):
        si.iterate(model, ITERATION_PROMPTS, args, tokenizer=judge_tokenizer,
                   judge_template="no placeholder here")


def test_online_dpo_bad_reward(model, tmp_path):
    args = calign.OnlineDPOConfig(output_dir=str(tmp_path), max_steps=1, max_new_tokens=3,
                                  save_steps=0, disable_tqdm=True)
    prompts = [{"prompt_input_ids": p} for p in PROMPTS]
    for reward, error, match in [(lambda p, c: float("nan"), ValueError, "not a finite number"),
                                 (lambda p, c: 1 / 0, ZeroDivisionError, "division")]:
        trainer = calign.OnlineDPOTrainer(model, reward_model=reward, args=args,
                                          train_dataset=prompts)
        with pytest.raises(error, match=match):
            trainer.train()
    with pytest.raises(ValueError, match="empty prompt"):
        calign.OnlineDPOTrainer(model, reward_model=count_high, args=args,
                                train_dataset=[{"prompt_input_ids": []}])


@pytest.fixture
def no_sampling(model, monkeypatch):
    """The model refuses to sample: an error raised under it came up front."""
    def generate(*args, **kwargs):
        raise AssertionError("sampled before the bad argument was reported")

    monkeypatch.setattr(model, "generate", generate)
    return model


def test_self_rewarding_checks_its_arguments_before_sampling(no_sampling, judge_tokenizer):
    model, tok = no_sampling, judge_tokenizer
    for template, match in [("{prompt} {response} {score}", r"placeholder \{score\}"),
                            ("{prompt} {response} {0}", r"positional placeholder \{0\}"),
                            ("{prompt} {response} {}", r"positional placeholder \{\}"),
                            ("{prompt} {response} {", "not a valid format string"),
                            ("{prompt!x} {response}", "cannot be filled in"),
                            ("{{prompt}} {response}", "must contain {prompt} and {response}")]:
        with pytest.raises(ValueError, match=match):
            si.self_rewarding_pairs(model, ["w3"], tok, judge_template=template)
    with pytest.raises(TypeError, match="judge_template must be a string"):
        si.self_rewarding_pairs(model, ["w3"], tok, judge_template=None)
    for value in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="judge_samples must be an integer >= 1"):
            si.self_rewarding_pairs(model, ["w3"], tok, judge_samples=value)
    with pytest.raises(ValueError, match="judge_max_new_tokens must be an integer >= 1"):
        si.self_rewarding_pairs(model, ["w3"], tok, judge_max_new_tokens=0)
    with pytest.raises(ValueError, match="needs tokenizer=: the judge prompt is text"):
        si.self_rewarding_pairs(model, [[3, 4]], None)
    with pytest.raises(ValueError, match="seed must be an integer or None"):
        si.self_rewarding_pairs(model, ["w3"], tok, seed="3")
    # 252 tokens with prompt 1 and no response, + 4 new: over the 256 positions
    with pytest.raises(ValueError, match=r"judge prompt for prompt 1 \(judge_template filled in "
                                         r"with the prompt and an empty response\) already has "
                                         r"\d+ tokens.*shorter judge_template"):
        si.self_rewarding_pairs(model, ["w3", "w4 w5 w6 w7"], tok, n=2, judge_max_new_tokens=4,
                                judge_template="{prompt} {response}" + " w2" * 250)


def test_self_rewarding_judge_prompt_too_long_after_sampling(model, judge_tokenizer):
    """The template fits with an empty response but not with the sampled one:
    the error names the judge prompt of prompt i, candidate k, not the user's."""
    template = "w2 " * 249 + "{prompt} {response}"   # 250 tokens + 4 new: fits 256 positions
    with pytest.raises(ValueError, match=r"judge prompt for prompt 0, candidate \d \(judge_"
                                         r"template filled in with the prompt and the sampled "
                                         r"response\) has \d+ tokens.*max_new_tokens"):
        si.self_rewarding_pairs(model, ["w3"], judge_tokenizer, judge_template=template, n=2,
                                judge_samples=1, judge_max_new_tokens=4, **SAMPLING)


def test_self_rewarding_and_iterate_accept_seed_none(model, judge_tokenizer, tmp_path):
    """seed=None: unseeded sampling (as Model.generate), judgements too."""
    options = dict(JUDGE, judge_samples=1, judge_max_new_tokens=3)
    _, summary = si.self_rewarding_pairs(model, ITERATION_PROMPTS[:2], judge_tokenizer,
                                         seed=None, **options)
    assert summary["prompts"] == 2
    args = calign.DPOConfig(output_dir=str(tmp_path), max_steps=1, save_steps=0,
                            disable_tqdm=True)
    _, summaries = si.iterate(model, PROMPTS, args, iterations=1, pairs=si.on_policy_pairs,
                              scorer=count_high, max_new_tokens=3, seed=None)
    assert summaries[0]["prompts"] == 3


def test_prompts_tokenizer_and_numbers_are_checked_before_sampling(no_sampling, tmp_path):
    model = no_sampling
    with pytest.raises(TypeError, match=r"prompts must be a list of prompts \(strings, or "
                                        r"lists of token ids\): prompt 0 is the integer 1"
                                        r".*\[\[1, 2, 3\]\]"):
        si.on_policy_pairs(model, [1, 2, 3], count_high)
    for prompts in ("w3 w4", None, 7):
        with pytest.raises(TypeError, match="prompts must be a list of prompts"):
            si.on_policy_pairs(model, prompts, count_high)
    with pytest.raises(TypeError, match=r"prompt 1 is \[1.5\]"):
        si.on_policy_pairs(model, [[1], [1.5]], count_high)
    with pytest.raises(ValueError, match=r"prompt 0 holds token id 99, outside the model's "
                                         r"vocabulary \[0, 23\)"):
        si.on_policy_pairs(model, [[1, 99]], count_high)
    with pytest.raises(ValueError, match="tokenizer 'x' is not a folder holding tokenizer.json"):
        si.on_policy_pairs(model, PROMPTS, count_high, tokenizer="x")
    with pytest.raises(TypeError, match="tokenizer must be a calign.Tokenizer"):
        si.on_policy_pairs(model, PROMPTS, count_high, tokenizer=5)
    with pytest.raises(TypeError, match="scorer must be"):
        si.on_policy_pairs(model, PROMPTS, "judge")
    with pytest.raises(TypeError, match="extract_answer must be a callable"):
        si.scpo_pairs(model, PROMPTS, "first token")
    for value in (float("nan"), "a", -1, 1.5, True, None):
        with pytest.raises(ValueError, match=r"min_margin must be a finite number in \[0, 1\] "
                                             r"\(a fraction"):
            si.scpo_pairs(model, PROMPTS, lambda c: c[0], min_margin=value)
    for value in (float("nan"), "50", -1, 101, True):
        with pytest.raises(ValueError, match=r"quality_percentile must be a finite number in "
                                             r"\[0, 100\]"):
            si.divpo_pairs(model, PROMPTS, count_high, quality_percentile=value)
    for name, value in [("max_new_tokens", 0), ("temperature", 0), ("temperature", "1"),
                        ("top_p", 1.5), ("seed", 1.5)]:
        with pytest.raises(ValueError, match=f"{name} must be"):
            si.on_policy_pairs(model, PROMPTS, count_high, **{name: value})
    data = [{"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4]}]
    for value in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            si.select_by_reward_gap(model, model, data, beta=0.1, batch_size=value)
    with pytest.raises(ValueError, match=r"fraction must be a finite number in \(0, 1\]"):
        si.select_by_reward_gap(model, model, data, beta=0.1, fraction="0.5")
    with pytest.raises(ValueError, match="dataset record 0 holds text: pass tokenizer="):
        si.select_by_reward_gap(model, model, [{"prompt": "w1", "chosen": "w2",
                                                "rejected": "w3"}], beta=0.1)


def test_select_by_reward_gap_checks_records_fit_the_models(model):
    """A pair longer than the model's 256 positions is named before any scoring."""
    data = [{"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4]},
            {"prompt_input_ids": [1] * 250, "chosen_input_ids": [3] * 7,
             "rejected_input_ids": [4]}]
    with pytest.raises(ValueError, match=r"dataset record 1: the prompt \(250 tokens\) plus its "
                                         r"longest completion \(7 tokens\) needs 257 positions, "
                                         r"more than the policy's maximum positions \(256\)"):
        si.select_by_reward_gap(model, model, data, beta=0.1)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        si.select_by_reward_gap(model, model, data[:1], beta=0.0)


def test_scpo_unhashable_answer_names_extract_answer(model):
    with pytest.raises(TypeError, match=r"extract_answer returned \[\d+\], a list, which cannot "
                                        r"be counted as a vote"):
        si.scpo_pairs(model, PROMPTS, lambda c: [c[0]], n=4, **SAMPLING)


def test_numpy_scalars_are_accepted(model, tmp_path):
    """NumPy integers and reals work wherever Python's do, with the same samples."""
    python = si.on_policy_pairs(model, PROMPTS, count_high, n=4, max_new_tokens=5,
                                temperature=0.5, top_p=0.9, seed=3)
    numpy = si.on_policy_pairs(model, PROMPTS, count_high, n=np.int64(4),
                               max_new_tokens=np.int32(5), temperature=np.float32(0.5),
                               top_p=np.float64(0.9), seed=np.int64(3))
    assert numpy == python
    first_token = lambda c: c[0] % 3  # noqa: E731
    assert si.scpo_pairs(model, PROMPTS, first_token, n=np.int64(8), min_margin=np.float32(0.1),
                         **SAMPLING) == si.scpo_pairs(model, PROMPTS, first_token, n=8,
                                                      min_margin=float(np.float32(0.1)),
                                                      **SAMPLING)
    assert si.divpo_pairs(model, PROMPTS, count_high, n=4, quality_percentile=np.float64(50),
                          **SAMPLING) == si.divpo_pairs(model, PROMPTS, count_high, n=4,
                                                        **SAMPLING)
    data = [{"prompt_input_ids": [1, 2], "chosen_input_ids": [3], "rejected_input_ids": [4]}] * 3
    kept, _ = si.select_by_reward_gap(model, model, data, beta=0.1, fraction=np.float64(0.5),
                                      batch_size=np.int64(2))
    assert len(kept) == 2
    args = calign.DPOConfig(output_dir=str(tmp_path), max_steps=1, save_steps=0,
                            disable_tqdm=True)
    models, _ = si.iterate(model, PROMPTS, args, iterations=np.int64(1), pairs=si.on_policy_pairs,
                           scorer=count_high, max_new_tokens=3, seed=np.int64(1))
    assert len(models) == 2
    with pytest.raises(ValueError, match="n must be an integer >= 2, got True"):
        si.on_policy_pairs(model, PROMPTS, count_high, n=True)


def test_iterate_checks_what_pairs_and_evaluate_return(model, tmp_path):
    args = calign.DPOConfig(output_dir=str(tmp_path), max_steps=1, save_steps=0,
                            disable_tqdm=True)
    with pytest.raises(TypeError, match=r"pairs must return \(records, summary dict\)"):
        si.iterate(model, PROMPTS, args, pairs=lambda *a, **k: [])
    with pytest.raises(TypeError, match="evaluate must return a dict"):
        si.iterate(model, PROMPTS, args, iterations=1, pairs=lambda *a, **k: ([], {}),
                   evaluate=lambda m: 0.5)


def test_online_dpo_reports_bad_rewards_and_records(model, tmp_path):
    def config(**options):
        return calign.OnlineDPOConfig(output_dir=str(tmp_path), max_steps=1, max_new_tokens=3,
                                      save_steps=0, disable_tqdm=True, **options)

    prompts = [{"prompt_input_ids": p} for p in PROMPTS]

    def judge(prompt, completion):
        return "high"

    for reward, match in [(judge, "the reward function .*judge .*returned 'high', not a number"),
                          (lambda p, c: None, "<lambda> .*returned None, not a number"),
                          (lambda p, c: [1.0, 2.0], r"returned \[1.0, 2.0\], not a number")]:
        trainer = calign.OnlineDPOTrainer(model, reward_model=reward, args=config(),
                                          train_dataset=prompts)
        with pytest.raises(ValueError, match=match):
            trainer.train()
    for value, match in [(5, "got int"), ("w1 w2", "got str"), ([1.5], "got list"),
                         (None, "got NoneType")]:
        with pytest.raises(TypeError, match="train_dataset record 1: prompt_input_ids must be "
                                            "a list of integer token ids, " + match):
            calign.OnlineDPOTrainer(model, reward_model=count_high, args=config(),
                                    train_dataset=[prompts[0], {"prompt_input_ids": value}])
    with pytest.raises(TypeError, match="train_dataset record 0: prompt must be a string"):
        calign.OnlineDPOTrainer(model, reward_model=count_high, args=config(),
                                train_dataset=[{"prompt": 5}])
    with pytest.raises(ValueError, match=r"eval_dataset record 0: the prompt holds token id 99, "
                                         r"outside the model's vocabulary \[0, 23\)"):
        calign.OnlineDPOTrainer(model, reward_model=count_high, args=config(),
                                train_dataset=prompts, eval_dataset=[{"prompt_input_ids": [99]}])


def test_online_dpo_checks_prompt_lengths_when_built(model, tmp_path):
    """Every prompt is checked against max_length and the model's 256 positions
    when the trainer is built (not partway through training); max_prompt_length
    and max_length (less max_new_tokens) keep a prompt's end, as TRL."""
    def build(data, **options):
        options = dict(dict(max_new_tokens=3, max_length=None), **options)
        return calign.OnlineDPOTrainer(model, reward_model=count_high, args=calign.OnlineDPOConfig(
            output_dir=str(tmp_path), max_steps=1, save_steps=0, disable_tqdm=True, **options),
            train_dataset=[{"prompt_input_ids": p} for p in data])

    long = list(range(1, 23)) * 12  # 264 tokens
    with pytest.raises(ValueError, match=r"train_dataset record 2: the prompt \(264 tokens\) plus "
                                         r"max_new_tokens \(3\) exceeds the model's maximum "
                                         r"positions \(256\): set max_prompt_length"):
        build([[1, 2], [3], long])
    assert build([[1, 2, 3, 4, 5]], max_length=6).train_examples[0].prompt_ids == [3, 4, 5]
    with pytest.raises(ValueError, match=r"the prompt \(254 tokens after truncation\) plus "
                                         r"max_new_tokens \(3\)"):
        build([long], max_prompt_length=254)
    assert build([[1, 2, 3, 4, 5]], max_prompt_length=2).train_examples[0].prompt_ids == [4, 5]
    for mode in ("keep_start", "keep_end"):  # TRL cuts prompts from the left either way
        trainer = build([long, [1, 2]], max_length=8, truncation_mode=mode)
        assert [e.prompt_ids for e in trainer.train_examples] == [long[-5:], [1, 2]]
    trainer.train()  # the truncated prompts sample and train
    with pytest.raises(ValueError, match=r"max_new_tokens must be below max_length \(8\)"):
        calign.OnlineDPOConfig(max_length=8, max_new_tokens=8)
    short = calign.Model(dict(model.config, max_position_embeddings=8))  # a reference
    with pytest.raises(ValueError, match=r"train_dataset record 1: the prompt \(6 tokens\) plus "
                                         r"max_new_tokens \(3\) exceeds the ref_model's maximum "
                                         r"positions \(8\)"):
        calign.OnlineDPOTrainer(model, reward_model=count_high, ref_model=short,
                                args=calign.OnlineDPOConfig(output_dir=str(tmp_path),
                                                            max_new_tokens=3),
                                train_dataset=[{"prompt_input_ids": [1]},
                                               {"prompt_input_ids": [1] * 6}])


def test_a_transformers_tokenizer_works_like_calign_s(model, tmp_path):
    """Any object with encode, decode and eos_token_id is a tokenizer here (a
    transformers tokenizer over the same tokenizer.json gives the same records)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "w1"}')
    ours = calign.Tokenizer.from_pretrained(str(tmp_path))
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"),
                                                  eos_token="w1")

    def score(prompt, completion):
        return float(completion.count("w5"))

    built = [si.on_policy_pairs(model, ["w5 w6", "w7"], score, n=3, tokenizer=tok, **SAMPLING)
             for tok in (ours, theirs)]
    assert built[0] == built[1] and built[0][0]  # the same pairs, and some
