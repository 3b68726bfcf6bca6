"""The `calign` command line, end to end in subprocesses."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import transformers

import calign


def run(*args):
    return subprocess.run([sys.executable, "-m", "calign", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model, tiny_tokenizer, preference_records):
    path = tmp_path_factory.mktemp("cli")
    shutil.copytree(tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=32), hidden_size=24,
                               num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=4, head_dim=None, intermediate_size=32,
                               attention_bias=False, mlp_bias=False, rope_theta=10000.0),
                    path / "model")
    with open(path / "prefs.jsonl", "w") as f:
        for record in preference_records(8, prompt_length=(3, 3), completion_length=(2, 2)):
            f.write(json.dumps(record) + "\n")
    (path / "run.yaml").write_text("learning_rate: 0.01\nper_device_train_batch_size: 4\n"
                                   "max_steps: 3\nbeta: 0.5\nsave_steps: 0\nlogging_steps: 1\n"
                                   "disable_tqdm: true\n")
    return path


def test_info_prints_build_and_self_check():
    out = run("info")
    assert out.returncode == 0, out.stderr
    assert "BLAS kernel" in out.stdout and "OK" in out.stdout


def test_train_dpo_from_yaml_with_flag_override(workspace):
    out_dir = workspace / "out"
    out = run("train", "dpo", "--model", workspace / "model", "--dataset",
              workspace / "prefs.jsonl", "--config", workspace / "run.yaml", "--max_steps", "2",
              "--output_dir", out_dir)
    assert out.returncode == 0, out.stderr
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the flag overrode the file's max_steps
    assert json.loads(lines[0])["loss"] == pytest.approx(np.log(2), abs=1e-6)
    assert (out_dir / "final" / "model.safetensors").is_file()
    transformers.AutoModelForCausalLM.from_pretrained(out_dir / "final")

    evaluated = run("eval", "--model", out_dir / "final", "--ref_model", workspace / "model",
                    "--dataset", workspace / "prefs.jsonl", "--beta", "0.5")
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["pairs"] == 8 and result["accuracy"] > 0.5  # it learned the training pairs

    generated = run("generate", "--model", out_dir / "final", "--prompt", "w1 w2",
                    "--max_new_tokens", "3")
    assert generated.returncode == 0, generated.stderr
    assert 1 <= len(generated.stdout.split()) <= 3


@pytest.mark.parametrize("args,message", [
    (["train", "dpo", "--model", "MODEL", "--dataset", "DATA", "--betta", "1"],
     "unknown option --betta"),
    (["train", "dpo", "--model", "MODEL", "--dataset", "DATA", "--beta", "-1"], "beta must be"),
    (["train", "dpo", "--model", "MODEL", "--dataset", "DATA", "--beta", "abc"],
     "--beta takes a number"),
    (["train", "dpo", "--model", "/does/not/exist", "--dataset", "DATA"], "does not exist"),
    (["train", "dpo", "--model", "MODEL", "--dataset", "DATA", "--config", "/nope.yaml"],
     "config file '/nope.yaml' does not exist"),
    (["train", "xyz", "--model", "MODEL", "--dataset", "DATA"], "invalid choice"),
    (["generate", "--model", "MODEL"], "required"),
    (["eval", "--model", "MODEL", "--ref_model", "MODEL", "--dataset", "DATA", "--beta", "0"],
     "--beta must be a finite number > 0"),
    (["eval", "--model", "MODEL", "--ref_model", "MODEL", "--dataset", "DATA", "--batch_size",
      "0"], "--batch_size must be an integer >= 1"),
    (["eval", "--model", "MODEL", "--ref_model", "MODEL", "--dataset", "DATA", "--max_length",
      "1"], "max_length must be None or an integer >= 2"),
])
def test_user_errors_exit_2_with_one_line(workspace, args, message):
    args = [str(workspace / "model") if a == "MODEL" else
            str(workspace / "prefs.jsonl") if a == "DATA" else a for a in args]
    out = run(*args)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_bad_record_is_a_user_error(workspace, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "w1", "chosen": "w2"}) + "\n")
    out = run("train", "dpo", "--model", workspace / "model", "--dataset", bad, "--output_dir",
              tmp_path / "o")
    assert out.returncode == 2 and "record 0 lacks the field 'rejected'" in out.stderr


def test_train_from_a_trl_recipe(workspace, tmp_path):
    """A YAML written for `trl dpo`: model_name_or_path and dataset_name stand for
    --model and --dataset, the script's model-loading settings are named in one
    warning, TRL's own fields (report_to, save_strategy, bf16 ...) are taken."""
    recipe = tmp_path / "trl_recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {workspace / 'model'}\n"
        f"dataset_name: {workspace / 'prefs.jsonl'}\n"
        "dataset_train_split: train\nattn_implementation: sdpa\ntorch_dtype: bfloat16\n"
        "use_peft: false\nlora_r: 16\n"
        "learning_rate: 5.0e-3\nbeta: 0.5\nper_device_train_batch_size: 4\nmax_steps: 2\n"
        "logging_steps: 1\nreport_to: none\nsave_strategy: 'no'\nbf16: null\n"
        "gradient_checkpointing: true\ndataloader_num_workers: 4\nuse_cpu: true\n"
        f"output_dir: {tmp_path / 'out'}\ndisable_tqdm: true\n")
    out = run("train", "dpo", "--config", recipe)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, out.stderr
    assert "dataset_train_split, torch_dtype, attn_implementation" in warnings[0]
    assert "lora_r" not in warnings[0]  # read, and without use_peft changes nothing, as in TRL
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not [n for n in (tmp_path / "out").iterdir() if n.name.startswith("checkpoint")]
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()

    # use_peft: a LoRA adapter with the recipe's settings and TRL's ModelConfig
    # defaults for the rest (lora_alpha 32, lora_dropout 0.05, which TRL's DPO
    # trainer switches off as calign never applies it)
    recipe.write_text(recipe.read_text().replace("use_peft: false", "use_peft: true").replace(
        "lora_r: 16", "lora_r: 4\nlora_target_modules: all-linear"))
    lora = run("train", "dpo", "--config", recipe, "--output_dir", tmp_path / "lora")
    assert lora.returncode == 0, lora.stderr
    saved = json.loads((tmp_path / "lora" / "final" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["lora_dropout"]) == (4, 32, 0.05)
    assert not (tmp_path / "lora" / "final" / "model.safetensors").exists()
    with_parameters = tmp_path / "parameters.yaml"
    with_parameters.write_text(recipe.read_text() + "lora_target_parameters: [mlp.experts]\n")
    refused = run("train", "dpo", "--config", with_parameters)
    assert refused.returncode == 2 and "lora_target_parameters must be null" in refused.stderr
    sft_recipe = tmp_path / "sft.yaml"  # TRL's SFTTrainer keeps LoRA's dropout: refused
    sft_recipe.write_text(recipe.read_text().replace("beta: 0.5\n", ""))
    sft = run("train", "sft", "--config", sft_recipe)
    assert sft.returncode == 2 and "lora_dropout must be 0 for SFTTrainer" in sft.stderr
    hub = tmp_path / "hub.yaml"
    hub.write_text("model_name_or_path: Qwen/Qwen2-0.5B\ndataset_name: trl-lib/ultrafeedback\n")
    missing = run("train", "dpo", "--config", hub, "--model", workspace / "model")
    assert missing.returncode == 2
    assert "dataset_name in" in missing.stderr and "does not exist" in missing.stderr


def test_train_with_bf16_runs_bfloat16_products(workspace, tmp_path):
    """--bf16 true (TRL's field) trains with bfloat16 products: the same two
    steps in float32 end at other weights."""
    finals, losses = {}, {}
    for flag in ("true", "false"):
        out = run("train", "dpo", "--model", workspace / "model", "--dataset",
                  workspace / "prefs.jsonl", "--max_steps", "2", "--learning_rate", "0.05",
                  "--logging_steps", "1", "--bf16", flag, "--output_dir", tmp_path / flag)
        assert out.returncode == 0, out.stderr
        lines = (tmp_path / flag / "metrics.jsonl").read_text().splitlines()
        losses[flag] = [json.loads(line)["loss"] for line in lines]
        assert losses[flag][0] == pytest.approx(np.log(2), abs=1e-6)  # policy = reference
        finals[flag] = calign.Model.from_pretrained(str(tmp_path / flag / "final")).params
    assert not np.array_equal(finals["true"], finals["false"])
    assert losses["true"][1] == pytest.approx(losses["false"][1], abs=0.02)


@pytest.mark.parametrize("flags,message", [
    (["--fp16", "true"], "fp16 must be False"),
    (["--bf16", "sometimes"], "bf16"),
    (["--report_to", "mlflow"], "report_to must be"),
    (["--push_to_hub", "true"], "push_to_hub must be False"),
])
def test_train_refusals_name_the_field(workspace, flags, message):
    out = run("train", "dpo", "--model", workspace / "model", "--dataset",
              workspace / "prefs.jsonl", *flags)
    assert out.returncode == 2 and message in out.stderr, out.stderr
