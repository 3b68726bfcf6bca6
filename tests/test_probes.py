"""The learning-dynamics probe (calign.trainers.probes): its numbers in
metrics.jsonl equal sequence log-probs summed from Model.token_logprobs at
the logged steps (the checkpoints written there), and its bad input."""

import json
import os

import numpy as np
import pytest

import calign
from calign.data.preference import tokenize_record
from calign.trainers.probes import LearningDynamicsProbe, plot_learning_dynamics


@pytest.fixture(scope="module")
def folder(tiny_model):
    return str(tiny_model("llama", seed=3, vocab_size=40, tokenizer=True,
                          max_position_embeddings=64))


def probe_records(records):
    return [dict(r, rephrases={"chosen_rephrase": r["chosen"] + " w7",
                               "others": ["w3 w4", "w5"]}) for r in records[:5]]


def sequence_logp(model, prompt, response):
    ids = np.array([prompt + response])
    labels = np.array([[-100] * len(prompt) + response])
    return float(model.token_logprobs(ids, labels).sum(dtype=np.float64))


def expected(model, tokenizer, records, max_new_tokens):
    out = {"chosen": [], "rejected": [], "greedy": [], "chosen_rephrase": [], "others": []}
    same = []
    for index, record in enumerate(records):
        prompt, (chosen, rejected) = tokenize_record(record, index, tokenizer)
        greedy = model.generate([prompt], max_new_tokens=max_new_tokens,
                                eos_token_id=tokenizer.eos_token_id)[0]
        out["chosen"].append(sequence_logp(model, prompt, chosen))
        out["rejected"].append(sequence_logp(model, prompt, rejected))
        out["greedy"].append(sequence_logp(model, prompt, greedy))
        same.append(greedy == chosen)
        for name, texts in record["rephrases"].items():
            texts = [texts] if isinstance(texts, str) else texts
            out[name].append(np.mean([sequence_logp(
                model, prompt, tokenize_record(dict(record, chosen=t, rejected=t), index,
                                               tokenizer)[1][0]) for t in texts]))
    result = {f"probe/logps_{k}": float(np.mean(v)) for k, v in out.items()}
    result["probe/greedy_is_chosen"] = float(np.mean(same))
    return result


def test_probe_logs_match_token_logprobs(folder, preference_records, tmp_path):
    tokenizer = calign.Tokenizer.from_pretrained(folder)
    records = probe_records(preference_records(8, seed=1))
    out = str(tmp_path / "run")
    trainer = calign.DPOTrainer(folder, args=calign.DPOConfig(
        output_dir=out, max_steps=4, per_device_train_batch_size=4, learning_rate=5e-2,
        save_steps=2, logging_steps=1, disable_tqdm=True, beta=0.5),
        train_dataset=preference_records(16, seed=2), processing_class=tokenizer)
    trainer.add_callback(LearningDynamicsProbe(records, every=2, max_new_tokens=6,
                                               batch_size=3))
    base = calign.Model.from_pretrained(folder)
    trainer.train()
    with open(os.path.join(out, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    probes = {h["step"]: h for h in logged if "probe/logps_chosen" in h}
    assert sorted(probes) == [0, 2, 4]
    for step, model in ((0, base), (2, calign.Model.from_pretrained(
            os.path.join(out, "checkpoint-2"))), (4, trainer.model)):
        want = expected(model, tokenizer, records, 6)
        for name, value in want.items():
            assert probes[step][name] == pytest.approx(value, abs=2e-4), (step, name)
    # the run moved the numbers (the probe is not logging a frozen model)
    assert probes[4]["probe/logps_chosen"] != pytest.approx(probes[0]["probe/logps_chosen"],
                                                            abs=1e-3)
    plot_learning_dynamics(os.path.join(out, "metrics.jsonl"), str(tmp_path / "d.png"))
    assert os.path.getsize(tmp_path / "d.png") > 0


def test_probe_bad_input(preference_records):
    records = preference_records(3, seed=1)
    with pytest.raises(ValueError, match="every"):
        LearningDynamicsProbe(records, every=0)
    with pytest.raises(ValueError, match="probe_set is empty"):
        LearningDynamicsProbe([])
    with pytest.raises(ValueError, match="rephrases"):
        LearningDynamicsProbe([dict(records[0], rephrases={"a": "w1"}), records[1]])
    with pytest.raises(ValueError, match="rephrases"):
        LearningDynamicsProbe([dict(records[0], rephrases={"a": 3})])
    with pytest.raises(ValueError, match="no probe/logps_"):
        plot_learning_dynamics([{"step": 1, "loss": 0.5}], "unused.png")
