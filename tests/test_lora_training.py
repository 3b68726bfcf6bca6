"""Trainers with LoRA (TRL's peft_config): against a PyTorch + PEFT loop and
TRL + PEFT, the base frozen, the reference the base itself (no copy)."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers

import calign
from calign.lora import AdapterReference, LoraConfig
from reference import trainers_torch as ref

peft = pytest.importorskip("peft")

VOCAB = 37
STEPS = 20
LR = 5e-3
COMMON = dict(learning_rate=LR, per_device_train_batch_size=2, max_steps=STEPS, shuffle=False,
              logging_steps=1, save_steps=0, warmup_steps=3, weight_decay=0.01,
              max_grad_norm=1.0, disable_tqdm=True)
LORA = dict(r=4, lora_alpha=8, target_modules="all-linear")


@pytest.fixture(scope="module")
def llama_dir(tiny_model):
    return str(tiny_model("llama", hidden_size=24, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=2, head_dim=6, intermediate_size=40,
                          vocab_size=VOCAB, pad_token_id=0, attention_bias=False,
                          mlp_bias=False, rope_theta=10000.0))


def pairs(n, seed=0):
    rng = np.random.default_rng(seed)

    def ids(low, high):
        return rng.integers(1, VOCAB, rng.integers(low, high)).tolist()

    return [{"prompt_input_ids": ids(2, 6), "chosen_input_ids": ids(1, 5),
             "rejected_input_ids": ids(1, 5)} for _ in range(n)]


def losses_of(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


class AdaptersOff:
    """A PEFT model called with its adapters disabled: the reference of a
    LoRA run, as TRL takes it."""

    def __init__(self, model):
        self.model = model

    def __call__(self, ids):
        with self.model.disable_adapter():
            return self.model(ids)


def peft_loop(path, adapter_dir, batch_loss, data):
    """The torch reference loop on a PEFT model starting from calign's initial
    adapters (saved in adapter_dir), reference = adapters off."""
    base = transformers.AutoModelForCausalLM.from_pretrained(path)
    policy = peft.PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    loss = (lambda batch: batch_loss(policy, AdaptersOff(policy), batch))
    return ref.train_loop(trainable, loss, data, STEPS, 2, LR, 3, 0.01, 1.0)


def initial_adapters(path, tmp_path, seed=42):
    """The adapters a trainer with peft_config starts from (seed = args.seed)."""
    model = calign.Model.from_pretrained(path)
    model.add_adapter(LoraConfig(**LORA), seed=seed)
    model.save_pretrained(tmp_path / "initial")
    return tmp_path / "initial"


def test_dpo_with_lora_matches_a_peft_loop(llama_dir, tmp_path):
    data = pairs(8)
    model = calign.Model.from_pretrained(llama_dir)
    base = model.params.copy()
    trainer = calign.DPOTrainer(model, args=calign.DPOConfig(
        output_dir=str(tmp_path / "out"), beta=0.5, **COMMON), train_dataset=data,
        peft_config=LoraConfig(**LORA))
    assert isinstance(trainer.ref_model, AdapterReference) and trainer.ref_model.model is model
    trainer.train()
    expected = peft_loop(llama_dir, initial_adapters(llama_dir, tmp_path),
                         lambda p, r, b: ref.dpo_batch_loss(p, r, b, 0.5), data)
    assert losses_of(trainer)[0] == pytest.approx(math.log(2), abs=1e-6)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)
    assert losses_of(trainer)[-1] < losses_of(trainer)[0]
    np.testing.assert_array_equal(model.params, base)  # the base is frozen
    assert not model.grad_buffer.any()


def test_fused_and_plain_dpo_steps_agree_with_lora(llama_dir, tmp_path):
    """The fused pair scoring and the plain path (RPO's NLL term off at 0)
    train the adapters alike; the reference comes first in both."""
    runs = []
    for rpo_alpha in (None, 0.0):
        trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
            output_dir=str(tmp_path / str(rpo_alpha)), beta=0.5, rpo_alpha=rpo_alpha,
            **dict(COMMON, max_steps=5)), train_dataset=pairs(8),
            peft_config=LoraConfig(**LORA))
        trainer.train()
        runs.append((losses_of(trainer), trainer.model.adapters.params.copy()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], atol=1e-6)
    np.testing.assert_allclose(runs[0][1], runs[1][1], atol=1e-6)


def test_kto_with_lora_matches_a_peft_loop(llama_dir, tmp_path):
    rng = np.random.default_rng(1)
    data = [{"prompt_input_ids": rng.integers(1, VOCAB, 4).tolist(),
             "completion_input_ids": rng.integers(1, VOCAB, 3).tolist(), "label": bool(i % 3)}
            for i in range(8)]
    trainer = calign.KTOTrainer(llama_dir, args=calign.KTOConfig(
        output_dir=str(tmp_path / "out"), beta=0.5, undesirable_weight=1.5, **COMMON),
        train_dataset=data, peft_config=LoraConfig(**LORA))
    trainer.train()
    expected = peft_loop(llama_dir, initial_adapters(llama_dir, tmp_path),
                         lambda p, r, b: ref.kto_batch_loss(p, r, b, 0.5, 1.0, 1.5), data)
    np.testing.assert_allclose(losses_of(trainer), expected, atol=1e-4)


def test_continuing_an_adapter_keeps_it_as_the_reference(llama_dir, tmp_path):
    """A model that comes with an adapter trains it; the reference is that
    adapter frozen where training starts (TRL's 'ref' adapter), so the first
    loss is ln 2 although the adapter is not zero."""
    start = calign.Model.from_pretrained(llama_dir)
    start.add_adapter(LoraConfig(init_lora_weights=False, **LORA), seed=3)
    start.save_pretrained(tmp_path / "start")
    model = calign.Model.from_pretrained(llama_dir)
    model.load_adapter(tmp_path / "start")
    initial = model.adapters.params.copy()
    trainer = calign.DPOTrainer(model, args=calign.DPOConfig(
        output_dir=str(tmp_path / "out"), beta=0.5, **dict(COMMON, max_steps=3)),
        train_dataset=pairs(8))
    trainer.train()
    assert losses_of(trainer)[0] == pytest.approx(math.log(2), abs=1e-6)
    assert not np.array_equal(model.adapters.params, initial)
    np.testing.assert_array_equal(trainer.ref_model.frozen, initial)
    with pytest.raises(ValueError, match="peft_config must be None when the model already"):
        calign.DPOTrainer(model, args=calign.DPOConfig(output_dir=str(tmp_path / "again")),
                          train_dataset=pairs(4), peft_config=LoraConfig())


def test_orpo_cpo_and_sft_take_peft_config(llama_dir, tmp_path):
    data = pairs(6)
    for trainer_class, config_class in ((calign.ORPOTrainer, calign.ORPOConfig),
                                        (calign.CPOTrainer, calign.CPOConfig)):
        model = calign.Model.from_pretrained(llama_dir)
        base = model.params.copy()
        trainer = trainer_class(model, args=config_class(
            output_dir=str(tmp_path / trainer_class.__name__), **dict(COMMON, max_steps=4)),
            train_dataset=data, peft_config=LoraConfig(**LORA))
        trainer.train()
        np.testing.assert_array_equal(model.params, base)
        assert np.abs(model.adapters.params).max() > 0
    sft = [{"input_ids": p["prompt_input_ids"] + p["chosen_input_ids"]} for p in data]
    with pytest.raises(ValueError, match="lora_dropout must be 0 for SFTTrainer"):
        calign.SFTTrainer(llama_dir, args=calign.SFTConfig(output_dir=str(tmp_path / "sft")),
                          train_dataset=sft, peft_config=LoraConfig(lora_dropout=0.05, **LORA))
    trainer = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(
        output_dir=str(tmp_path / "sft"), **dict(COMMON, max_steps=2)), train_dataset=sft,
        peft_config=LoraConfig(**LORA))
    trainer.train()
    assert np.abs(trainer.model.adapters.params).max() > 0
    with pytest.raises(ValueError, match="peft_config must be None for a reward model"):
        calign.RewardTrainer(llama_dir, args=calign.RewardConfig(output_dir=str(tmp_path)),
                             train_dataset=data, peft_config=LoraConfig())


def test_trl_with_peft_logs_the_same_metrics(tiny_model, tiny_tokenizer, tmp_path):
    """TRL's DPOTrainer with a PEFT LoraConfig and calign's with a LoraConfig
    on the same data: the logged metrics of 3 steps agree to 1e-4. The
    adapter has TRL's scripts' lora_dropout 0.05, which TRL's
    disable_dropout=True switches off and calign never applies: with dropout
    acting, TRL's metrics would not be these."""
    import datasets
    import trl

    from calign import testing

    path = tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=47), hidden_size=32,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=None,
                      intermediate_size=48, initializer_range=0.1, attention_bias=False,
                      mlp_bias=False, rope_theta=10000.0)
    data = testing.preference_records(4, seed=0, words=testing.word_list(45))
    settings = dict(learning_rate=1e-2, per_device_train_batch_size=4, max_steps=3,
                    logging_steps=1, beta=0.3, max_length=64, save_steps=0, max_grad_norm=1.0)
    torch.manual_seed(0)
    trl_trainer = trl.DPOTrainer(
        model=transformers.AutoModelForCausalLM.from_pretrained(path),
        args=trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                           save_strategy="no", seed=0, bf16=False, **settings),
        train_dataset=datasets.Dataset.from_list(data),
        processing_class=transformers.AutoTokenizer.from_pretrained(path),
        peft_config=peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05,
                                    target_modules="all-linear"))
    trl_trainer.model.save_pretrained(tmp_path / "trl_initial")  # B = 0: the base
    trl_trainer.train()
    theirs = [h for h in trl_trainer.state.log_history if "loss" in h]

    model = calign.Model.from_pretrained(str(path))
    model.load_adapter(tmp_path / "trl_initial")
    ours = calign.DPOTrainer(model, args=calign.DPOConfig(
        output_dir=str(tmp_path / "calign"), disable_tqdm=True, seed=0, **settings),
        train_dataset=data, processing_class=str(path))
    ours.train()
    mine = [h for h in ours.state.log_history if "loss" in h]
    for name in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                 "logps/chosen", "logps/rejected", "grad_norm"):
        for step, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-5), (name, step)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import calign
    from calign.lora import LoraConfig

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    model = calign.Model.from_config(dict(
        model_type="llama", hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=256, vocab_size=32000,
        max_position_embeddings=64, tie_word_embeddings=False), seed=0)
    rng = np.random.default_rng(0)
    data = [{"prompt_input_ids": rng.integers(1, 32000, 8).tolist(),
             "chosen_input_ids": rng.integers(1, 32000, 6).tolist(),
             "rejected_input_ids": rng.integers(1, 32000, 6).tolist()} for _ in range(8)]
    before = rss()
    trainer = calign.DPOTrainer(model, args=calign.DPOConfig(
        output_dir=sys.argv[2], max_steps=3, per_device_train_batch_size=4, save_steps=0,
        disable_tqdm=True), train_dataset=data,
        peft_config=LoraConfig(r=8, target_modules="all-linear") if sys.argv[1] == "lora"
        else None)
    trainer.train()
    print(json.dumps({"growth": rss() - before, "parameter_bytes": model.params.nbytes}))
""")


def test_lora_keeps_no_reference_copy_nor_base_gradients(tmp_path):
    """Peak memory of a LoRA run against a full fine-tune of the same 8M-parameter
    model: the full run adds a reference copy, gradients and two AdamW moments
    (4 x 32 MB); LoRA adds none of them (the base gradient buffer is never
    written, so its pages are never touched)."""
    growth = {}
    for mode in ("full", "lora"):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, mode, str(tmp_path / mode)],
                             capture_output=True, text=True, check=True, timeout=600)
        growth[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    parameter_bytes = growth["full"]["parameter_bytes"]
    assert growth["full"]["growth"] > 3.5 * parameter_bytes
    assert growth["lora"]["growth"] < 0.5 * parameter_bytes


def test_a_lora_run_resumes_bit_identically_from_its_adapter_checkpoints(llama_dir, tmp_path):
    """A LoRA run's checkpoints hold the adapter (PEFT's files, as TRL's do),
    the optimizer state and the trainer state; resuming continues exactly."""
    def run(output_dir, max_steps, resume=None):
        trainer = calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
            output_dir=str(output_dir), beta=0.5, **dict(COMMON, max_steps=max_steps,
                                                          save_steps=2)),
            train_dataset=pairs(8), peft_config=LoraConfig(**LORA))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run(tmp_path / "whole", 6)
    run(tmp_path / "split", 4)
    names = sorted(os.listdir(tmp_path / "split" / "checkpoint-4"))
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    resumed = run(tmp_path / "split", 6, resume=True)
    np.testing.assert_array_equal(resumed.model.adapters.params, whole.model.adapters.params)
    assert losses_of(resumed) == losses_of(whole)
    reloaded = calign.Model.from_pretrained(llama_dir)
    reloaded.load_adapter(tmp_path / "split" / "checkpoint-6")  # a PEFT adapter folder
    np.testing.assert_array_equal(reloaded.adapters.params, whole.model.adapters.params)
