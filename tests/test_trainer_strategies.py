"""The TrainingArguments fields calign implements, by their behaviour: when
metrics are logged, evaluations run and checkpoints are written, the best
checkpoint's bookkeeping, resume as a config field, the data order, where the
logs are reported, and a progress bar closed before a traceback."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import calign
from calign.trainers import reporting

VOCAB = 37
BASE = dict(learning_rate=5e-3, per_device_train_batch_size=2, disable_tqdm=True,
            save_strategy="no", train_sampling_strategy="sequential")


@pytest.fixture(scope="module")
def llama_dir(tiny_model):
    return str(tiny_model("llama", hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=6, intermediate_size=32,
                          vocab_size=VOCAB, pad_token_id=0, attention_bias=False,
                          mlp_bias=False, rope_theta=10000.0))


def pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    ids = lambda lo, hi: rng.integers(1, VOCAB, rng.integers(lo, hi)).tolist()  # noqa: E731
    return [{"prompt_input_ids": ids(2, 5), "chosen_input_ids": ids(1, 4),
             "rejected_input_ids": ids(1, 4)} for _ in range(n)]


def dpo(llama_dir, tmp_path, data=None, eval_data=None, **settings):
    return calign.DPOTrainer(llama_dir, args=calign.DPOConfig(
        output_dir=str(tmp_path), **dict(BASE, **settings)),
        train_dataset=data or pairs(4), eval_dataset=eval_data)


def steps_with(trainer, key):
    return [h["step"] for h in trainer.state.log_history if key in h]


def checkpoint_steps(path):
    return sorted(int(n.split("-")[1]) for n in os.listdir(path) if n.startswith("checkpoint-"))


# ---- logging, evaluation, saving ---------------------------------------------------

@pytest.mark.parametrize("settings,logged", [
    (dict(logging_steps=2), [2, 4, 5]),                       # and the end
    (dict(logging_steps=3, logging_first_step=True), [1, 3, 5]),
    (dict(logging_steps=0.4), [2, 4, 5]),                     # a fraction of the 5 steps
    (dict(logging_strategy="epoch"), [2, 4, 5]),              # 2 steps an epoch
    (dict(logging_strategy="no"), []),
])
def test_logging_strategy(llama_dir, tmp_path, settings, logged):
    trainer = dpo(llama_dir, tmp_path, max_steps=5, **settings)
    trainer.train()
    assert steps_with(trainer, "loss") == logged
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines() if logged else []
    assert [json.loads(line)["step"] for line in lines] == logged


@pytest.mark.parametrize("settings,evaluated", [
    (dict(eval_strategy="steps", eval_steps=2), [2, 4, 5]),
    (dict(eval_strategy="steps", logging_steps=3), [3, 5]),   # eval_steps from logging_steps
    (dict(eval_strategy="steps", eval_steps=1, eval_delay=3), [3, 4, 5]),
    (dict(eval_strategy="epoch"), [2, 4, 5]),
    (dict(eval_on_start=True), [0]),
])
def test_eval_strategy(llama_dir, tmp_path, settings, evaluated):
    trainer = dpo(llama_dir, tmp_path, eval_data=pairs(3, seed=1), max_steps=5, **settings)
    trainer.train()
    assert steps_with(trainer, "eval_loss") == evaluated
    entry = next(h for h in trainer.state.log_history if "eval_loss" in h)
    assert {"eval_rewards/accuracies", "eval_logps/chosen", "epoch"} <= set(entry)


@pytest.mark.parametrize("settings,saved", [
    (dict(save_strategy="no"), []),
    (dict(save_strategy="steps", save_steps=2), [2, 4, 5]),   # and at the end
    (dict(save_strategy="steps", save_steps=0.4), [2, 4, 5]),
    (dict(save_strategy="steps", save_steps=0), []),          # calign's "never"
    (dict(save_strategy="epoch"), [2, 4, 5]),
])
def test_save_strategy(llama_dir, tmp_path, settings, saved):
    dpo(llama_dir, tmp_path, max_steps=5, **settings).train()
    assert checkpoint_steps(tmp_path) == saved


def test_best_checkpoint_is_tracked_kept_and_loaded(llama_dir, tmp_path):
    """The eval set is the training set, so its loss falls: with greater_is_better
    the first evaluation is the best, and stays through pruning to one checkpoint."""
    data = pairs(4, seed=2)
    trainer = dpo(llama_dir, tmp_path, data=data, eval_data=data, max_steps=4,
                  learning_rate=2e-2, eval_strategy="steps", eval_steps=1,
                  save_strategy="steps", save_steps=1, save_total_limit=2,
                  load_best_model_at_end=True, metric_for_best_model="loss",
                  greater_is_better=True)
    trainer.train()
    evals = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    best_step = max(evals, key=evals.get)
    assert best_step == 1 != 4
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_metric"] == evals[best_step] == trainer.state.best_metric
    assert state["best_model_checkpoint"] == str(tmp_path / "checkpoint-1")
    assert checkpoint_steps(tmp_path) == [1, 4]  # the best kept from pruning, and the latest
    best = calign.Model.from_pretrained(str(tmp_path / "checkpoint-1"))
    np.testing.assert_array_equal(trainer.model.params, best.params)  # loaded at the end


def test_save_strategy_best_writes_new_bests_only(llama_dir, tmp_path):
    data = pairs(4, seed=3)
    trainer = dpo(llama_dir, tmp_path, data=data, eval_data=data, max_steps=4,
                  learning_rate=2e-2, eval_strategy="steps", eval_steps=1,
                  save_strategy="best", metric_for_best_model="eval_loss")
    trainer.train()
    losses = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    new_bests = [step for step, loss in enumerate(losses, 1) if loss == min(losses[:step])]
    assert checkpoint_steps(tmp_path) == new_bests and len(new_bests) >= 2
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{new_bests[-1]}")
    with pytest.raises(KeyError, match="metric_for_best_model is 'nope'"):
        dpo(llama_dir, tmp_path / "b", eval_data=data, max_steps=1, eval_strategy="steps",
            eval_steps=1, metric_for_best_model="nope").train()


def test_resume_from_checkpoint_as_a_config_field(llama_dir, tmp_path):
    settings = dict(max_steps=4, logging_steps=1, save_strategy="steps", save_steps=2,
                    train_sampling_strategy="random")
    full = dpo(llama_dir, tmp_path / "full", **settings)
    full.train()
    for resume in (True, str(tmp_path / "full" / "checkpoint-2")):
        again = dpo(llama_dir, tmp_path / "full", resume_from_checkpoint=resume, **settings)
        again.state.global_step = -1  # the checkpoint's state replaces it
        again.train()
        if resume is True:  # the latest checkpoint is the end: nothing left to do
            assert again.state.global_step == 4
        np.testing.assert_array_equal(again.model.params, full.model.params)


# ---- the data order and the amount of training ------------------------------------

def test_fractional_epochs_drop_last_and_data_seed(llama_dir, tmp_path):
    trainer = dpo(llama_dir, tmp_path, data=pairs(5), num_train_epochs=1.5)
    assert trainer.total_steps() == 5  # 3 micro-batches an epoch, 4.5 rounded up
    dropped = dpo(llama_dir, tmp_path, data=pairs(5), num_train_epochs=1.5,
                  dataloader_drop_last=True)
    assert dropped.total_steps() == 3 and len(dropped._window(1)[0]) == 2
    assert all(len(mb) == 2 for step in range(4) for mb in dropped._window(step))
    orders = {}
    for key, settings in (("seed", dict(seed=1)), ("data_seed", dict(seed=2, data_seed=1)),
                          ("other", dict(seed=1, data_seed=5))):
        trainer = dpo(llama_dir, tmp_path, data=pairs(8), train_sampling_strategy="random",
                      **settings)
        orders[key] = [e.index for step in range(4) for mb in trainer._window(step) for e in mb]
    assert orders["seed"] == orders["data_seed"] != orders["other"]
    sequential = dpo(llama_dir, tmp_path, data=pairs(8))
    assert [e.index for mb in sequential._window(0) for e in mb] == [0, 1]
    assert calign.KTOConfig().train_sampling_strategy == "sequential"  # TRL's KTO default
    assert calign.DPOConfig(shuffle=False).train_sampling_strategy == "sequential"


def test_schedule_fields_match_transformers():
    torch = pytest.importorskip("torch")
    import transformers

    config = calign.DPOConfig(lr_scheduler_type="cosine", warmup_steps=0.25,
                              lr_scheduler_kwargs={"num_cycles": 1.5}, learning_rate=1.0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    expected = transformers.get_cosine_schedule_with_warmup(optimizer, 3, 12, num_cycles=1.5)
    from calign.trainers.schedules import learning_rate
    for step in range(12):
        assert learning_rate(config, step, 12) == pytest.approx(expected.lr_lambdas[0](step))


def test_tokens_seen_optimizer_names_and_activation_checkpointing(llama_dir, tmp_path):
    runs = {}
    for optim in ("adamw_torch", "adamw_torch_fused"):
        trainer = dpo(llama_dir, tmp_path / optim, max_steps=2, optim=optim, logging_steps=1,
                      include_num_input_tokens_seen=True, activation_checkpointing=True)
        assert trainer.model.gradient_checkpointing
        trainer.train()
        runs[optim] = trainer.model.params.copy()
        seen = [h["num_input_tokens_seen"] for h in trainer.state.log_history]
        assert seen == [h["num_tokens"] for h in trainer.state.log_history] and seen[0] > 0
    np.testing.assert_array_equal(runs["adamw_torch"], runs["adamw_torch_fused"])


# ---- reporting -----------------------------------------------------------------------

class RecordingWriter:
    made = []

    def __init__(self, log_dir):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        RecordingWriter.made.append(self)

    def add_text(self, *args):
        pass

    def add_scalar(self, name, value, step):
        self.scalars.append((name, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_report_to_tensorboard_and_wandb(llama_dir, tmp_path, monkeypatch):
    calls = []
    wandb = types.SimpleNamespace(
        run=None, init=lambda **kw: calls.append(("init", kw)),
        define_metric=lambda *a, **kw: None, log=lambda logs: calls.append(("log", logs)),
        finish=lambda: calls.append(("finish",)))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setattr(reporting, "_installed", lambda module: True)
    monkeypatch.setattr(reporting, "_summary_writer_class", lambda: RecordingWriter)
    trainer = dpo(llama_dir, tmp_path, eval_data=pairs(2), max_steps=2, logging_steps=1,
                  eval_strategy="steps", eval_steps=2, report_to="all", run_name="r1")
    assert trainer.args.report_to == ["tensorboard", "wandb"]
    trainer.train()
    writer = RecordingWriter.made[-1]
    assert writer.closed and writer.log_dir.startswith(str(tmp_path / "runs"))
    assert [(n, s) for n, _, s in writer.scalars if n == "train/loss"] == [("train/loss", 1),
                                                                           ("train/loss", 2)]
    assert ("eval/loss", 2) in [(n, s) for n, _, s in writer.scalars]
    assert calls[0][0] == "init" and calls[0][1]["name"] == "r1" and calls[-1] == ("finish",)
    logged = [c[1] for c in calls if c[0] == "log"]
    assert logged[0]["train/global_step"] == 1 and "train/loss" in logged[0]
    assert (tmp_path / "metrics.jsonl").is_file()  # always written


def test_report_to_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(reporting, "_installed", lambda module: False)
    with pytest.raises(ValueError, match="^report_to must be .*pip install 'calign\\["
                                         "tensorboard\\]'"):
        calign.DPOConfig(report_to="tensorboard")
    with pytest.raises(ValueError, match="^report_to must be .*pip install wandb"):
        calign.DPOConfig(report_to=["wandb"])
    with pytest.raises(ValueError, match="^report_to must be .*'mlflow' is not supported yet"):
        calign.DPOConfig(report_to="mlflow")
    assert calign.DPOConfig(report_to="all").report_to == []
    assert calign.DPOConfig(report_to="none").report_to == []


def test_tensorboard_event_files_with_tensorboardx(llama_dir, tmp_path):
    pytest.importorskip("tensorboardX")
    dpo(llama_dir, tmp_path, max_steps=2, logging_steps=1, report_to="tensorboard").train()
    (run,) = os.listdir(tmp_path / "runs")
    events = os.listdir(tmp_path / "runs" / run)
    assert events and all(os.path.getsize(tmp_path / "runs" / run / e) > 0 for e in events)


# ---- refusals of combinations, model_init_kwargs --------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(eval_steps=5), "eval_steps"),
    (dict(eval_delay=2), "eval_delay"),
    (dict(save_strategy="no", save_steps=10), "save_steps"),
    (dict(logging_strategy="epoch", logging_steps=5), "logging_steps"),
    (dict(logging_steps=2.5), "logging_steps"),
    (dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="epoch"),
     "load_best_model_at_end"),
    (dict(load_best_model_at_end=True, eval_strategy="steps", eval_steps=3, save_steps=10),
     "save_steps"),
    (dict(save_strategy="best", eval_strategy="steps"), "metric_for_best_model"),
    (dict(metric_for_best_model="loss"), "metric_for_best_model"),
    (dict(greater_is_better=True), "greater_is_better"),
    (dict(train_sampling_strategy="group_by_length"), "train_sampling_strategy"),
    (dict(optim="adafactor"), "optim"),
    (dict(lr_scheduler_type="polynomial"), "lr_scheduler_type"),
    (dict(lr_scheduler_kwargs={"power": 2.0}), "lr_scheduler_kwargs\\['power'\\]"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(model_init_kwargs={"dtype": "bfloat16"}), "model_init_kwargs\\['dtype'\\]"),
    (dict(model_init_kwargs={"load_in_4bit": True}), "model_init_kwargs\\['load_in_4bit'\\]"),
    (dict(model_init_kwargs={"foo": 1}), "model_init_kwargs\\['foo'\\]"),
    (dict(resume_from_checkpoint=3), "resume_from_checkpoint"),
    (dict(include_num_input_tokens_seen="some"), "include_num_input_tokens_seen"),
])
def test_settings_that_contradict_or_ask_the_impossible_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        calign.DPOConfig(**kwargs)


@pytest.mark.parametrize("name,value", [("sync_ref_model", True),
                                        ("precompute_ref_log_probs", np.True_),
                                        ("precompute_ref_batch_size", 4),
                                        ("ref_model_sync_steps", 8)])
def test_kto_refuses_the_reference_fields_it_does_not_implement_yet(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be .*not supported yet for KTO"):
        calign.KTOConfig(**{name: value})
    calign.KTOConfig(sync_ref_model=np.False_, ref_model_mixup_alpha=np.float64(0.6))


def test_model_init_kwargs_apply_to_a_folder(llama_dir, tmp_path):
    kwargs = {"dtype": "float32", "attn_implementation": "sdpa", "device_map": "auto"}
    dpo(llama_dir, tmp_path, max_steps=1, model_init_kwargs=kwargs).train()
    with pytest.raises(ValueError, match="^model_init_kwargs must be None when the model is "
                                         "given loaded"):
        calign.DPOTrainer(calign.Model.from_pretrained(llama_dir), args=calign.DPOConfig(
            output_dir=str(tmp_path), model_init_kwargs=kwargs), train_dataset=pairs(2))
    with pytest.raises(ValueError, match="^eval_strategy must be 'no' when there is no "
                                         "eval_dataset"):
        dpo(llama_dir, tmp_path, eval_strategy="epoch")


def test_online_dpo_beta_per_epoch_and_sampling_fields(llama_dir, tmp_path):
    config = calign.OnlineDPOConfig(output_dir=str(tmp_path), beta=[0.5, 0.2], max_new_tokens=2,
                                    per_device_train_batch_size=2, num_train_epochs=3,
                                    top_k=5, top_p=0.9, repetition_penalty=1.2,
                                    logging_steps=1, disable_tqdm=True, save_strategy="no")
    trainer = calign.OnlineDPOTrainer(llama_dir, lambda prompt, completion: float(len(completion)),
                                      args=config,
                                      train_dataset=[{"prompt_input_ids": [3, 4]},
                                                     {"prompt_input_ids": [5, 6, 7]}])
    trainer.train()
    assert [h["beta"] for h in trainer.state.log_history] == [0.5, 0.2, 0.2]
    with pytest.raises(ValueError, match="^beta must be"):
        calign.OnlineDPOConfig(beta=[0.1, -1.0])


def test_sft_dataset_text_field(llama_dir, tmp_path, tiny_tokenizer):
    tok = str(tiny_tokenizer(vocab_size=VOCAB))
    records = [{"content": "w1 w2 w3"}, {"content": "w4 w5"}]
    trainer = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(
        output_dir=str(tmp_path), dataset_text_field="content", **BASE), train_dataset=records,
        processing_class=tok)
    same = calign.SFTTrainer(llama_dir, args=calign.SFTConfig(output_dir=str(tmp_path), **BASE),
                             train_dataset=[{"text": r["content"]} for r in records],
                             processing_class=tok)
    assert [e.completions for e in trainer.train_examples] == \
        [e.completions for e in same.train_examples]


# ---- a progress bar, and the package ---------------------------------------------------

def test_progress_bar_is_closed_before_the_traceback(llama_dir, tmp_path):
    script = f"""
import calign
trainer = calign.SFTTrainer({llama_dir!r}, args=calign.SFTConfig(
    output_dir={str(tmp_path)!r}, max_steps=5, per_device_train_batch_size=1,
    save_strategy="no"), train_dataset=[{{"input_ids": [1, 2, 3]}}] * 4)
step = trainer._micro_step
def failing(examples, normaliser, train):
    if trainer.state.global_step == 2:
        raise RuntimeError("boom")
    return step(examples, normaliser, train)
trainer._micro_step = failing
trainer.train()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1
    lines = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert "train:" in out.stderr and "2/5" in out.stderr  # the bar was drawn
    assert lines[-1] == "RuntimeError: boom", out.stderr[-2000:]


def test_import_calign_brings_wordalign():
    out = subprocess.run([sys.executable, "-c", "import calign; print(calign.wordalign.IBM1)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "IBM1" in out.stdout, out.stderr
