"""calign's DPOTrainer and TRL's DPOTrainer fed the same data log the same metrics.

Both get the same text records and a word-level tokenizer (one token a word),
the whole dataset is one batch (so the data order cannot differ), dropout is
off on both sides (TRL's default), and TRL runs in float32 (its DPOConfig
turns bf16 autocast on by default, even on CPU: that alone moves its log-probs
by ~3e-4 relative) for three steps at float32's tolerance; then both sides
run bf16=True for 20 steps, at the tolerance of their different roundings."""

import numpy as np
import pytest
import torch
import transformers

import calign
from calign import testing

@pytest.fixture(scope="module")
def checkpoint(tiny_model, tiny_tokenizer):
    return tiny_model("llama", tokenizer=tiny_tokenizer(vocab_size=47), hidden_size=32,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=None,
                      intermediate_size=48, initializer_range=0.1, attention_bias=False,
                      mlp_bias=False, rope_theta=10000.0)


def records(n, seed=0):
    return testing.preference_records(n, seed=seed, words=testing.word_list(45))


def trl_dpo_log(checkpoint, folder, data, settings, bf16):
    """TRL's DPOTrainer's logged rows (those with a loss) of a run on the CPU."""
    import datasets
    import trl

    trainer = trl.DPOTrainer(
        model=transformers.AutoModelForCausalLM.from_pretrained(checkpoint),
        args=trl.DPOConfig(output_dir=str(folder), report_to="none", use_cpu=True,
                           save_strategy="no", seed=0, bf16=bf16, **settings),
        train_dataset=datasets.Dataset.from_list(data),
        processing_class=transformers.AutoTokenizer.from_pretrained(checkpoint))
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


def calign_dpo_log(checkpoint, folder, data, settings, bf16=None):
    """calign's DPOTrainer's logged rows of the same run."""
    trainer = calign.DPOTrainer(str(checkpoint), args=calign.DPOConfig(
        output_dir=str(folder), disable_tqdm=True, bf16=bf16, **settings), train_dataset=data)
    assert trainer.model.bf16_products is trainer.ref_model.bf16_products is (bf16 is True)
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
           "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen",
           "logits/rejected", "grad_norm", "learning_rate"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_metrics_match_trl(checkpoint, tmp_path, loss_type):
    data = records(4)
    settings = dict(learning_rate=1e-2, per_device_train_batch_size=4, max_steps=3,
                    logging_steps=1, beta=0.3, loss_type=loss_type, max_length=64,
                    save_steps=0, max_grad_norm=1.0)
    theirs = trl_dpo_log(checkpoint, tmp_path / "trl", data, settings, bf16=False)
    ours = calign_dpo_log(checkpoint, tmp_path / "calign", data, settings)
    assert len(ours) == len(theirs) == 3
    for step, (mine, trl_row) in enumerate(zip(ours, theirs, strict=True)):
        for name in METRICS:
            assert mine[name] == pytest.approx(trl_row[name], rel=1e-4, abs=1e-5), (step, name)


def test_engine_matches_exact_rows(checkpoint):
    """The log-probs calign trains on are those of each row run alone in transformers."""
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint)
    ours = calign.Model.from_pretrained(str(checkpoint))
    tokenizer = calign.Tokenizer.from_pretrained(str(checkpoint))
    for record in records(4):
        prompt = tokenizer.encode(record["prompt"])
        for key in ("chosen", "rejected"):
            completion = tokenizer.encode(record["prompt"] + record[key] + "<eos>")[len(prompt):]
            ids = torch.tensor([prompt + completion])
            logp = model(ids).logits[0].log_softmax(-1)[len(prompt) - 1:-1]
            exact = logp.gather(1, torch.tensor(completion)[:, None]).sum().item()
            batch = calign.pack_shared_prefix([(prompt, [completion])])
            assert ours.packed_token_logprobs(batch).sum() == pytest.approx(exact, abs=1e-5)


def test_dpo_with_bf16_tracks_trl_with_bf16(checkpoint, tmp_path):
    """bf16=True on both sides: TRL's autocast and calign's bfloat16 products.

    The two round differently: autocast rounds the operands of every product
    and also its output (and the ops on it) to bfloat16; calign rounds the
    operands only, as bfloat16 matrix units do, and keeps outputs float32.
    So the runs agree to the size of that rounding, not to float32's: each
    rounding is up to 2^-9 relative, and over 20 steps the log-prob sums
    differ by at most 1e-3 relative (measured 6e-4; TRL's own bf16 and
    float32 runs differ by 5e-4). The tolerance is rel 5e-3, abs 2e-3 (the
    mean logits are ~0.1 in size)."""
    data = records(8, seed=1)
    settings = dict(learning_rate=5e-3, per_device_train_batch_size=8, max_steps=20,
                    logging_steps=1, beta=0.3, max_length=64, save_steps=0, max_grad_norm=1.0)
    theirs = trl_dpo_log(checkpoint, tmp_path / "trl", data, settings, bf16=True)
    mixed = calign_dpo_log(checkpoint, tmp_path / "mixed", data, settings, bf16=True)
    plain = calign_dpo_log(checkpoint, tmp_path / "plain", data, settings, bf16=False)
    assert len(mixed) == len(theirs) == 20
    for step, (mine, trl_row) in enumerate(zip(mixed, theirs, strict=True)):
        for name in METRICS:
            assert mine[name] == pytest.approx(trl_row[name], rel=5e-3, abs=2e-3), (step, name)
    losses, trl_losses = (np.array([h["loss"] for h in rows]) for rows in (mixed, theirs))
    assert np.all(np.diff(losses) < 0) and np.all(np.diff(trl_losses) < 0)
    assert losses[-1] < 0.05 * losses[0]
    # the products were rounded: the float32 run's log-probs differ
    assert max(abs(a["logps/rejected"] - b["logps/rejected"])
               for a, b in zip(mixed, plain, strict=True)) > 1e-3
