"""calign's GRPOTrainer and RLOOTrainer against TRL 1.16's on the same
completions.

TRL's GRPOTrainer takes a `rollout_func` that returns the completions of a
batch (its RLOOTrainer's generation method is replaced); calign's sampler
(calign.trainers.rollouts.sample) is replaced by one returning the same
token ids. The dataset is exactly one generation batch
(so the prompt order cannot differ), TRL runs in float32 (bf16=False) with
SGD, so one step's parameter change is -lr times the gradient, and the logged
metrics (loss, rewards, advantages' zero-std fraction, entropy, KL, clip
ratios, completion lengths, grad_norm) and the parameters after the step are
compared."""

import numpy as np
import pytest
import transformers

import calign
from calign import testing
from calign.trainers import rollouts

trl = pytest.importorskip("trl")

G = 4
WORDS = testing.word_list(40)


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tiny_tokenizer):
    return tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=42), hidden_size=32,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=None,
                      intermediate_size=48, initializer_range=0.1, attention_bias=False,
                      mlp_bias=False, rope_theta=10000.0, max_position_embeddings=64)


PROMPTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"]


def completion_table(tokenizer, max_completion_length):
    """G completions per prompt, as token ids: some end with EOS, some are cut
    at max_completion_length (truncated), and one prompt's completions all get
    the same reward (a zero-std group)."""
    rng = np.random.default_rng(5)
    eos = tokenizer.eos_token_id
    table = {}
    for p, prompt in enumerate(PROMPTS):
        rows = []
        for k in range(G):
            if p == 2:  # equal rewards: the same length, no w3
                words = ["w10", "w11"]
            else:
                n = int(rng.integers(1, max_completion_length))
                words = [WORDS[int(i)] for i in rng.integers(2, 40, n)]
            ids = tokenizer.encode(" ".join(words))
            if k == 1 and p == 0:  # cut before any EOS
                ids = (ids * max_completion_length)[:max_completion_length]
            else:
                ids = ids[:max_completion_length - 1] + [eos]
            rows.append(ids)
        table[prompt] = rows
    return table


def reward_words(prompts, completions, **kwargs):
    """A reward of the text alone: w3 counts, length costs a little."""
    return [c.split().count("w3") + 0.5 * c.split().count("w12") - 0.1 * len(c.split())
            for c in completions]


def length_reward(prompts, completions, completion_ids, **kwargs):
    return [float(len(ids) % 3) for ids in completion_ids]


def trl_run(checkpoint, table, tmp_path, config_class, trainer_class, settings, funcs):
    import datasets

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    served = {}

    def rollout_func(prompts, trainer):
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        for prompt in prompts:
            k = served.get(prompt, 0)
            served[prompt] = k + 1
            ids = table[prompt][k]
            out["prompt_ids"].append(tokenizer(prompt)["input_ids"])
            out["completion_ids"].append(ids)
            out["logprobs"].append([0.0] * len(ids))
        return out

    def generate_single_turn(prompt_ids, images, multimodal_fields):  # RLOO's generation
        return rollout_func([tokenizer.decode(ids) for ids in prompt_ids], None)["completion_ids"]

    hook = dict(rollout_func=rollout_func) if trainer_class is trl.GRPOTrainer else {}
    trainer = trainer_class(
        model=str(checkpoint), reward_funcs=funcs,
        args=config_class(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                          save_strategy="no", seed=0, bf16=False, optim="sgd",
                          max_grad_norm=1e6, **settings),
        train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        processing_class=tokenizer, **hook)
    if not hook:
        trainer._generate_single_turn = generate_single_turn
    trainer.train()
    params = {n: p.detach().numpy().copy() for n, p in trainer.model.named_parameters()}
    return [h for h in trainer.state.log_history if "loss" in h][0], params


def calign_run(checkpoint, table, tmp_path, monkeypatch, config_class, trainer_class, settings,
               funcs):
    def sample(model, examples, G_, args, eos_ids, seed, first_prompt_index=0):
        served = {}
        rows, completions = [], []
        for e in examples:
            for _ in range(G_):
                k = served.get(e.prompt, 0)
                served[e.prompt] = k + 1
                rows.append(e)
                completions.append(table[e.prompt][k])
        truncated = np.array([c[-1] not in eos_ids for c in completions])
        rollout = rollouts.Rollout(rows, completions, None, truncated)
        # the sampling policy's log-probs, as the C sampler gives them (TRL's
        # RLOO computes them with a second forward, packed as the reference's
        # are, so that both agree exactly while the policy is the reference)
        packed = rollouts.PackedRows(rollout, range(len(rows)))
        scores = model.packed_scores(model.forward_packed(packed.batch), packed.batch,
                                     args.temperature)
        by_row = packed.per_row(scores)
        rollout.sampling_logps = [by_row[i] for i in range(len(rows))]
        return rollout

    monkeypatch.setattr(rollouts, "sample", sample)
    trainer = trainer_class(str(checkpoint), reward_funcs=funcs, args=config_class(
        output_dir=str(tmp_path / "calign"), disable_tqdm=True, seed=0, optim="sgd",
        max_grad_norm=1e6, **settings), train_dataset=[{"prompt": p} for p in PROMPTS])
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h][0], trainer.model


def compare(ours, theirs, model, trl_params):
    for name, value in theirs.items():
        if name in ("epoch", "step", "step_time", "num_tokens", "num_input_tokens_seen",
                    "learning_rate"):
            continue
        assert name in ours, name
        assert ours[name] == pytest.approx(value, rel=2e-4, abs=2e-6), name
    extra = set(ours) - set(theirs) - {"epoch", "step", "num_tokens", "learning_rate"}
    assert extra == set()
    state = model.state_dict()
    for name, value in trl_params.items():
        assert np.allclose(state[name], value, rtol=1e-4, atol=1e-6), name


SETTINGS = dict(learning_rate=0.5, per_device_train_batch_size=12, num_generations=G,
                max_completion_length=6, max_steps=1, logging_steps=1, temperature=0.7)
GRPO_CASES = {
    "dapo": dict(),
    "grpo-beta": dict(loss_type="grpo", beta=0.2),
    "dr_grpo-batch": dict(loss_type="dr_grpo", scale_rewards="batch"),
    "bnpo-sequence": dict(loss_type="bnpo", importance_sampling_level="sequence", beta=0.1),
    "dapo-masked-two-funcs": dict(mask_truncated_completions=True, reward_weights=[1.0, 0.5]),
    "luspo-none": dict(loss_type="luspo", scale_rewards="none", epsilon_high=0.28),
    "cispo-entropy": dict(loss_type="cispo", top_entropy_quantile=0.5),
    "sapo-normalize_then_sum": dict(loss_type="sapo", reward_weights=[1.0, 2.0],
                                    multi_objective_aggregation="normalize_then_sum"),
}


@pytest.mark.parametrize("case", list(GRPO_CASES))
def test_grpo_step_matches_trl(checkpoint, tmp_path, monkeypatch, case):
    options = dict(GRPO_CASES[case])
    funcs = [reward_words, length_reward] if "reward_weights" in options else reward_words
    settings = dict(SETTINGS, **options)
    tokenizer = calign.Tokenizer.from_pretrained(str(checkpoint))
    table = completion_table(tokenizer, settings["max_completion_length"])
    theirs, trl_params = trl_run(checkpoint, table, tmp_path, trl.GRPOConfig, trl.GRPOTrainer,
                                 settings, funcs)
    ours, model = calign_run(checkpoint, table, tmp_path, monkeypatch, calign.GRPOConfig,
                             calign.GRPOTrainer, settings, funcs)
    compare(ours, theirs, model, trl_params)


@pytest.mark.parametrize("options", [dict(), dict(normalize_advantages=True, beta=0.0),
                                     dict(reward_clip_range=(-0.3, 0.5), beta=0.3)],
                         ids=["defaults", "normalized-no-kl", "clipped"])
def test_rloo_step_matches_trl(checkpoint, tmp_path, monkeypatch, options):
    settings = dict(SETTINGS, **options)
    tokenizer = calign.Tokenizer.from_pretrained(str(checkpoint))
    table = completion_table(tokenizer, settings["max_completion_length"])
    theirs, trl_params = trl_run(checkpoint, table, tmp_path, trl.RLOOConfig, trl.RLOOTrainer,
                                 settings, reward_words)
    ours, model = calign_run(checkpoint, table, tmp_path, monkeypatch, calign.RLOOConfig,
                             calign.RLOOTrainer, settings, reward_words)
    compare(ours, theirs, model, trl_params)
