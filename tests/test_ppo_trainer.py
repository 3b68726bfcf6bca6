"""PPOTrainer: one update on fixed completions against a torch autograd
transcription of the algorithm (InstructGPT's, TRL's PPOTrainer but the score
at the last completion token): per-token KL to the reference folded into the
reward, GAE over a value model initialised from the reward model, advantages
whitened, clipped policy and value losses, PPO-ptx's pretraining term, one
SGD step of the policy and the value model. Then bad input, checkpoints,
and learning on a tiny task."""

import numpy as np
import pytest
import torch
import transformers

import calign

PROMPTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w3 w3"]
TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def folders(tiny_model, tiny_tokenizer, tmp_path_factory):
    tokenizer = tiny_tokenizer(vocab_size=42)
    shape = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=None,
                 intermediate_size=48, initializer_range=0.1, attention_bias=False,
                 mlp_bias=False, rope_theta=10000.0, max_position_embeddings=64)
    policy = tiny_model("llama", tokenizer=tokenizer, seed=1, **shape)
    reference = tiny_model("llama", tokenizer=tokenizer, seed=2, **shape)
    reward = tmp_path_factory.mktemp("ppo_rm")
    rm = calign.RewardModel.from_causal_lm(str(tiny_model("llama", tokenizer=tokenizer, seed=3,
                                                          **shape)), seed=4)
    rm.state_dict()["score.weight"][...] *= 20.0  # scores of a few units
    rm.save_pretrained(str(reward))
    return policy, reference, reward


def completion_table(tokenizer):
    rng = np.random.default_rng(11)
    table = {}
    for p in PROMPTS:
        n = int(rng.integers(1, 5))
        ids = tokenizer.encode(" ".join(f"w{int(i)}" for i in rng.integers(0, 40, n)))
        table[p] = ids + ([tokenizer.eos_token_id] if p != "w4 w5" else [])  # one truncated
    return table


def fixed_generate(model, table, tokenizer):
    """Model.generate returning the table's completion of each prompt, with
    the policy's log-probs at the temperature (what the sampler returns)."""
    def generate(prompts, **settings):
        completions = [table[tokenizer.decode(p)] for p in prompts]
        logps = [model.packed_token_logprobs(calign.pack_shared_prefix([(p, [c])]),
                                             settings["temperature"])
                 for p, c in zip(prompts, completions)]
        return completions, logps
    return generate


SETTINGS = dict(learning_rate=0.3, per_device_train_batch_size=4, max_steps=1, optim="sgd",
                max_grad_norm=1e6, num_ppo_epochs=1, response_length=6, stop_token="eos",
                temperature=TEMPERATURE, kl_coef=0.3, vf_coef=0.5, cliprange=0.2,
                cliprange_value=0.2, gamma=0.9, lam=0.8, missing_eos_penalty=1.5,
                logging_steps=1, save_steps=0, disable_tqdm=True)


def calign_update(folders, tmp_path, **changes):
    policy, reference, reward = folders
    tokenizer = calign.Tokenizer.from_pretrained(str(policy))
    ptx = [{"text": "w5 w6 w7 w8"}] if changes.get("ptx_coef") else None
    trainer = calign.PPOTrainer(
        str(policy), reward_model=str(reward), ref_model=str(reference),
        args=calign.PPOConfig(output_dir=str(tmp_path), **dict(SETTINGS, **changes)),
        train_dataset=[{"prompt": p} for p in PROMPTS], processing_class=tokenizer,
        ptx_dataset=ptx)
    trainer.model.generate = fixed_generate(trainer.model, completion_table(tokenizer),
                                            tokenizer)
    trainer.train()
    return trainer


def torch_update(folders, ptx_coef=0.0):
    """The update in torch: (policy state, value state, metrics)."""
    policy_path, reference_path, reward_path = folders
    tokenizer = calign.Tokenizer.from_pretrained(str(policy_path))
    table = completion_table(tokenizer)
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(reference_path)
    value = transformers.AutoModelForSequenceClassification.from_pretrained(reward_path)
    reward = transformers.AutoModelForSequenceClassification.from_pretrained(reward_path)
    a = SETTINGS
    rows = []
    for p in PROMPTS:
        prompt, completion = tokenizer.encode(p), table[p]
        ids = torch.tensor([prompt + completion])
        P, C = len(prompt), len(completion)
        with torch.no_grad():
            ref_logits = reference(ids).logits[0, P - 1:P + C - 1] / TEMPERATURE
            score = reward(ids).logits[0, 0].item()
        if completion[-1] != tokenizer.eos_token_id:
            score -= a["missing_eos_penalty"]
        targets = torch.tensor(completion)
        rows.append(dict(ids=ids, P=P, C=C, completion=targets, score=score,
                         ref=ref_logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]))

    def policy_logps(row):
        logits = policy(row["ids"]).logits[0, row["P"] - 1:row["P"] + row["C"] - 1]
        return (logits / TEMPERATURE).log_softmax(-1).gather(1, row["completion"][:, None])[:, 0]

    def values(row):
        hidden = value.model(row["ids"]).last_hidden_state[0]
        return value.score(hidden)[row["P"] - 1:row["P"] + row["C"] - 1, 0]

    # the rollout: rewards, GAE, whitening (no gradient)
    with torch.no_grad():
        for row in rows:
            row["old"] = policy_logps(row)
            row["old_values"] = values(row)
            reward_t = -a["kl_coef"] * (row["old"] - row["ref"])
            reward_t[-1] += row["score"]
            advantage, last = torch.zeros(row["C"]), 0.0
            for t in reversed(range(row["C"])):
                next_value = row["old_values"][t + 1] if t + 1 < row["C"] else 0.0
                delta = reward_t[t] + a["gamma"] * next_value - row["old_values"][t]
                last = delta + a["gamma"] * a["lam"] * last
                advantage[t] = last
            row["returns"] = advantage + row["old_values"]
            row["raw_advantage"] = advantage
        flat = torch.cat([r["raw_advantage"] for r in rows])
        mean, var = flat.mean(), flat.var(unbiased=True)
        for row in rows:
            row["advantage"] = (row["raw_advantage"] - mean) * torch.rsqrt(var + 1e-8)
    # the losses over the whole batch (one mini-batch, one micro-batch)
    pg, vf, tokens = 0.0, 0.0, sum(r["C"] for r in rows)
    for row in rows:
        new = policy_logps(row)
        ratio = torch.exp(new - row["old"])
        A = row["advantage"]
        pg = pg + torch.max(-A * ratio, -A * torch.clamp(ratio, 1 - a["cliprange"],
                                                         1 + a["cliprange"])).sum()
        v = values(row)
        v_clipped = torch.clamp(v, row["old_values"] - a["cliprange_value"],
                                row["old_values"] + a["cliprange_value"])
        vf = vf + torch.max((v - row["returns"]) ** 2, (v_clipped - row["returns"]) ** 2).sum()
    loss = pg / tokens + a["vf_coef"] * 0.5 * vf / tokens
    if ptx_coef:
        ids = torch.tensor([tokenizer.encode("w5 w6 w7 w8") + [tokenizer.eos_token_id]])
        logps = policy(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])
        loss = loss + ptx_coef * -logps.mean()
    loss.backward()
    with torch.no_grad():
        for model in (policy, value):
            for p in model.parameters():
                if p.grad is not None:
                    p -= a["learning_rate"] * p.grad
    return ({n: p.detach().numpy() for n, p in policy.named_parameters()},
            {n: p.detach().numpy() for n, p in value.named_parameters()},
            dict(scores=np.mean([r["score"] for r in rows])))


def close(ours, theirs, name):
    """Equal in float32 terms: relative to the tensor's largest entry (robust
    where single entries are near 0)."""
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max(),
                               err_msg=name)


@pytest.mark.parametrize("ptx_coef", [0.0, 2.0], ids=["ppo", "ppo-ptx"])
def test_one_update_matches_torch(folders, tmp_path, ptx_coef):
    trainer = calign_update(folders, tmp_path, ptx_coef=ptx_coef)
    policy, value, metrics = torch_update(folders, ptx_coef)
    ours_policy = trainer.model.state_dict()
    for name, theirs in policy.items():
        if name == "lm_head.weight" and name not in ours_policy:
            continue
        close(ours_policy[name], theirs, name)
    start = calign.Model.from_pretrained(str(folders[0])).state_dict()
    moved = max(np.abs(ours_policy[n] - start[n]).max() for n in ours_policy)
    assert moved > 1e-3  # the update did something
    ours_value = trainer.value.model.state_dict()
    for name, theirs in value.items():
        close(ours_value[name], theirs, name)
    logged = trainer.state.log_history[0]
    assert logged["objective/scores"] == pytest.approx(metrics["scores"], rel=1e-4)
    if ptx_coef:
        assert logged["ptx/loss"] > 0


def test_bad_input_names_the_culprit(folders, tmp_path, tiny_model, tiny_tokenizer):
    policy, reference, reward = folders
    tokenizer = calign.Tokenizer.from_pretrained(str(policy))
    data = [{"prompt": p} for p in PROMPTS]

    def make(**changes):
        options = dict(reward_model=str(reward), train_dataset=data, processing_class=tokenizer)
        config = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1,
                      response_length=4, disable_tqdm=True)
        config.update(changes.pop("config", {}))
        options.update(changes)
        return calign.PPOTrainer(str(policy), args=calign.PPOConfig(**config), **options)

    with pytest.raises(ValueError, match="^reward_model must be"):
        make(reward_model=None)
    with pytest.raises(ValueError, match="ptx_dataset must be pretraining records"):
        make(config=dict(ptx_coef=1.0))
    with pytest.raises(ValueError, match="ptx_dataset must be None when args.ptx_coef is 0"):
        make(ptx_dataset=[{"text": "w1 w2"}])
    with pytest.raises(KeyError, match="ptx_dataset record 0 lacks the field 'text'"):
        make(config=dict(ptx_coef=1.0), ptx_dataset=[{"prompt": "w1"}])
    with pytest.raises(ValueError, match="fewer than an update needs"):
        make(config=dict(per_device_train_batch_size=5))
    small = tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=42), vocab_size=42,
                       max_position_embeddings=6)
    value = calign.RewardModel.from_causal_lm(str(small))
    with pytest.raises(ValueError, match="value_model has 6 positions"):
        make(value_model=value)
    with pytest.raises(TypeError, match="value_model must be a calign.RewardModel"):
        make(value_model=calign.Model.from_pretrained(str(policy)))
    with pytest.raises(ValueError, match="response_length .* exceeds the model's maximum"):
        make(config=dict(response_length=62))
    for field, value in (("stop_token", "<eos>"), ("kl_estimator", "k2"), ("gamma", 1.5),
                         ("num_ppo_epochs", 0), ("max_completion_length", 8)):
        with pytest.raises(ValueError, match=f"^{field} must be"):
            calign.PPOConfig(**{field: value})

    def none_reward(completions, **kwargs):
        return [None] * len(completions)

    with pytest.raises(ValueError, match="returned None for a completion"):
        make(reward_model=none_reward).train()


def test_checkpoint_resume_restores_the_value_model(folders, tmp_path):
    """A run resumed from its checkpoint ends where the straight run ends:
    policy, value model and both optimizers ride along (a constant learning
    rate: the 2-step run's schedule would differ from the 3-step run's)."""
    policy, reference, reward = folders
    tokenizer = calign.Tokenizer.from_pretrained(str(policy))

    def run(folder, steps, resume=None):
        trainer = calign.PPOTrainer(
            str(policy), reward_model=str(reward), processing_class=tokenizer,
            args=calign.PPOConfig(output_dir=str(folder), per_device_train_batch_size=2,
                                  num_mini_batches=2, num_ppo_epochs=2, max_steps=steps,
                                  response_length=4, learning_rate=1e-3, save_steps=1,
                                  lr_scheduler_type="constant", disable_tqdm=True,
                                  logging_steps=1),
            train_dataset=[{"prompt": p} for p in PROMPTS])
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 3, resume=True)
    np.testing.assert_array_equal(resumed.model.params, straight.model.params)
    np.testing.assert_array_equal(resumed.value.model.params, straight.value.model.params)
    assert [h["loss"] for h in resumed.state.log_history if "loss" in h] == \
        [h["loss"] for h in straight.state.log_history if "loss" in h]
    assert (tmp_path / "b" / "checkpoint-3" / "value_model" / "model.safetensors").is_file()


def test_ppo_raises_the_reward_model_score(folders, tmp_path):
    """With a reward function easy to satisfy (completions that start with w3),
    PPO raises the mean score within 60 updates (from <= 0.07 to >= 0.7 for
    four seeds tried)."""
    policy, _, _ = folders
    tokenizer = calign.Tokenizer.from_pretrained(str(policy))

    def starts_with_w3(completions, **kwargs):
        return [float(c.split()[:1] == ["w3"]) for c in completions]

    trainer = calign.PPOTrainer(
        str(policy), reward_model=starts_with_w3, processing_class=tokenizer,
        args=calign.PPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16,
                              max_steps=60, response_length=3, learning_rate=3e-3,
                              temperature=1.0, kl_coef=0.01, num_ppo_epochs=2,
                              logging_steps=1, save_steps=0, disable_tqdm=True),
        train_dataset=[{"prompt": p} for p in PROMPTS * 4])
    trainer.train()
    scores = [h["objective/scores"] for h in trainer.state.log_history if "objective/scores" in h]
    assert np.mean(scores[:5]) < 0.3 and np.mean(scores[-5:]) > 0.5, scores
