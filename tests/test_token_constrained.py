"""The token-wise constrained objective (Qi et al. 2024): the loss and its
gradient against a torch transcription, its limits, the fused kernel against
the two-pass path, and SFTTrainer(loss_type="token_constrained") against a
torch training loop with a frozen reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import calign
from calign import losses
from calign.lora import LoraConfig
from calign.model.packing import pack_shared_prefix
from reference import trainers_torch as ref

VOCAB = 37
STEPS = 12
COMMON = dict(learning_rate=5e-3, per_device_train_batch_size=2, max_steps=STEPS, shuffle=False,
              logging_steps=1, save_steps=0, warmup_steps=3, weight_decay=0.01,
              max_grad_norm=1.0, disable_tqdm=True)


@pytest.fixture(scope="module")
def llama_dir(tiny_model):
    return str(tiny_model("llama", hidden_size=24, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=2, head_dim=6, intermediate_size=40,
                          vocab_size=VOCAB, pad_token_id=0, attention_bias=False,
                          mlp_bias=False, rope_theta=10000.0))


def records(n, seed):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(1, VOCAB, rng.integers(3, 10)).tolist()}
            for _ in range(n)]


def torch_eq3(policy, reference, betas, mask):
    """Eq. 3 per sequence and its autograd gradient, in float64."""
    policy = torch.tensor(policy, dtype=torch.float64, requires_grad=True)
    ratio = betas * (policy - torch.tensor(reference, dtype=torch.float64))
    per_token = -(2 / betas) * F.logsigmoid(ratio) * mask
    per_token.sum().backward()
    return per_token.sum(1).detach().numpy(), policy.grad.numpy()


def official_weights(policy, reference, betas):
    """The official code's soft_sft_loss weights (before its 1e-3 clamp)."""
    ratio = torch.tensor(betas) * (torch.tensor(policy, dtype=torch.float64) -
                     torch.tensor(reference, dtype=torch.float64))
    return (2 * (1 - torch.sigmoid(ratio))).numpy()


# ---- the loss function ------------------------------------------------------------------

def test_loss_and_gradient_match_a_torch_transcription():
    rng = np.random.default_rng(0)
    policy = np.log(rng.uniform(0.01, 1.0, (4, 9))).astype(np.float32)
    reference = np.log(rng.uniform(0.01, 1.0, (4, 9))).astype(np.float32)
    mask = (rng.random((4, 9)) < 0.8).astype(np.float32)
    betas = losses.constrained_betas(np.arange(9))
    value, grad = losses.token_constrained_loss(policy, reference, betas, mask, return_grad=True)
    expected, expected_grad = torch_eq3(policy, reference, torch.tensor(betas), torch.tensor(mask))
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
    # the gradient is the NLL gradient times the official code's weight
    np.testing.assert_allclose(-grad, official_weights(policy, reference, betas) * mask, atol=1e-6)
    assert losses.token_constrained_loss(policy, reference, betas, mask).dtype == np.float64


def test_betas_may_be_given_per_token():
    rng = np.random.default_rng(1)
    policy = -rng.random((3, 5)).astype(np.float32)
    reference = -rng.random((3, 5)).astype(np.float32)
    betas = rng.uniform(0.05, 3.0, (3, 5))
    value, grad = losses.token_constrained_loss(policy, reference, betas, return_grad=True)
    expected, expected_grad = torch_eq3(policy, reference, torch.tensor(betas, dtype=torch.float32)
                                        .double(), torch.ones(3, 5, dtype=torch.float64))
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


def test_small_beta_is_plain_sft():
    rng = np.random.default_rng(2)
    policy = -rng.random((2, 6)).astype(np.float32) * 3
    reference = -rng.random((2, 6)).astype(np.float32) * 3
    _, grad = losses.token_constrained_loss(policy, reference, np.full(6, 1e-7), return_grad=True)
    np.testing.assert_allclose(grad, -1.0, atol=1e-6)  # every weight 1: the NLL gradient


def test_large_beta_pins_the_policy_to_the_reference():
    reference = np.full((1, 4), -2.0, np.float32)
    policy = np.array([[-3.0, -2.5, -1.5, -1.0]], np.float32)  # two below, two above
    _, grad = losses.token_constrained_loss(policy, reference, np.full(4, 50.0), return_grad=True)
    np.testing.assert_allclose(-grad[0], [2.0, 2.0, 0.0, 0.0], atol=1e-9)
    # and the loss tends to 2 max(ref - policy, 0)
    value = losses.token_constrained_loss(policy, reference, np.full(4, 1e4))
    np.testing.assert_allclose(value, [2 * (1.0 + 0.5)], rtol=1e-4)


def test_schedule_is_the_papers():
    assert losses.CONSTRAINED_BETAS == (0.5, 2.0, 2.0, 2.0, 2.0, 0.1)
    np.testing.assert_array_equal(losses.constrained_betas([0, 1, 4, 5, 50]),
                                  [0.5, 2.0, 2.0, 0.1, 0.1])
    np.testing.assert_array_equal(losses.constrained_betas([0, 3], [1.5]), [1.5, 1.5])


@pytest.mark.parametrize("kwargs, named", [
    (dict(betas=np.ones(4)), "betas"),
    (dict(betas=-np.ones(5)), "betas"),
    (dict(betas=np.zeros(5)), "betas"),
    (dict(betas=np.full(5, np.nan)), "betas"),
    (dict(betas=np.ones((2, 5))), "betas"),
    (dict(betas=np.ones(5), mask=np.full((3, 5), 0.5)), "mask"),
    (dict(betas=np.ones(5), ref_logps=np.zeros((3, 4))), "ref_logps"),
    (dict(betas=np.ones(5), ref_logps=np.full((3, 5), 0.5)), "ref_logps"),
])
def test_bad_arguments_are_named(kwargs, named):
    args = dict(policy_logps=-np.ones((3, 5)), ref_logps=-np.ones((3, 5)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=named):
        losses.token_constrained_loss(**args)


@pytest.mark.parametrize("schedule", [[], [0.5, -1.0], [float("inf")], "0.5", [True]])
def test_bad_schedules_are_refused(schedule):
    with pytest.raises(ValueError, match="constrained_betas"):
        calign.SFTConfig(loss_type="token_constrained", constrained_betas=schedule)


# ---- the fused kernel ---------------------------------------------------------------------

def test_fused_kernel_equals_the_two_pass_path(llama_dir):
    model = calign.Model.from_pretrained(llama_dir)
    rng = np.random.default_rng(3)
    rows = [(rng.integers(1, VOCAB, 3).tolist(), [rng.integers(1, VOCAB, n).tolist()])
            for n in (4, 7, 2)]
    batch = pack_shared_prefix(rows)
    lengths = np.array([len(c[0]) for _, c in rows])
    M = int(lengths.sum())
    reference = -rng.uniform(1.0, 6.0, M).astype(np.float32)
    betas = losses.constrained_betas(np.concatenate([np.arange(n) for n in lengths]))

    model.zero_grad()
    hidden = model.forward_packed(batch, train=True)
    fused = model.score_constrained(hidden, batch, lengths, reference, betas, grad_scale=0.25)
    model.backward_packed(batch, fused.d_hidden)
    fused_grads = model.grad_buffer.copy()

    model.zero_grad()
    hidden = model.forward_packed(batch, train=True)
    logps = model.packed_scores(hidden, batch)
    split = np.split(np.arange(M), np.cumsum(lengths)[:-1])
    per_seq, grad = [], np.zeros(M)
    for idx in split:
        value, g = losses.token_constrained_loss(logps[idx][None], reference[idx][None],
                                                 betas[idx], return_grad=True)
        per_seq.append(value[0])
        grad[idx] = 0.25 * g[0]
    d_hidden, _ = model.score_backward(hidden, batch, grad)
    model.backward_packed(batch, d_hidden)

    np.testing.assert_allclose(fused.logprobs, logps, atol=1e-6)
    np.testing.assert_allclose(fused.losses, per_seq, rtol=1e-6)
    np.testing.assert_allclose(fused.grad_logps, grad, atol=1e-7)
    np.testing.assert_allclose(fused_grads, model.grad_buffer, atol=1e-6)


def test_fused_kernel_checks_its_inputs(llama_dir):
    model = calign.Model.from_pretrained(llama_dir)
    batch = pack_shared_prefix([([1, 2], [[3, 4, 5]])])
    hidden = model.forward_packed(batch, train=False)
    with pytest.raises(ValueError, match="betas"):
        model.score_constrained(hidden, batch, [3], -np.ones(3), [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="ref_logps"):
        model.score_constrained(hidden, batch, [3], -np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match="completion_lengths"):
        model.score_constrained(hidden, batch, [2], -np.ones(3), np.ones(3))


# ---- the trainer ----------------------------------------------------------------------------

def losses_of(trainer, key="loss"):
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def torch_run(path, data, betas):
    import transformers
    policy = transformers.AutoModelForCausalLM.from_pretrained(path)
    frozen = transformers.AutoModelForCausalLM.from_pretrained(path)
    return ref.train_loop(list(policy.parameters()),
                          lambda batch: ref.constrained_sft_batch_loss(policy, frozen, batch,
                                                                       betas),
                          data, STEPS, 2, COMMON["learning_rate"], 3, 0.01, 1.0)


@pytest.mark.parametrize("precompute", [False, True])
def test_trainer_matches_a_torch_loop(llama_dir, tmp_path, precompute):
    data = records(8, seed=4)
    config = calign.SFTConfig(output_dir=str(tmp_path), loss_type="token_constrained",
                              precompute_ref_log_probs=precompute, **COMMON)
    trainer = calign.SFTTrainer(llama_dir, args=config, train_dataset=data)
    assert (trainer.ref_model is None) == precompute
    trainer.train()
    expected = torch_run(llama_dir, data, losses.CONSTRAINED_BETAS)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)
    weights = losses_of(trainer, "constrained_weight")
    assert weights[0] == pytest.approx(1.0, abs=1e-6)  # the policy starts at the reference
    assert losses_of(trainer, "nll")[-1] < losses_of(trainer, "nll")[0]


def test_tiny_betas_train_as_plain_sft(llama_dir, tmp_path):
    data = records(6, seed=5)
    runs = []
    for name, extra in (("nll", {}), ("constrained", dict(loss_type="token_constrained",
                                                         constrained_betas=[1e-9]))):
        trainer = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(
            output_dir=str(tmp_path / name), **dict(COMMON, max_steps=5), **extra),
            train_dataset=data)
        trainer.train()
        runs.append(trainer.model.params.copy())
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)


def test_given_reference_and_evaluation(llama_dir, tmp_path):
    data = records(6, seed=6)
    reference = calign.Model.from_pretrained(llama_dir)
    reference.params[...] += 0.01  # another model than the policy's start
    trainer = calign.SFTTrainer(llama_dir, ref_model=reference, args=calign.SFTConfig(
        output_dir=str(tmp_path), loss_type="token_constrained", eval_strategy="steps",
        eval_steps=2, **dict(COMMON, max_steps=2)), train_dataset=data, eval_dataset=data[:3])
    metrics = trainer.evaluate()
    # evaluation runs the functional loss on the same numbers the kernel sees
    policy = calign.Model.from_pretrained(llama_dir)
    total, count = 0.0, 0
    for record in data[:3]:
        ids = record["input_ids"]
        pol = policy.token_logprobs([ids], [ids])[0]
        rf = reference.token_logprobs([ids], [ids])[0]
        total += losses.token_constrained_loss(pol[None], rf[None],
                                               losses.constrained_betas(range(len(pol))))[0]
        count += len(pol)
    assert metrics["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    trainer.train()


def test_lora_reference_is_the_base(llama_dir, tmp_path):
    data = records(4, seed=7)
    trainer = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(
        output_dir=str(tmp_path), loss_type="token_constrained", **dict(COMMON, max_steps=3)),
        train_dataset=data, peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                   target_modules="all-linear"))
    trainer.train()
    weights = losses_of(trainer, "constrained_weight")
    assert weights[0] == pytest.approx(1.0, abs=1e-6) and weights[-1] != pytest.approx(1.0)


def test_reference_settings_need_the_constrained_loss(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="ref_model"):
        calign.SFTTrainer(llama_dir, ref_model=llama_dir, args=calign.SFTConfig(
            output_dir=str(tmp_path)), train_dataset=records(2, 0))
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        calign.SFTConfig(precompute_ref_log_probs=True)
    with pytest.raises(ValueError, match="constrained_betas"):
        calign.SFTConfig(constrained_betas=[1.0])
