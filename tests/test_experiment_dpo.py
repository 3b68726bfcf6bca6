"""An experiment written as a test: does DPO teach a tiny model a rule it can
apply to prompts it never saw?

The task: a prompt is 2 to 5 words out of w0..w29; the right answer is the
successor of its last word (w7 -> w8, w29 -> w0). Each training pair prefers
the right answer to a wrong word. After 100 DPO steps the held-out prompts
(other word sequences) are answered right far more often than before, and
the implicit reward prefers their right answers. The metrics land in the
report: `pytest -k experiment --calign-report r.json`. With --calign-seed S
the data, the model and the data order all change with S.
"""

import numpy as np
import pytest

import calign
from calign.testing import assert_improves

WORDS = 30


def successor(word):
    return f"w{(int(word[1:]) + 1) % WORDS}"


def successor_pairs(n, seed):
    """n preference pairs: chosen the successor of the prompt's last word,
    rejected another word."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        prompt = [f"w{i}" for i in rng.integers(0, WORDS, rng.integers(2, 6))]
        right = successor(prompt[-1])
        wrong = right
        while wrong == right:
            wrong = f"w{rng.integers(0, WORDS)}"
        records.append({"prompt": " ".join(prompt), "chosen": " " + right,
                        "rejected": " " + wrong})
    return records


def exact_match(model, tokenizer, records):
    """The share of prompts whose greedy next word is the chosen answer."""
    outputs = model.generate([tokenizer.encode(r["prompt"]) for r in records], max_new_tokens=1)
    return float(np.mean([tokenizer.decode(out).strip() == r["chosen"].strip()
                          for out, r in zip(outputs, records, strict=True)]))


@pytest.mark.experiment
def test_dpo_learns_the_successor_rule(tiny_model, tiny_tokenizer, calign_seed, calign_threads,
                                       record_metric, tmp_path):
    calign_threads(1)  # a model this small gains nothing from more; one thread is fastest here
    tokenizer_dir = tiny_tokenizer(vocab_size=WORDS + 2)        # <pad>, <eos>, w0 ... w29
    tokenizer = calign.Tokenizer.from_pretrained(str(tokenizer_dir))
    model = calign.Model.from_pretrained(tiny_model("llama", tokenizer=tokenizer_dir))
    train, heldout = successor_pairs(400, calign_seed), successor_pairs(200, calign_seed + 1)
    before = exact_match(model, tokenizer, heldout)

    trainer = calign.DPOTrainer(model, args=calign.DPOConfig(
        output_dir=str(tmp_path), learning_rate=2e-2, beta=0.2, max_steps=100,
        per_device_train_batch_size=16, logging_steps=10, eval_strategy="steps", eval_steps=10,
        save_steps=0, seed=calign_seed, disable_tqdm=True),
        train_dataset=train, eval_dataset=heldout, processing_class=tokenizer)
    trainer.train()
    after = exact_match(trainer.model, tokenizer, heldout)
    history = trainer.state.log_history
    accuracies = [h["eval_rewards/accuracies"] for h in history if "eval_rewards/accuracies" in h]

    record_metric("heldout_exact_match/before", before)
    record_metric("heldout_exact_match/after", after)
    record_metric("eval_rewards/accuracies", accuracies)
    record_metric("train_loss", [h["loss"] for h in history if "loss" in h])

    # the training pairs: their margin grows
    assert_improves(history, "rewards/margins", window=3, min_improvement=0.5)
    # the held-out pairs: the implicit reward prefers the right answer more and more often,
    # well above chance (0.5) at the end
    assert_improves(history, "eval_rewards/accuracies", window=3, min_improvement=0.05)
    assert accuracies[-1] >= 0.75, accuracies
    # and the model says the right answer to unseen prompts far more often (1 in 30 by chance)
    assert after >= before + 0.15 and after >= 0.2, (before, after)
