"""The bundled demo: its assets rebuild identically from the seed, and
`calign demo --quick` runs end to end for every method."""

import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from calign.demo import build

SHIPPED = os.path.join(os.path.dirname(build.__file__), "assets")


def test_assets_rebuild_identically(tmp_path):
    build.build(str(tmp_path))
    for name in ("sft.jsonl", "preferences.jsonl", "heldout.jsonl", "base/config.json",
                 "base/tokenizer.json", "base/tokenizer_config.json"):
        assert filecmp.cmp(tmp_path / name, os.path.join(SHIPPED, name), shallow=False), name
    fresh = safetensors.numpy.load_file(str(tmp_path / "base" / "model.safetensors"))
    shipped = safetensors.numpy.load_file(os.path.join(SHIPPED, "base", "model.safetensors"))
    assert fresh.keys() == shipped.keys()
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], shipped[key])
    total = sum(os.path.getsize(os.path.join(root, f))
                for root, _, files in os.walk(SHIPPED) for f in files)
    assert total < 20 * 2**20


def test_the_task_has_the_planned_mistake():
    with open(os.path.join(SHIPPED, "sft.jsonl")) as f:
        records = [json.loads(line) for line in f]
    carry = [r for r in records if build.has_carry(*map(int, r["prompt"][:-1].split("+")))]
    wrong = sum(int(r["completion"]) != eval(r["prompt"][:-1]) for r in carry)
    assert 0.65 < wrong / len(carry) < 0.75  # the carry is forgotten ~70% of the time
    with open(os.path.join(SHIPPED, "preferences.jsonl")) as f:
        pairs = [json.loads(line) for line in f]
    assert all(p["chosen"] == str(eval(p["prompt"][:-1])) != p["rejected"] for p in pairs)


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo", "simpo", "grpo", "rloo"])
def test_demo_quick_runs_end_to_end(tmp_path, method):
    out = subprocess.run([sys.executable, "-m", "calign", "demo", "--quick", "--method", method,
                          "--output_dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out exact match of the base model" in out.stdout
    assert f"after {method.upper()}" in out.stdout
    with open(tmp_path / "training.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    stages = {json.loads(line)["stage"] for line in open(tmp_path / "metrics.jsonl")}
    assert stages == {"sft", method}
    assert (tmp_path / "final" / "model.safetensors").is_file()
    if method == "dpo":
        import transformers

        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "final")


def test_demo_refuses_a_bad_seed(tmp_path):
    from calign.demo.run import run

    with pytest.raises(ValueError, match="seed"):
        run(str(tmp_path), seed=-1)
    out = subprocess.run([sys.executable, "-m", "calign", "demo", "--seed", "1.5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--seed" in out.stderr
