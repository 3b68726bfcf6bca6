"""The notebooks run top to bottom (with CALIGN_NOTEBOOK_QUICK=1: fewer steps),
and what they print, plot and write is checked: the numbers they print are
recomputed from the models they saved, the metrics they logged moved the way
training moves them, their figures are there and their files were written.
A notebook that silently trained nothing, printed stale numbers or saved
nothing fails here.

The quick settings train too little for held-out exact match to rise
reliably (the full settings' numbers are in the README), so the checks on
learning are on the logged training metrics."""

import ast
import base64
import json
import math
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

import calign
from calign.demo import run as demo
from calign.testing import assert_improves

FOLDER = os.path.join(os.path.dirname(__file__), "..", "notebooks")
# the notebooks' settings in quick mode (notebooks/make_notebooks.py)
SFT_STEPS, STAGE_STEPS, ROUNDS, ROUND_STEPS = 100, 40, 2, 10
PERCENT = r"(\d+\.\d)%"


def execute(name, tmp_path, monkeypatch):
    """Runs notebook `name` in a kernel whose working folder is tmp_path;
    returns the executed notebook."""
    monkeypatch.setenv("CALIGN_NOTEBOOK_QUICK", "1")
    notebook = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    return notebook


def printed(notebook):
    """Everything the notebook printed, in order."""
    return "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def figures(notebook):
    """The text of each figure shown ("<Figure size 1000x300 with 2 Axes>"),
    after checking that it came with a PNG image."""
    shown = []
    for cell in notebook.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "display_data" and "image/png" in o.data:
                png = base64.b64decode(o.data["image/png"])
                assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000  # not an empty canvas
                shown.append(o.data["text/plain"])
    return shown


def results(notebook):
    """The text of each cell's value (execute_result)."""
    return [o.data["text/plain"] for cell in notebook.cells if cell.cell_type == "code"
            for o in cell.outputs if o.output_type == "execute_result"]


def find(pattern, text):
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not printed in:\n{text}"
    return found.groups()


def logged(path):
    """The rows a trainer wrote to metrics.jsonl, training rows (with a loss) only."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row for row in rows if "loss" in row]


def assert_trained(path, steps, logging_steps=10):
    """metrics.jsonl in `path` logged every logging_steps up to `steps`, all finite."""
    rows = logged(os.path.join(path, "metrics.jsonl"))
    assert [row["step"] for row in rows] == list(range(logging_steps, steps + 1, logging_steps))
    assert all(math.isfinite(row["loss"]) for row in rows)
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    return calign.Tokenizer.from_pretrained(f"{demo.ASSETS}/base")


@pytest.fixture(scope="module")
def heldout():
    return demo.read_jsonl(f"{demo.ASSETS}/heldout.jsonl")[:200]  # the notebooks' 200


def test_quickstart_dpo(tmp_path, monkeypatch, tokenizer, heldout):
    notebook = execute("01_quickstart_dpo.ipynb", tmp_path, monkeypatch)
    text, out = printed(notebook), tmp_path / "notebook_out"
    base = calign.Model.from_pretrained(f"{demo.ASSETS}/base")
    parameters, base_accuracy = find(rf"^base model: (\d+) parameters, held-out exact match "
                                     rf"{PERCENT}$", text)
    assert int(parameters) == base.num_parameters()
    assert f"{base_accuracy}%" == f"{demo.held_out_accuracy(base, tokenizer, heldout):.1%}"
    find(rf"^after SFT: {PERCENT}$", text)

    # the saved model is the one whose exact match and answers were printed after DPO
    final = calign.Model.from_pretrained(str(out / "final"))
    (after_dpo,) = find(rf"^after DPO: {PERCENT}$", text)
    assert f"{after_dpo}%" == f"{demo.held_out_accuracy(final, tokenizer, heldout):.1%}"
    answers = re.findall(r"^(\d+)\+(\d+)=(.*?)  \(right: (\d+) \)$", text, re.MULTILINE)
    assert len(answers) == 6  # three prompts after SFT, the same three after DPO
    assert all(int(a) + int(b) == int(right) for a, b, _, right in answers)
    prompts = [f"{a}+{b}=" for a, b, _, _ in answers[3:]]
    generated = final.generate([tokenizer.encode(p) for p in prompts], max_new_tokens=4,
                               eos_token_id=tokenizer.eos_token_id)
    assert [tokenizer.decode(g, skip_special_tokens=True) for g in generated] == \
        [answer for _, _, answer, _ in answers[3:]]
    assert (final.params != base.params).any()

    # training moved its metrics: the SFT loss fell, DPO's margins and accuracies rose
    sft = assert_trained(out / "sft", SFT_STEPS)
    assert_improves(sft, "loss", direction="decrease", window=3)
    dpo = assert_trained(out / "dpo", STAGE_STEPS)
    assert_improves(dpo, "rewards/margins", window=2)
    assert_improves(dpo, "rewards/accuracies", window=2)

    assert figures(notebook) == ["<Figure size 1000x300 with 2 Axes>"]  # rewards, margins
    files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert results(notebook)[-1] == repr(files)
    assert sorted(os.listdir(out / "final")) == files


def test_kto_and_reward_model(tmp_path, monkeypatch, tokenizer):
    notebook = execute("02_kto_and_reward_model.ipynb", tmp_path, monkeypatch)
    text, out = printed(notebook), tmp_path / "notebook_out"

    rm = assert_trained(out / "rm", STAGE_STEPS)
    assert_improves(rm, "loss", direction="decrease", window=2)
    (accuracy,) = find(r"^last logged accuracy: ([\d.]+)$", text)
    assert float(accuracy) == rm[-1]["accuracy"]
    # the rewards printed are the saved reward model's
    scored = re.findall(r"^(\d+\+\d+=)(\d+) +reward ([+-]\d+\.\d{3})$", text, re.MULTILINE)
    assert len(scored) == 4
    reward_model = calign.RewardModel.from_pretrained(str(out / "reward_model"))
    rewards = reward_model.score([p + a for p, a, _ in scored], tokenizer=tokenizer)
    assert [f"{r:+.3f}" for r in rewards] == [shown for _, _, shown in scored]

    assert_improves(assert_trained(out / "sft2", SFT_STEPS), "loss", direction="decrease",
                    window=3)
    kto = assert_trained(out / "kto", STAGE_STEPS)
    assert_improves(kto, "rewards/margins", window=2)
    assert_improves(kto, "loss", direction="decrease", window=2)
    (kto_accuracy,) = find(rf"^SFT then KTO: {PERCENT}$", text)
    assert 0.0 <= float(kto_accuracy) <= 100.0
    summary = ast.literal_eval(find(r"^(\{.*\})$", text)[0])
    last = kto[-1]
    assert summary == {k: round(v, 3) for k, v in last.items() if "/" in k or k == "kl"}
    assert "rewards/margins" in summary


METHODS = {"off-policy DPO": "off-policy_DPO", "on-policy DPO": "on-policy_DPO", "ScPO": "ScPO",
           "DivPO": "DivPO"}


def test_self_improving(tmp_path, monkeypatch):
    notebook = execute("03_self_improving.ipynb", tmp_path, monkeypatch)
    text, out = printed(notebook), tmp_path / "notebook_out"
    find(rf"^after SFT: {PERCENT} held-out exact match$", text)
    assert_trained(out / "sft", SFT_STEPS)
    bundled = len(demo.read_jsonl(f"{demo.ASSETS}/preferences.jsonl"))
    for name, folder in METHODS.items():
        for round_ in range(1, ROUNDS + 1):
            pairs, _ = find(rf"^{re.escape(name)}, round {round_}: (\d+) pairs, {PERCENT} "
                            r"held-out exact match", text)
            if name == "off-policy DPO":
                assert int(pairs) == bundled
            else:
                assert int(pairs) >= 1
            rows = assert_trained(out / folder / f"iteration{round_}", ROUND_STEPS)
            if round_ == 1:  # trained on its pairs from the SFT model: their margin opened
                assert rows[-1]["rewards/margins"] > 0, (name, rows[-1])
    assert len(re.findall(r"^ScPO, round \d: .*\(most voted answer right in \d+% of the "
                          r"pairs\)$", text, re.MULTILINE)) == ROUNDS
    for round_ in range(1, ROUNDS + 1):
        find(rf"^online DPO, round {round_}: {PERCENT} held-out exact match$", text)
        assert_trained(out / f"online{round_}", ROUND_STEPS)
    assert figures(notebook) == ["<Figure size 700x350 with 1 Axes>"]  # the curves per method


ONLINE_STEPS, RM_STEPS, PPO_STEPS = 20, 40, 10  # notebook 04's quick settings


def test_online_rl(tmp_path, monkeypatch, tokenizer, heldout):
    notebook = execute("04_online_rl.ipynb", tmp_path, monkeypatch)
    text, out = printed(notebook), tmp_path / "notebook_out"
    # each printed exact match is the one of the model the notebook saved
    for name, folder in (("SFT", "sft_model"), ("GRPO", "grpo_final"), ("RLOO", "rloo_final"),
                         ("PPO", "ppo_final"), ("DPO", "dpo_final")):
        (shown,) = find(rf"^after {name}: {PERCENT}$", text)
        model = calign.Model.from_pretrained(str(out / folder))
        assert f"{shown}%" == f"{demo.held_out_accuracy(model, tokenizer, heldout):.1%}", name
    sft = calign.Model.from_pretrained(str(out / "sft_model"))
    for folder in ("grpo_final", "rloo_final", "ppo_final", "dpo_final"):
        assert (calign.Model.from_pretrained(str(out / folder)).params != sft.params).any()
    assert (out / "ppo_final" / "value_model" / "model.safetensors").is_file()

    for folder in ("grpo", "rloo"):  # every step sampled, scored and trained
        rows = assert_trained(out / folder, ONLINE_STEPS)
        assert all(0.0 <= row["reward"] <= 1.0 and math.isfinite(row["entropy"]) for row in rows)
        assert all(row["completions/max_length"] <= 5 for row in rows)
    assert_improves(assert_trained(out / "rm", RM_STEPS), "loss", direction="decrease", window=2)
    ppo = assert_trained(out / "ppo", PPO_STEPS, logging_steps=5)
    assert all(math.isfinite(row["objective/scores"]) and row["objective/kl"] >= -1e-3
               for row in ppo)
    # the reward model's ranking printed is the saved model's on the held-out pairs
    (ranked,) = find(rf"^reward model: {PERCENT} of (?:\d+) held-out pairs ranked right$", text)
    pairs = demo.read_jsonl(f"{demo.ASSETS}/preferences.jsonl")[3000:]
    reward_model = calign.RewardModel.from_pretrained(str(out / "reward_model"))

    def scored(key):
        return reward_model.score(
            [tokenizer.encode(r[key]) + [tokenizer.eos_token_id] for r in pairs],
            prompts=[tokenizer.encode(r["prompt"]) for r in pairs])

    assert f"{ranked}%" == f"{(scored('chosen') > scored('rejected')).mean():.1%}"
    assert figures(notebook) == ["<Figure size 1300x350 with 3 Axes>"]


def test_safety(tmp_path, monkeypatch):
    from calign.demo import forbidden, safety_experiment
    from calign.safety import per_position_kl

    notebook = execute("05_safety.ipynb", tmp_path, monkeypatch)
    text, out = printed(notebook), tmp_path / "notebook_out"
    tokenizer, world = forbidden.tokenizer(), forbidden.make_world(seed=0)
    names = ["base", "aligned"] + list(safety_experiment.ARMS)
    models = {name: calign.Model.from_pretrained(
        str(out / "models" / safety_experiment.folder_of(name))) for name in names}
    # each stage trained from the one before it, and logged every 10 steps
    steps = {name: steps for name, (steps, _) in safety_experiment.QUICK.items()}
    assert_improves(assert_trained(out / "pretraining", steps["pretraining"]), "loss",
                    direction="decrease", window=3)
    assert_trained(out / "alignment", steps["alignment"])
    for arm in safety_experiment.ARMS:
        assert_trained(out / safety_experiment.folder_of(arm), steps["fine_tuning"])
    assert all(models[a].params.size != models[b].params.size or  # backtracking's vocab grew
               (models[a].params != models[b].params).any() for a, b in zip(names, names[1:]))

    # the attack table printed is the saved models' (held-out prompts, k = 0, 1, 3, 5, 10)
    (header,) = find(r"^(k +0 +1 +3 +5 +10)$", text)
    for name in names:
        (shown,) = find(rf"^{re.escape(name)} +((?:\d+% *)+)$", text)
        rates = safety_experiment.attack(models[name], world,
                                         safety_experiment.tokenizer_of(name))
        assert shown.split() == [f"{rate:.0%}" for rate in rates], name
    # and so is the per-token KL between the aligned and the base model
    (kl_line,) = find(r"^KL\(aligned \|\| base\) per token of the harmful answers:\n(.*)$", text)
    kl, _ = per_position_kl(models["aligned"], models["base"], tokenizer, world.eval_prompts,
                            world.eval_harmful)
    assert kl_line.split() == [f"{value:.2f}" for value in kl]
    assert len(re.findall(r"^  k=\d+ +\d+\*\d+=\[[a-j]*\]", text, re.MULTILINE)) == \
        2 * len(names)
    assert figures(notebook) == ["<Figure size 1100x350 with 2 Axes>"]
