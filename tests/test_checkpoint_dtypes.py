"""Checkpoints in every published dtype (issue 15): float32, bfloat16 and
float16 checkpoints load as the float32 values transformers upcasts them to,
one tensor at a time; save_pretrained writes each dtype as torch rounds to it
and transformers loads it; trainer checkpoints keep float32; other dtypes are
refused naming the tensor; `calign info --model` describes a checkpoint from
its headers."""

import json
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import transformers

import calign
from calign.model import checkpoint, dtypes
from calign.model.checkpoint import CheckpointError, read_tensors
from calign.model.summary import describe_checkpoint
from calign.testing import FAMILIES, sft_records, tiny_config

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformers_saved(folder, source, dtype, **save_options):
    """The checkpoint transformers writes in `dtype` from the float32 one in `source`."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    hf.to(TORCH_DTYPES[dtype]).save_pretrained(folder, **save_options)
    return folder


def upcast(folder):
    """transformers' float32 model of a checkpoint: each weight upcast to float32."""
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def random_ids(vocab_size, seed=0):
    return np.random.default_rng(seed).integers(0, vocab_size, (2, 11))


def assert_same_model(model, reference):
    """calign's model holds transformers' float32 weights exactly and gives its logits."""
    theirs = reference.state_dict()
    for name, view in model.state_dict().items():
        np.testing.assert_array_equal(view, theirs[name].numpy(), err_msg=name)
    ids = random_ids(model.vocab_size)
    with torch.no_grad():
        expected = reference(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(model.logits(ids), expected, atol=1e-4)


def stored_codes(path):
    tensors = read_tensors(str(path))
    return {tensors.dtype(name) for name in tensors}


def torch_bits(values, dtype):
    """The bits of torch's `.to(dtype)` of float32 values, as uint16."""
    converted = torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(TORCH_DTYPES[dtype])
    return converted.view(torch.int16).numpy().view(np.uint16)


# ---- loading what transformers writes ----------------------------------------------------

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_half_precision_checkpoints_load_as_transformers_upcasts_them(tiny_model, tmp_path,
                                                                      family, dtype):
    path = transformers_saved(tmp_path / dtype, tiny_model(family), dtype)
    assert stored_codes(path) == {dtypes.CODES[dtype]}
    model = calign.Model.from_pretrained(str(path))
    assert model.checkpoint_dtype == dtype
    assert_same_model(model, upcast(path))


def test_sharded_bfloat16_checkpoint_loads(tiny_model, tmp_path):
    path = transformers_saved(tmp_path / "sharded", tiny_model("qwen2"), "bfloat16",
                              max_shard_size="40KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model = calign.Model.from_pretrained(str(path))
    assert model.checkpoint_dtype == "bfloat16"
    assert_same_model(model, upcast(path))


def test_checks_hold_for_bfloat16_weights(tiny_model, tmp_path):
    """Infinity in a bfloat16 tensor is refused as for float32 (not taken for a
    float64 beyond float32's range), as are a wrong shape and a missing tensor."""
    path = transformers_saved(tmp_path / "bf16", tiny_model("llama"), "bfloat16")
    tensors = safetensors.torch.load_file(str(path / "model.safetensors"))
    for change, match in (
            (lambda t: t["model.norm.weight"].__setitem__(3, float("inf")),
             "tensor 'model.norm.weight' contains NaN or infinity"),
            (lambda t: t["model.norm.weight"].__setitem__(0, float("nan")),
             "tensor 'model.norm.weight' contains NaN or infinity"),
            (lambda t: t.__setitem__("model.norm.weight", t["model.norm.weight"][:-1].clone()),
             r"tensor 'model.norm.weight' has shape \(47,\) but the config implies \(48,\)"),
            (lambda t: t.pop("model.norm.weight"), "lacks tensor 'model.norm.weight'")):
        changed = {name: tensor.clone() for name, tensor in tensors.items()}
        change(changed)
        safetensors.torch.save_file(changed, str(path / "model.safetensors"))
        with pytest.raises(CheckpointError, match=match):
            calign.Model.from_pretrained(str(path))


@pytest.mark.parametrize("dtype,code", [
    (np.int8, "I8"), (np.uint8, "U8"), (np.int32, "I32"), (np.bool_, "BOOL"),
    (torch.float8_e4m3fn, "F8_E4M3"), (torch.float8_e5m2, "F8_E5M2")])
def test_other_dtypes_are_refused_naming_tensor_and_dtype(tiny_model, tmp_path, dtype, code):
    path = tmp_path / "model"
    shutil.copytree(tiny_model("llama"), path)
    tensors = safetensors.torch.load_file(str(path / "model.safetensors"))
    norm = tensors["model.norm.weight"]
    tensors["model.norm.weight"] = norm.to(dtype) if isinstance(dtype, torch.dtype) else \
        torch.from_numpy(norm.numpy().astype(dtype))
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"))
    assert read_tensors(str(path)).dtype("model.norm.weight") == code
    with pytest.raises(CheckpointError, match=rf"tensor 'model.norm.weight' has dtype {code}; "
                                              r"calign reads float32, bfloat16, float16"):
        calign.Model.from_pretrained(str(path))
    with pytest.raises(CheckpointError, match=rf"'model.norm.weight' has dtype {code}"):
        read_tensors(str(path)).get("model.norm.weight")


def test_loading_converts_one_tensor_at_a_time(tmp_path):
    """Loading a bfloat16 checkpoint allocates the float32 model (parameters
    and gradients) and, beyond it, about one tensor's worth: never all the
    checkpoint's tensors at once. Saving likewise."""
    config = tiny_config("llama", num_hidden_layers=4, hidden_size=256, num_attention_heads=8,
                         num_key_value_heads=4, head_dim=32, intermediate_size=512,
                         vocab_size=101)
    calign.Model.from_config(config, seed=0).save_pretrained(tmp_path / "bf16", dtype="bfloat16")
    tensors = read_tensors(str(tmp_path / "bf16"))
    sizes = [int(np.prod(tensors.shape(name))) for name in tensors]
    n_params, largest = sum(sizes), max(sizes)
    model_bytes = 8 * n_params  # float32 parameters and gradients
    allowed = 2 * 4 * largest + 256 * 1024  # a tensor as read and checked; bookkeeping
    assert 2 * n_params > allowed  # holding every bfloat16 tensor would not pass
    tracemalloc.start()
    try:
        model = calign.Model.from_pretrained(str(tmp_path / "bf16"))
        load_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        model.save_pretrained(tmp_path / "again", dtype="bfloat16")
        save_peak = tracemalloc.get_traced_memory()[1] - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert model_bytes <= load_peak < model_bytes + allowed, (load_peak, model_bytes, allowed)
    assert save_peak < allowed, (save_peak, allowed)


# ---- saving: torch's rounding, transformers reads it ------------------------------------------

def rounding_cases(rng):
    """float32 values whose rounding is easy to get wrong: exact ties between
    two bfloat16s with the kept bit even and odd, one bit either side of a tie,
    denormals, values next to the largest finite ones (some round to
    infinity), zeros, infinities, NaNs, and random bit patterns."""
    high = rng.integers(0, 2**16, 5000, dtype=np.uint64).astype(np.uint32) << 16
    denormal = rng.integers(1, 2**23, 3000, dtype=np.uint32) | \
        (rng.integers(0, 2, 3000, dtype=np.uint32) << 31)
    edges = np.array([0, 0x80000000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0x7F7E8000,
                      0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x00008000,
                      0x00018000, 0x007FFFFF, 0x00800000, 0x477FE000, 0x477FF000, 0x33000000,
                      0x33000001], np.uint32)
    bits = np.concatenate([high | 0x8000, high | 0x7FFF, high | 0x8001, denormal, edges,
                           rng.integers(0, 2**32, 30000, dtype=np.uint64).astype(np.uint32)])
    values = np.concatenate([bits.view(np.float32), rng.normal(0, 1, 5000).astype(np.float32),
                             rng.uniform(-7e4, 7e4, 2000).astype(np.float32)])
    return values


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_rounding_is_torchs_bit_for_bit(dtype):
    values = rounding_cases(np.random.default_rng(0))
    nan = np.isnan(values)
    assert nan.sum() > 10 and (values[~nan] == 0).any()
    if dtype == "bfloat16":
        ours = dtypes.float32_to_bfloat16(values)
        decoded = dtypes.bfloat16_to_float32(ours)
    else:
        with np.errstate(over="ignore"):
            ours = values.astype(np.float16).view(np.uint16)
        decoded = ours.view(np.float16).astype(np.float32)
    theirs = torch_bits(values, dtype)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    assert np.isnan(decoded[nan]).all()


def test_bfloat16_decoding_is_torchs_for_every_bit_pattern():
    bits = np.arange(2**16, dtype=np.uint16)
    ours = dtypes.bfloat16_to_float32(bits)
    theirs = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.numpy().view(np.uint32))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_saved_weights_are_torchs_rounding_of_the_float32_ones(tmp_path, dtype):
    model = calign.Model.from_config(tiny_config("qwen3"), seed=1)
    rng = np.random.default_rng(1)
    for view in model.state_dict().values():  # ties, denormals, large values in every tensor
        cases = rounding_cases(rng)
        finite = cases[np.isfinite(cases) & (np.abs(cases) < (6e4 if dtype == "float16" else
                                                              3e38))]
        view.reshape(-1)[:] = rng.choice(finite, view.size)
    model.save_pretrained(tmp_path, dtype=dtype)
    saved = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    for name, view in model.state_dict().items():
        assert saved[name].dtype == TORCH_DTYPES[dtype]
        np.testing.assert_array_equal(saved[name].view(torch.int16).numpy().view(np.uint16),
                                      torch_bits(view, dtype), err_msg=name)


@pytest.mark.parametrize("dtype,value", [("bfloat16", 3.4e38), ("float16", 65520.0),
                                         ("float16", -1e6)])
def test_weights_beyond_the_dtype_are_refused_naming_the_tensor(tmp_path, dtype, value):
    model = calign.Model.from_config(tiny_config("llama"), seed=0)
    model.state_dict()["model.norm.weight"][5] = value
    with pytest.raises(ValueError, match=rf"tensor 'model.norm.weight' has values beyond the "
                                         rf"{dtype} range"):
        model.save_pretrained(tmp_path / "out", dtype=dtype)
    assert not (tmp_path / "out").exists()  # nothing half-written
    model.save_pretrained(tmp_path / "out", dtype="float32")


@pytest.mark.parametrize("dtype", ["bf16", "float64", torch.bfloat16, np.float16, "auto"])
def test_unknown_save_dtype_is_refused(tmp_path, dtype):
    model = calign.Model.from_config(tiny_config("gpt2"), seed=0)
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16', "
                                         r"'float16'\]"):
        model.save_pretrained(tmp_path, dtype=dtype)
    model.checkpoint_dtype = "bf16"
    with pytest.raises(ValueError, match=r"checkpoint_dtype must be one of"):
        model.save_pretrained(tmp_path)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("dtype", dtypes.SAVE_DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_loads_what_calign_saves(tiny_model, tmp_path, family, dtype):
    model = calign.Model.from_pretrained(str(tiny_model(family)))
    model.save_pretrained(tmp_path, dtype=dtype)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == dtype and "torch_dtype" not in config
    assert stored_codes(tmp_path) == {dtypes.CODES[dtype]}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)  # dtype "auto": config's
    assert hf.dtype == TORCH_DTYPES[dtype]
    for name, view in model.state_dict().items():
        expected = torch.from_numpy(view.copy()).to(TORCH_DTYPES[dtype])
        assert torch.equal(hf.state_dict()[name], expected), name
    reloaded = calign.Model.from_pretrained(str(tmp_path))
    assert reloaded.checkpoint_dtype == dtype
    assert_same_model(reloaded, upcast(tmp_path))


def test_save_writes_the_dtype_loaded_by_default(tiny_model, tmp_path):
    """A model is written back in its checkpoint's dtype (float32 when it was
    built from a config or its tensors mix dtypes, which keeps every value),
    and a loaded, saved, reloaded model has the same weights bit for bit."""
    assert calign.Model.from_config(tiny_config("llama")).checkpoint_dtype == "float32"
    for dtype in ("bfloat16", "float16", "float32"):
        source = transformers_saved(tmp_path / dtype, tiny_model("llama"), dtype)
        config = json.loads((source / "config.json").read_text())
        config["torch_dtype"] = config.pop("dtype")  # the name transformers 4 wrote
        (source / "config.json").write_text(json.dumps(config))
        model = calign.Model.from_pretrained(str(source))
        model.save_pretrained(tmp_path / f"{dtype}-again")
        assert stored_codes(tmp_path / f"{dtype}-again") == {dtypes.CODES[dtype]}
        written = json.loads((tmp_path / f"{dtype}-again" / "config.json").read_text())
        assert written["dtype"] == dtype and "torch_dtype" not in written
        again = calign.Model.from_pretrained(str(tmp_path / f"{dtype}-again"))
        np.testing.assert_array_equal(again.params, model.params)
    mixed = {name: tensor.to(torch.float32) if name.endswith("norm.weight") else tensor
             for name, tensor in safetensors.torch.load_file(
                 str(tmp_path / "bfloat16" / "model.safetensors")).items()}
    safetensors.torch.save_file(mixed, str(tmp_path / "bfloat16" / "model.safetensors"),
                                metadata={"format": "pt"})
    model = calign.Model.from_pretrained(str(tmp_path / "bfloat16"))
    assert model.checkpoint_dtype == "float32"


def test_reward_model_saves_in_the_dtype_asked(tiny_model, tmp_path):
    source = transformers_saved(tmp_path / "bf16", tiny_model("qwen2"), "bfloat16")
    reward = calign.RewardModel.from_causal_lm(str(source), seed=0, pad_token_id=0)
    assert reward.checkpoint_dtype == "bfloat16"
    reward.save_pretrained(tmp_path / "rm")
    assert stored_codes(tmp_path / "rm") == {"BF16"}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert hf.dtype == torch.bfloat16
    expected = torch_bits(reward.state_dict()["score.weight"], "bfloat16")
    assert np.array_equal(hf.score.weight.detach().view(torch.int16).numpy().view(np.uint16),
                          expected)
    reward.save_pretrained(tmp_path / "rm32", dtype="float32")
    again = calign.RewardModel.from_pretrained(str(tmp_path / "rm32"))
    np.testing.assert_array_equal(again.params, reward.params)


# ---- trainers: float32 checkpoints, the loaded dtype at the end ------------------------------

def test_training_a_bfloat16_model_resumes_bit_identically(tiny_model, tmp_path):
    """A trainer's checkpoints hold the float32 master weights (the run moves
    them off the bfloat16 grid), so a resume reproduces the uninterrupted run
    bit for bit; save_model writes the dtype the model was loaded in."""
    source = str(transformers_saved(tmp_path / "bf16", tiny_model("llama"), "bfloat16"))
    data = sft_records(12, style="tokenized", seed=3)
    settings = dict(learning_rate=5e-3, per_device_train_batch_size=2, max_steps=6, save_steps=3,
                    shuffle=True, logging_steps=1, disable_tqdm=True)
    output = str(tmp_path / "run")
    full = calign.SFTTrainer(source, args=calign.SFTConfig(output_dir=output, **settings),
                             train_dataset=data)
    full.train()
    ckpt = os.path.join(output, "checkpoint-3")
    assert stored_codes(ckpt) == {"F32"}
    assert json.loads(open(os.path.join(ckpt, "config.json")).read())["dtype"] == "float32"
    on_grid = dtypes.bfloat16_to_float32(dtypes.float32_to_bfloat16(full.model.params))
    assert not np.array_equal(on_grid, full.model.params)

    resumed = calign.SFTTrainer(source, args=calign.SFTConfig(output_dir=output, **settings),
                                train_dataset=data)
    resumed.train(resume_from_checkpoint=ckpt)
    np.testing.assert_array_equal(resumed.model.params, full.model.params)

    resumed.save_model(str(tmp_path / "final"))
    assert stored_codes(tmp_path / "final") == {"BF16"}
    final = calign.Model.from_pretrained(str(tmp_path / "final"))
    np.testing.assert_array_equal(final.params, on_grid)


# ---- generation_config.json ------------------------------------------------------------------

def test_generation_config_survives_save(tiny_model, tmp_path):
    source = transformers_saved(tmp_path / "bf16", tiny_model("qwen2"), "bfloat16")
    fields = dict(json.loads((source / "generation_config.json").read_text()), do_sample=True,
                  top_k=7, temperature=0.7, max_new_tokens=5, eos_token_id=[3, 4])
    (source / "generation_config.json").write_text(json.dumps(fields))
    model = calign.Model.from_pretrained(str(source))
    assert model.generation_config == fields
    for dtype in (None, "float32"):
        model.save_pretrained(tmp_path / "out", dtype=dtype)
        assert json.loads((tmp_path / "out" / "generation_config.json").read_text()) == fields
        again = calign.Model.from_pretrained(str(tmp_path / "out"))
        assert again.generation_config == fields
        assert again.generate([[5, 6, 7]], seed=3) == model.generate([[5, 6, 7]], seed=3)
    loaded = transformers.GenerationConfig.from_pretrained(tmp_path / "out")
    assert (loaded.top_k, loaded.max_new_tokens, loaded.eos_token_id) == (7, 5, [3, 4])
    # the folder holds the model saved: a model without one leaves none behind
    calign.Model.from_config(model.config, seed=0).save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "generation_config.json").exists()
    model.generation_config = "top_k=7"
    with pytest.raises(ValueError, match="generation_config must be None or a dict"):
        model.save_pretrained(tmp_path / "bad")


# ---- calign info --model ---------------------------------------------------------------------

def info(path):
    return subprocess.run([sys.executable, "-m", "calign", "info", "--model", str(path)],
                          capture_output=True, text=True, timeout=300)


def test_info_describes_a_runnable_checkpoint(tiny_model, tiny_tokenizer, tmp_path):
    source = tiny_model("llama", tokenizer=tiny_tokenizer(chat_template=True))
    path = transformers_saved(tmp_path / "bf16", source, "bfloat16")
    for name in os.listdir(source):
        if name.startswith("tokenizer"):
            shutil.copy(source / name, path / name)
    n_params = calign.Model.from_pretrained(str(path)).num_parameters()
    n_tensors = len(list(read_tensors(str(path))))
    out = info(path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    config = json.loads((path / "config.json").read_text())
    for line in (f"checkpoint: {path}", "family: llama (LlamaForCausalLM)",
                 f"parameters: {n_params:,} in {n_tensors} tensors", "dtype: bfloat16",
                 f"vocabulary: {config['vocab_size']}", "max positions: 512",
                 "tied embeddings: no", "chat template: yes", "generation_config.json: yes",
                 "runs in calign: yes"):
        assert line in lines, (line, lines)


def test_info_names_why_a_checkpoint_cannot_run(tiny_model, tmp_path):
    path = tmp_path / "yarn"
    shutil.copytree(tiny_model("qwen3"), path)
    config = json.loads((path / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (path / "config.json").write_text(json.dumps(config))
    out = info(path)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert "runs in calign: no: rope_scaling of type 'yarn' is not implemented (only plain " \
           "RoPE is); calign does not run an approximation" in lines, lines
    assert "family: qwen3 (Qwen3ForCausalLM)" in lines and "vocabulary: 999" in lines
    assert "chat template: no tokenizer.json" in lines and "generation_config.json: no" in lines

    path = tmp_path / "int8"
    shutil.copytree(tiny_model("gpt2"), path)
    tensors = safetensors.numpy.load_file(str(path / "model.safetensors"))
    tensors["transformer.ln_f.bias"] = tensors["transformer.ln_f.bias"].astype(np.int8)
    safetensors.numpy.save_file(tensors, str(path / "model.safetensors"))
    out = info(path)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert f"dtypes: I8 (1 tensor), float32 ({len(tensors) - 1} tensors)" in lines, lines
    assert "tied embeddings: yes" in lines
    assert any(line.startswith("runs in calign: no: tensor 'transformer.ln_f.bias' has dtype "
                               "I8") for line in lines), lines


def test_info_reads_headers_only(tiny_model, monkeypatch):
    def refuse(self, name):
        raise AssertionError(f"info read tensor {name!r}")

    monkeypatch.setattr(checkpoint.CheckpointTensors, "get", refuse)
    summary = describe_checkpoint(str(tiny_model("qwen2")))
    assert summary["runnable"] and summary["dtypes"] == {"float32": summary["tensors"]}


def test_info_without_a_folder_is_a_usage_error(tmp_path):
    out = info(tmp_path / "missing")
    assert out.returncode == 2 and "--model" in out.stderr and "is not a folder" in out.stderr
    out = info(tmp_path)
    assert out.returncode == 2 and "no config.json" in out.stderr
