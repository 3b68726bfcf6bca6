"""Checkpoint averaging (calign.merge, the trainers' checkpoint_averaging_*)
and the EMA of the weights (calign.optim.EMA, the trainers' ema_decay): the
numbers against NumPy and the closed form, resumes bit for bit, bad input."""

import os

import numpy as np
import pytest

import calign
from calign import merge
from calign.lora import LoraConfig
from calign.optim import EMA

VOCAB = 29
SMALL = dict(model_type="llama", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, intermediate_size=24, vocab_size=VOCAB,
             max_position_embeddings=32)
COMMON = dict(learning_rate=5e-3, per_device_train_batch_size=2, shuffle=True, logging_steps=1,
              warmup_steps=1, max_grad_norm=1.0, disable_tqdm=True)


def saved(tmp_path, name, config=SMALL, seed=0, dtype=None):
    path = str(tmp_path / name)
    calign.Model.from_config(config, seed=seed).save_pretrained(path, dtype=dtype)
    return path


def data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(1, VOCAB, rng.integers(3, 8)).tolist()} for _ in range(n)]


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


# ---- calign.merge.average_checkpoints -------------------------------------------------

def test_average_is_numpys_mean_bit_for_bit(tmp_path):
    paths = [saved(tmp_path, "a", seed=0), saved(tmp_path, "b", seed=1, dtype="bfloat16"),
             saved(tmp_path, "c", seed=2)]
    out = merge.average_checkpoints(paths, tmp_path / "mean")
    mean = calign.Model.from_pretrained(out)
    models = [calign.Model.from_pretrained(p) for p in paths]
    for name, tensor in mean.state_dict().items():
        expected = np.mean(np.stack([m.state_dict()[name] for m in models]), axis=0)
        np.testing.assert_array_equal(bits(tensor), bits(expected), err_msg=name)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]


def test_weighted_average_is_numpys_average(tmp_path):
    paths = [saved(tmp_path, "a", seed=0), saved(tmp_path, "b", seed=1)]
    out = merge.average_checkpoints(paths, tmp_path / "w", weights=[3, 0.5], dtype="bfloat16")
    weighted = calign.Model.from_pretrained(out)
    assert weighted.checkpoint_dtype == "bfloat16"
    models = [calign.Model.from_pretrained(p) for p in paths]
    for name, tensor in weighted.state_dict().items():
        exact = np.average(np.stack([m.state_dict()[name] for m in models]).astype(np.float64),
                           axis=0, weights=[3, 0.5]).astype(np.float32)
        np.testing.assert_allclose(tensor, exact, rtol=2 ** -8, atol=1e-30)


def test_average_of_transformers_checkpoints_loads_in_transformers(tmp_path, tiny_model):
    import torch
    import transformers
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{
            k: v for k, v in SMALL.items() if k != "model_type"}))
        model.save_pretrained(tmp_path / f"hf{seed}")
        paths.append(str(tmp_path / f"hf{seed}"))
    out = merge.average_checkpoints(paths, tmp_path / "avg")
    averaged = transformers.AutoModelForCausalLM.from_pretrained(out)
    sources = [transformers.AutoModelForCausalLM.from_pretrained(p).state_dict() for p in paths]
    for name, tensor in averaged.state_dict().items():
        expected = (sources[0][name] + sources[1][name]) / 2
        np.testing.assert_array_equal(tensor.numpy(), expected.numpy(), err_msg=name)


@pytest.mark.parametrize("change, named", [
    (dict(hidden_size=24), "hidden_size"),
    (dict(model_type="qwen2"), "qwen2"),
    (dict(num_hidden_layers=1), "num_hidden_layers"),
])
def test_checkpoints_of_other_models_are_refused(tmp_path, change, named):
    a = saved(tmp_path, "a")
    b = saved(tmp_path, "b", config=dict(SMALL, **change))
    with pytest.raises(ValueError, match=named):
        merge.average_checkpoints([a, b], tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("kwargs, named", [
    (dict(weights=[1.0]), "weights"), (dict(weights=[1.0, -1.0]), "weights"),
    (dict(weights=[0.0, 0.0]), "weights"), (dict(weights=[1.0, np.nan]), "weights"),
    (dict(dtype="int8"), "dtype"),
])
def test_bad_average_arguments(tmp_path, kwargs, named):
    paths = [saved(tmp_path, "a"), saved(tmp_path, "b", seed=1)]
    with pytest.raises(ValueError, match=named):
        merge.average_checkpoints(paths, tmp_path / "out", **kwargs)
    with pytest.raises(ValueError, match="paths"):
        merge.average_checkpoints([], tmp_path / "out")
    with pytest.raises(ValueError, match="out_path"):
        merge.average_checkpoints(paths, paths[0])


# ---- EMA ---------------------------------------------------------------------------------

def test_ema_follows_its_closed_form():
    model = calign.Model.from_config(SMALL, seed=0)
    rng = np.random.default_rng(0)
    start = model.params.astype(np.float64)
    ema = EMA(model, 0.9)
    history = []
    for _ in range(7):
        model.params[...] = rng.normal(size=model.params.size)
        history.append(model.params.astype(np.float64))
        ema.update()
    n, d = len(history), 0.9
    closed = d ** n * start + (1 - d) * sum(d ** (n - k) * w for k, w in
                                            enumerate(history, start=1))
    np.testing.assert_allclose(ema.params, closed, rtol=1e-5, atol=1e-6)
    assert ema.updates == 7


def test_trainer_ema_matches_its_checkpoints(tmp_path):
    path = saved(tmp_path, "start")
    trainer = calign.SFTTrainer(path, args=calign.SFTConfig(
        output_dir=str(tmp_path / "run"), ema_decay=0.8, max_steps=4, save_steps=1,
        **COMMON), train_dataset=data())
    trainer.train()
    weights = [calign.Model.from_pretrained(path).params.astype(np.float64)]
    weights += [calign.Model.from_pretrained(str(tmp_path / "run" / f"checkpoint-{s}"))
                .params.astype(np.float64) for s in range(1, 5)]
    ema = weights[0]
    for w in weights[1:]:
        ema = 0.8 * ema + 0.2 * w
    np.testing.assert_allclose(trainer.averages.ema.params, ema, rtol=1e-5, atol=1e-7)
    folder = calign.Model.from_pretrained(str(tmp_path / "run" / "checkpoint-4" / "ema"))
    np.testing.assert_array_equal(folder.params, trainer.averages.ema.params)
    trainer.save_model()
    final = calign.Model.from_pretrained(str(tmp_path / "run" / "ema"))
    np.testing.assert_array_equal(final.params, trainer.averages.ema.params)


def test_resume_with_ema_is_bit_identical(tmp_path):
    path = saved(tmp_path, "start")
    settings = dict(COMMON, ema_decay=0.9, max_steps=6, save_steps=3)
    full = calign.SFTTrainer(path, args=calign.SFTConfig(output_dir=str(tmp_path / "run"),
                                                         **settings), train_dataset=data())
    full.train()
    resumed = calign.SFTTrainer(path, args=calign.SFTConfig(output_dir=str(tmp_path / "run"),
                                                            **settings), train_dataset=data())
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    np.testing.assert_array_equal(resumed.model.params, full.model.params)
    np.testing.assert_array_equal(resumed.averages.ema.params, full.averages.ema.params)
    assert resumed.averages.ema.updates == 6


def test_evaluation_with_the_ema(tmp_path):
    path = saved(tmp_path, "start")
    trainer = calign.SFTTrainer(path, args=calign.SFTConfig(
        output_dir=str(tmp_path / "run"), ema_decay=0.5, eval_use_ema=True, max_steps=3,
        save_steps=3, **COMMON), train_dataset=data(), eval_dataset=data(3, seed=9))
    trainer.train()
    own = trainer.model.params.copy()
    with_ema = trainer.evaluate()["eval_loss"]
    np.testing.assert_array_equal(trainer.model.params, own)  # the weights are put back
    plain = calign.SFTTrainer(str(tmp_path / "run" / "checkpoint-3" / "ema"),
                              args=calign.SFTConfig(output_dir=str(tmp_path / "plain")),
                              train_dataset=data(), eval_dataset=data(3, seed=9))
    assert with_ema == pytest.approx(plain.evaluate()["eval_loss"], rel=1e-6)
    trainer.args.eval_use_ema = False
    assert trainer.evaluate()["eval_loss"] != pytest.approx(with_ema, rel=1e-6)


# ---- checkpoint averaging in training ----------------------------------------------------

def test_trainer_averages_its_latest_checkpoints(tmp_path):
    path = saved(tmp_path, "start")
    trainer = calign.SFTTrainer(path, args=calign.SFTConfig(
        output_dir=str(tmp_path / "run"), max_steps=4, save_steps=1,
        checkpoint_averaging_steps=4, checkpoint_averaging_window=3, **COMMON),
        train_dataset=data())
    trainer.train()
    written = [calign.Model.from_pretrained(str(tmp_path / "run" / f"checkpoint-{s}")).params
               for s in (2, 3, 4)]
    np.testing.assert_array_equal(bits(trainer.model.params),
                                  bits(np.mean(np.stack(written), axis=0)))


def test_resume_with_checkpoint_averaging_is_bit_identical(tmp_path):
    path = saved(tmp_path, "start")
    settings = dict(COMMON, max_steps=6, save_steps=2, checkpoint_averaging_steps=2,
                    checkpoint_averaging_window=2, ema_decay=0.9)
    full = calign.SFTTrainer(path, args=calign.SFTConfig(output_dir=str(tmp_path / "run"),
                                                         **settings), train_dataset=data())
    full.train()
    resumed = calign.SFTTrainer(path, args=calign.SFTConfig(output_dir=str(tmp_path / "run"),
                                                            **settings), train_dataset=data())
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    np.testing.assert_array_equal(resumed.model.params, full.model.params)
    np.testing.assert_array_equal(resumed.averages.ema.params, full.averages.ema.params)


@pytest.mark.parametrize("settings, named", [
    (dict(checkpoint_averaging_steps=3, save_steps=2), "checkpoint_averaging_steps"),
    (dict(checkpoint_averaging_steps=4, save_steps=0.5), "checkpoint_averaging_steps"),
    (dict(checkpoint_averaging_steps=4, save_strategy="no"), "checkpoint_averaging_steps"),
    (dict(checkpoint_averaging_steps=4, save_steps=2, save_total_limit=2), "save_total_limit"),
    (dict(checkpoint_averaging_window=3), "checkpoint_averaging_window"),
    (dict(checkpoint_averaging_steps=-1), "checkpoint_averaging_steps"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(ema_decay=-0.1), "ema_decay"),
    (dict(eval_use_ema=True), "eval_use_ema"),
])
def test_bad_settings_are_named(settings, named):
    with pytest.raises(ValueError, match=named):
        calign.SFTConfig(**settings)


def test_lora_runs_keep_an_ema_of_the_adapters_but_cannot_average(tmp_path):
    path = saved(tmp_path, "start")
    lora = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules="all-linear")
    trainer = calign.SFTTrainer(path, args=calign.SFTConfig(
        output_dir=str(tmp_path / "a"), ema_decay=0.9, max_steps=2, save_steps=2, **COMMON),
        train_dataset=data(), peft_config=lora)
    trainer.train()
    assert trainer.averages.ema.params.size == trainer.model.adapters.params.size
    with pytest.raises(ValueError, match="checkpoint_averaging_steps"):
        calign.SFTTrainer(path, args=calign.SFTConfig(
            output_dir=str(tmp_path / "b"), checkpoint_averaging_steps=2, save_steps=2,
            **COMMON), train_dataset=data(), peft_config=lora)
