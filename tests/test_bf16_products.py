"""Model.bf16_products: every product of the packed forward and backward
(linear layers, attention's QK^T and PV, LoRA, the lm_head) multiplies
bfloat16-rounded operands with float32 accumulation, the mixed precision of
bf16=True.

The reference is independent: transformers' models (eager attention), PEFT's
adapters and the Motif transcription run by torch inside
reference.bf16_products_torch.BF16Products, which rounds both operands of
every torch product and, in the backward, the incoming gradient. Each test
also checks that the float32 path is far from that reference, so it fails if
the rounding is skipped."""

import os

import numpy as np
import pytest
import torch
import transformers

import calign
from calign.lora import LoraConfig
from calign.testing.models import tiny_config
from reference.bf16_products_torch import BF16Products
from reference.motif_torch import causal_lm_loss, decoder_logits

peft = pytest.importorskip("peft")

FAMILIES = ["gpt2", "llama", "qwen2", "qwen3"]
# Both sides accumulate float32 in different orders, so now and then a value
# one float32 unit apart sits on either side of a bfloat16 rounding boundary
# and one operand entry differs by a bfloat16 unit (2^-8 relative); with
# these models' large weights (init range 0.5) such a flip moves the tokens
# after it by up to 0.1. Measured over 4 seeds per family: 0-22% of the
# log-probs differ by more than 1e-4 (100% on the float32 path), and the
# gradients' relative error ||got - expected|| / ||expected|| is 1e-3..1e-2
# (3e-2..6e-1 on the float32 path).
CLOSE = 1e-4
GRAD_RTOL = 2e-2


# Motif: differential attention's (P1 - lambda P2) V, PolyNorm, biases
MOTIF_CONFIG = dict(model_type="motif", architectures=["MotifForCausalLM"], hidden_size=48,
                    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                    head_dim=6, intermediate_size=40, vocab_size=96,
                    max_position_embeddings=256, hidden_act="poly_norm", rope_theta=500000.0,
                    rms_norm_eps=1e-6, attn_rms_norm_eps=1e-5, use_bias=True,
                    tie_word_embeddings=False, initializer_range=0.5)


def share_close(got, expected):
    return np.mean(np.abs(got - expected) <= CLOSE)


def ids_batch(vocab, B=2, T=70, seed=0):
    """Rows longer than the attention block of 64, so two blocks are covered."""
    return np.random.default_rng(seed).integers(0, vocab, (B, T))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    config = tiny_config(request.param, initializer_range=0.5)
    model = calign.Model.from_config(config, seed=3)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager").float()
    return model, reference


def reference_logps(reference, ids, products):
    t = torch.tensor(ids)
    with BF16Products() if products else torch.no_grad():
        logits = reference(t).logits
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, t[:, 1:, None])[..., 0]
    return logps.detach().numpy()


def reference_loss_grads(reference, ids, labels):
    reference.zero_grad()
    with BF16Products():
        out = reference(torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    return out.loss.item(), {name: p.grad.numpy() for name, p in reference.named_parameters()}


def worst_grad_error(grads, expected):
    """Largest relative error over the tensors, ||got - expected|| / ||expected||."""
    assert set(grads) <= set(expected) and grads
    return max(np.linalg.norm(g - expected[name]) / np.linalg.norm(expected[name])
               for name, g in grads.items())


def test_log_probs_match_rounded_operand_products(family):
    model, reference = family
    ids = ids_batch(model.vocab_size)
    expected = reference_logps(reference, ids, products=True)
    model.bf16_products = True
    try:
        got = model.token_logprobs(ids, ids)
    finally:
        model.bf16_products = False
    assert share_close(got, expected) >= 0.75
    assert share_close(model.token_logprobs(ids, ids), expected) <= 0.1
    # and the reference's float32 forward is calign's float32 one
    np.testing.assert_allclose(model.token_logprobs(ids, ids),
                               reference_logps(reference, ids, products=False), atol=1e-4)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_match_rounded_operand_products(family, checkpointing):
    model, reference = family
    ids = ids_batch(model.vocab_size, seed=1)
    labels = ids.copy()
    labels[0, :7] = -100
    expected_loss, expected = reference_loss_grads(reference, ids, labels)
    model.gradient_checkpointing = checkpointing
    model.bf16_products = True
    try:
        loss, grads = model.loss_and_grad(ids, labels)
    finally:
        model.bf16_products = False
        model.gradient_checkpointing = False
    assert loss == pytest.approx(expected_loss, abs=1e-3)
    error = worst_grad_error(grads, expected)
    assert error < GRAD_RTOL
    _, plain = model.loss_and_grad(ids, labels)
    assert worst_grad_error(plain, expected) > max(3 * error, GRAD_RTOL)


def test_lora_gradients_match_peft_with_rounded_products(tmp_path):
    config = tiny_config("llama", initializer_range=0.5)
    model = calign.Model.from_config(config, seed=4)
    model.save_pretrained(tmp_path / "base")
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                 init_lora_weights=False), seed=1)
    model.save_pretrained(tmp_path / "adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base",
                                                             attn_implementation="eager")
    reference = peft.PeftModel.from_pretrained(base, tmp_path / "adapter", is_trainable=True)
    ids = ids_batch(model.vocab_size, seed=2)
    with BF16Products():
        out = reference(torch.tensor(ids), labels=torch.tensor(ids))
    out.loss.backward()
    expected = {key.replace(".default.weight", ".weight"): p.grad.numpy()
                for key, p in reference.named_parameters() if p.requires_grad}
    model.bf16_products = True
    loss, _ = model.loss_and_grad(ids, ids)
    got = model.adapters.grads_dict()
    assert loss == pytest.approx(out.loss.item(), abs=1e-3)
    error = worst_grad_error(got, expected)
    assert error < GRAD_RTOL
    model.bf16_products = False
    model.loss_and_grad(ids, ids)
    assert worst_grad_error(model.adapters.grads_dict(), expected) > max(3 * error, GRAD_RTOL)


def test_differential_attention_matches_the_motif_transcription():
    """Motif: differential attention's (P1 - lambda P2) V, PolyNorm, biases."""
    config = MOTIF_CONFIG
    model = calign.Model.from_config(config, seed=1)
    ids = ids_batch(96, B=1, T=80, seed=3)
    params = {name: torch.tensor(view.copy(), requires_grad=True)
              for name, view in model.state_dict().items()}
    with BF16Products():
        logits = decoder_logits(params, config, torch.tensor(ids), True, True)
        loss = causal_lm_loss(logits, torch.tensor(ids))
    loss.backward()
    model.bf16_products = True
    got_loss, grads = model.loss_and_grad(ids, ids)
    assert got_loss == pytest.approx(loss.item(), abs=1e-3)
    expected = {name: p.grad.numpy() for name, p in params.items()}
    error = worst_grad_error(grads, expected)
    assert error < GRAD_RTOL
    model.bf16_products = False
    _, plain = model.loss_and_grad(ids, ids)
    assert worst_grad_error(plain, expected) > max(3 * error, GRAD_RTOL)


def test_turning_it_off_is_the_float32_path_bit_for_bit(tiny_model):
    path = tiny_model("llama")
    untouched, toggled = calign.Model.from_pretrained(path), calign.Model.from_pretrained(path)
    ids = ids_batch(untouched.vocab_size, T=20)
    toggled.bf16_products = True
    rounded = toggled.logits(ids)
    toggled.bf16_products = False
    np.testing.assert_array_equal(toggled.logits(ids), untouched.logits(ids))
    assert np.abs(rounded - untouched.logits(ids)).max() > 0
    loss_a, grads_a = untouched.loss_and_grad(ids, ids)
    loss_b, grads_b = toggled.loss_and_grad(ids, ids)
    assert loss_a == loss_b
    for name in grads_a:
        np.testing.assert_array_equal(grads_a[name], grads_b[name])


def test_generation_is_not_affected(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("qwen2"))
    prompts = [[1, 2, 3], [4, 5]]
    expected = model.generate(prompts, max_new_tokens=6, return_logprobs=True)
    model.bf16_products = True
    tokens, logps = model.generate(prompts, max_new_tokens=6, return_logprobs=True)
    assert tokens == expected[0]
    for a, b in zip(logps, expected[1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_setting_takes_a_bool(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("gpt2"))
    with pytest.raises(TypeError, match="bf16_products must be True or False"):
        model.bf16_products = "yes"
    assert model.bf16_products is False
    model.bf16_products = np.bool_(True)
    assert model.bf16_products is True


@pytest.fixture(scope="module")
def trainer_models(tiny_model, tiny_tokenizer, tmp_path_factory):
    """A policy folder with a tokenizer and a reward model folder for it."""
    tokenizer = tiny_tokenizer(vocab_size=42)
    policy = tiny_model("llama", tokenizer=tokenizer, seed=1)
    reward = tmp_path_factory.mktemp("bf16_rm")
    calign.RewardModel.from_causal_lm(str(policy), seed=4).save_pretrained(str(reward))
    return str(policy), str(reward)


@pytest.mark.parametrize("bf16", [True, False, None])
def test_bf16_reaches_every_model_a_trainer_runs(trainer_models, tmp_path, bf16):
    policy, reward = trainer_models
    prompts = [{"prompt": "w1 w2"}, {"prompt": "w3"}]
    pairs = [{"prompt": "w1", "chosen": " w2", "rejected": " w3"}] * 2
    common = dict(output_dir=str(tmp_path), disable_tqdm=True, bf16=bf16)
    trainers = [
        calign.DPOTrainer(policy, args=calign.DPOConfig(**common), train_dataset=pairs),
        calign.KTOTrainer(policy, args=calign.KTOConfig(**common), train_dataset=[
            {"prompt": "w1", "completion": " w2", "label": True},
            {"prompt": "w1", "completion": " w3", "label": False}]),
        calign.GRPOTrainer(policy, reward_funcs=reward, train_dataset=prompts, args=calign.GRPOConfig(
            per_device_train_batch_size=4, num_generations=2, beta=0.1,
            max_completion_length=8, **common)),
        calign.OnlineDPOTrainer(policy, reward_model=calign.RewardModel.from_pretrained(reward),
                                train_dataset=prompts, args=calign.OnlineDPOConfig(
                                    max_new_tokens=8, **common)),
        calign.PPOTrainer(policy, reward_model=reward, train_dataset=prompts * 2,
                          args=calign.PPOConfig(per_device_train_batch_size=4,
                                                response_length=8, **common)),
    ]
    for trainer in trainers:
        models = [trainer.model, getattr(trainer, "ref_model", None),
                  getattr(getattr(trainer, "value", None), "model", None),
                  getattr(trainer, "reward_model", None),
                  *getattr(getattr(trainer, "reward_functions", None), "funcs", [])]
        models = [m for m in models if hasattr(m, "bf16_products")]  # a Model or a reference
        assert len(models) >= 2, type(trainer).__name__
        for model in models:
            assert model.bf16_products is (bf16 is True), type(trainer).__name__


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_online_rl_old_log_probs_come_from_bf16_products(trainer_models, tmp_path, kind):
    """The sampler multiplies in float32; with bf16=True the log-probs a
    rollout keeps for the importance ratios are the training forward's, so
    that the ratios start at 1 (TRL computes them with a forward under
    autocast)."""
    policy, reward = trainer_models
    prompts = [{"prompt": "w1 w2"}, {"prompt": "w3"}] * 2
    common = dict(output_dir=str(tmp_path), disable_tqdm=True, bf16=True, learning_rate=0.0,
                  max_steps=1, save_strategy="no", seed=3)
    if kind == "grpo":
        trainer = calign.GRPOTrainer(policy, reward_funcs=reward, train_dataset=prompts,
                                     args=calign.GRPOConfig(
                                         per_device_train_batch_size=4, num_generations=2,
                                         steps_per_generation=2, max_completion_length=6,
                                         temperature=1.0, **common))
    else:
        trainer = calign.PPOTrainer(policy, reward_model=reward, train_dataset=prompts,
                                    args=calign.PPOConfig(per_device_train_batch_size=4,
                                                          response_length=6, stop_token=None,
                                                          temperature=1.0, **common))
    trainer.train()
    rollout, model = trainer.last_rollout, trainer.model
    assert len(rollout.completion_ids) >= 4
    differs = 0.0
    for example, completion, kept in zip(rollout.examples, rollout.completion_ids,
                                         rollout.sampling_logps):
        batch = calign.pack_shared_prefix([(example.prompt_ids, [completion])])
        np.testing.assert_allclose(kept, model.packed_token_logprobs(batch), atol=1e-5)
        model.bf16_products = False
        differs = max(differs, np.abs(kept - model.packed_token_logprobs(batch)).max())
        model.bf16_products = True
    assert differs > 1e-4  # the float32 sampler's log-probs were replaced


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "qwen3", "motif"])
def test_frozen_bf16_reference_scores_as_the_policy_with_bf16_products(name):
    """bf16=True's default reference keeps the blocks' weights in bfloat16;
    under bf16 products it gives the numbers of the policy it copies."""
    from calign.model.frozen_reference import BF16Reference

    config = dict(MOTIF_CONFIG) if name == "motif" else tiny_config(name, initializer_range=0.5)
    policy = calign.Model.from_config(config, seed=5)
    policy.bf16_products = True
    reference = BF16Reference(policy)
    ids = ids_batch(policy.vocab_size, B=3, T=70, seed=6)
    batch = calign.pack_shared_prefix([(row[:20], [row[20:45], row[45:]]) for row in ids])
    expected = policy.packed_scores(policy.forward_packed(batch), batch)
    got = reference.packed_scores(reference.forward_packed(batch), batch)
    # the two read the same bfloat16 values but sum in other orders (BLAS on
    # another split of the product): a value on a rounding boundary may go
    # either way (module docstring), as between calign and torch
    assert share_close(got, expected) >= 0.75
    policy.bf16_products = False  # and not the float32 numbers
    plain = policy.packed_scores(policy.forward_packed(batch), batch)
    assert share_close(got, plain) <= 0.1


def test_frozen_bf16_reference_refuses_what_needs_float32_weights(tiny_model):
    from calign.model.frozen_reference import BF16Reference

    policy = calign.Model.from_pretrained(tiny_model("llama"))
    reference = BF16Reference(policy)
    inner = reference.model
    batch = calign.pack_shared_prefix([([1, 2, 3], [[4, 5]])])
    with pytest.raises(ValueError, match="does not train"):
        reference.forward_packed(batch, train=True)
    frozen = "holds its block weights in bfloat16 only"
    with pytest.raises(ValueError, match=f"{frozen}.*a training forward"):
        inner.forward_packed(batch, train=True)
    with pytest.raises(ValueError, match=f"{frozen}.*generation"):
        inner.generate([[1, 2]], max_new_tokens=2)
    with pytest.raises(ValueError, match=f"{frozen}.*the backward"):
        inner.backward_packed(batch, np.zeros((batch.input_ids.size, inner.hidden_size),
                                              np.float32))
    with pytest.raises(ValueError, match=f"{frozen}.*decoding session"):
        calign.decoding.Session(inner)
    with pytest.raises(ValueError, match=f"{frozen}.*turning bf16 products off"):
        inner.bf16_products = False


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_frozen_bf16_reference_holds_about_half_the_bytes():
    """Its block matrices take 2 bytes a weight and their float32 entries are
    never written (their pages never become resident)."""
    from calign.model.frozen_reference import BF16Reference

    config = tiny_config("llama", hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, head_dim=None,
                         vocab_size=256)
    policy = calign.Model.from_config(config, seed=0)
    before = resident_bytes()
    copy = calign.Model(policy.config)
    copy.params[...] = policy.params
    float32_copy = resident_bytes() - before
    del copy
    before = resident_bytes()
    reference = BF16Reference(policy)
    frozen = resident_bytes() - before
    assert float32_copy >= 0.9 * 4 * policy.num_parameters()
    assert frozen < 0.6 * float32_copy, (frozen, float32_copy)
    assert reference.vocab_size == 256
