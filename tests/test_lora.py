"""LoRA adapters in the engine against PEFT: logits, gradients, files both
ways, merging, generation, and the base staying frozen."""

import json

import numpy as np
import pytest
import torch
import transformers

import calign
from calign.lora import LoraConfig

peft = pytest.importorskip("peft")

FAMILIES = ["llama", "qwen2", "qwen3", "gpt2"]


def hf_model(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    return model.eval()


def ids_batch(vocab, B=2, T=9, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (B, T))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tiny_model):
    return request.param, tiny_model(request.param)


def adapted(path, **config):
    """A calign model with random adapters (B not zero, so they matter)."""
    model = calign.Model.from_pretrained(str(path))
    model.add_adapter(LoraConfig(init_lora_weights=False, **config), seed=1)
    return model


def test_logits_match_peft_on_calign_saved_adapters(family, tmp_path):
    name, path = family
    model = adapted(path, r=4, lora_alpha=8, target_modules="all-linear")
    model.save_pretrained(tmp_path / "adapter")
    reference = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "adapter").eval()
    ids = ids_batch(model.vocab_size)
    expected = reference(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(model.logits(ids), expected, atol=1e-4)
    base = hf_model(path)(torch.tensor(ids)).logits.detach().numpy()
    with model.disable_adapter():  # the base model alone
        np.testing.assert_allclose(model.logits(ids), base, atol=1e-4)
    assert np.abs(expected - base).max() > 1e-2  # the adapters do change the logits


def test_peft_trained_adapters_load_into_calign(family, tmp_path):
    """An adapter PEFT initialised (randomly, init_lora_weights=False) and
    saved loads into calign and gives PEFT's logits; PEFT's default targets,
    and the dropout TRL's scripts give adapters (0.05: no effect at inference)."""
    name, path = family
    torch.manual_seed(3)
    reference = peft.get_peft_model(hf_model(path), peft.LoraConfig(
        r=3, lora_alpha=5, lora_dropout=0.05, init_lora_weights=False)).eval()
    reference.save_pretrained(tmp_path / "peft")
    model = calign.Model.from_pretrained(str(path))
    model.load_adapter(tmp_path / "peft")
    assert model.adapters.config.lora_dropout == 0.05
    ids = ids_batch(model.vocab_size, seed=2)
    np.testing.assert_allclose(model.logits(ids),
                               reference(torch.tensor(ids)).logits.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_match_peft_and_the_base_stays_frozen(family, tmp_path, checkpointing):
    name, path = family
    model = adapted(path, r=4, lora_alpha=16, target_modules="all-linear", use_rslora=True)
    model.gradient_checkpointing = checkpointing
    model.save_pretrained(tmp_path / "adapter")
    reference = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "adapter",
                                               is_trainable=True)
    ids = ids_batch(model.vocab_size, seed=4)
    labels = ids.copy()
    labels[0, :3] = -100
    base_before = model.params.copy()
    loss, _ = model.loss_and_grad(ids, labels)
    out = reference(torch.tensor(ids), labels=torch.tensor(labels))
    out.loss.backward()
    assert loss == pytest.approx(out.loss.item(), rel=1e-5)
    expected = {key: param.grad.numpy() for key, param in reference.named_parameters()
                if param.requires_grad}
    got = model.adapters.grads_dict()
    assert len(expected) == len(got) > 0
    for key, grad in got.items():
        torch_key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        scale = np.abs(expected[torch_key]).max()
        np.testing.assert_allclose(grad, expected[torch_key], rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=key)
    np.testing.assert_array_equal(model.params, base_before)
    assert not model.grad_buffer.any()  # no base gradient was computed


def test_training_moves_only_the_adapters(tiny_model):
    path = tiny_model("llama")
    model = calign.Model.from_pretrained(str(path))
    model.add_adapter(LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    start = model.logits([[1, 2, 3]])
    np.testing.assert_allclose(start, calign.Model.from_pretrained(str(path)).logits([[1, 2, 3]]),
                               atol=0)  # B starts at zero: the adapted model is the base
    optimizer = calign.optim.AdamW(model, lr=1e-2)
    assert optimizer.exp_avg.size == model.adapters.params.size  # state for A and B alone
    base = model.params.copy()
    ids = ids_batch(model.vocab_size, seed=5)
    losses = []
    for _ in range(5):
        losses.append(model.lm_loss_backward(ids, ids))
        optimizer.step()
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(model.params, base)


def test_merge_and_unload_matches_peft(family, tmp_path):
    name, path = family
    model = adapted(path, r=4, lora_alpha=8, target_modules="all-linear")
    ids = ids_batch(model.vocab_size, seed=6)
    adapted_logits = model.logits(ids)
    model.save_pretrained(tmp_path / "adapter")
    model.save_pretrained(tmp_path / "merged", merged=True)  # the model keeps its adapters
    assert model.adapters is not None
    reference = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "adapter")
    merged_hf = reference.merge_and_unload().eval()
    expected = merged_hf(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(hf_model(tmp_path / "merged")(torch.tensor(ids)).logits.detach()
                               .numpy(), expected, atol=1e-4)
    model.merge_and_unload()
    assert model.adapters is None
    np.testing.assert_allclose(model.logits(ids), adapted_logits, atol=1e-4)
    np.testing.assert_allclose(model.logits(ids), expected, atol=1e-4)


def test_generation_with_adapters_matches_peft(family, tmp_path):
    name, path = family
    model = adapted(path, r=4, lora_alpha=8, target_modules="all-linear")
    model.save_pretrained(tmp_path / "adapter")
    reference = peft.PeftModel.from_pretrained(hf_model(path), tmp_path / "adapter").eval()
    prompt = [5, 17, 2, 8]
    expected = reference.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6,
                                  do_sample=False, pad_token_id=0, eos_token_id=None)
    assert model.generate([prompt], max_new_tokens=6)[0] == expected[0, len(prompt):].tolist()


def test_adapter_files_are_peft_s(tiny_model, tmp_path):
    model = adapted(tiny_model("gpt2"), r=2, lora_alpha=4)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] is True
    assert config["target_modules"] == [f"transformer.h.{i}.attn.c_attn" for i in (0, 1)]
    from safetensors.numpy import load_file

    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert set(tensors) == {f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{x}.weight"
                            for i in (0, 1) for x in "AB"}


@pytest.mark.parametrize("config, match", [
    (dict(r=0), r"r must be an integer in \[1, 65536\]"),
    (dict(lora_dropout=1.5), r"lora_dropout must be a finite number in \[0, 1\]"),
    (dict(bias="all"), "bias must be 'none'"),
    (dict(use_dora=True), "use_dora must be False"),
    (dict(target_modules=["q_proj", "wq"]), r"target_modules names \['wq'\]"),
    (dict(target_modules="nothing.*"), "matches no linear module"),
    (dict(lora_alpha=float("nan")), "lora_alpha must be a finite number > 0"),
])
def test_bad_lora_settings_are_named(tiny_model, config, match):
    model = calign.Model.from_pretrained(str(tiny_model("llama")))
    with pytest.raises(ValueError, match=match):
        model.add_adapter(LoraConfig(**config))


def test_wrong_adapter_for_the_base_is_refused(tiny_model, tmp_path):
    small = adapted(tiny_model("llama"), r=2)
    small.save_pretrained(tmp_path / "adapter")
    other = calign.Model.from_pretrained(str(tiny_model("llama", hidden_size=24, head_dim=8)))
    with pytest.raises(ValueError,
                       match=r"does not fit this model's adapters: tensor .* has shape \(2, 48\)"):
        other.load_adapter(tmp_path / "adapter")
    assert other.adapters is None  # nothing half-added
    with pytest.raises(ValueError, match="already has adapters"):
        small.add_adapter(LoraConfig())
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        other.load_adapter(tmp_path)


def test_the_reference_is_the_same_weights_with_adapters_off_or_frozen(tiny_model):
    """A LoRA run's reference needs no copy of the base: the model with its
    adapters off, or run with a frozen copy of the adapter it started from."""
    from calign.lora import AdapterReference

    path = tiny_model("llama")
    model = adapted(path, r=2, target_modules="all-linear")
    base = calign.Model.from_pretrained(str(path))
    batch = calign.pack_shared_prefix([([1, 2, 3], [[4, 5], [6]]), ([7], [[8], [9, 10]])])
    start = model.adapters.params.copy()
    adapted_logps = model.packed_token_logprobs(batch)
    off, frozen = AdapterReference(model), AdapterReference(model, start)
    np.testing.assert_array_equal(off.packed_scores(off.forward_packed(batch), batch),
                                  base.packed_token_logprobs(batch))
    model.adapters.params[...] *= 1.5  # training moves the adapters; the frozen copy stays
    np.testing.assert_array_equal(frozen.packed_scores(frozen.forward_packed(batch), batch),
                                  adapted_logps)
    assert not np.array_equal(model.packed_token_logprobs(batch), adapted_logps)
    with pytest.raises(ValueError, match="does not train"):
        off.forward_packed(batch, train=True)
    with model.disable_adapter():
        hidden = model.forward_packed(batch, train=True)
        with pytest.raises(RuntimeError, match="no backward inside disable_adapter"):
            model.backward_packed(batch, np.ones_like(hidden))
    with pytest.raises(ValueError, match="running_adapters needs a float32 vector"):
        with model.running_adapters(np.zeros(3, np.float32)):
            pass


def test_a_bfloat16_peft_adapter_loads(tiny_model, tmp_path):
    """PEFT adapters saved from a bf16 model hold bf16 tensors; calign reads
    them as it reads bf16 weights (exactly, as their float32 upcast)."""
    path = tiny_model("qwen2")
    torch.manual_seed(5)
    reference = peft.get_peft_model(hf_model(path), peft.LoraConfig(
        r=2, lora_alpha=4, init_lora_weights=False)).to(torch.bfloat16)
    reference.save_pretrained(tmp_path)
    model = calign.Model.from_pretrained(str(path))
    model.load_adapter(tmp_path)
    for key, value in model.adapters.state_dict().items():
        torch_key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        expected = dict(reference.named_parameters())[torch_key].float().detach().numpy()
        np.testing.assert_array_equal(value, expected)
