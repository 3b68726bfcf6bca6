"""calign's DPOTrainer and TRL's DPOTrainer fed the same data log the same metrics.

Both get the same text records and a word-level tokenizer (one token a word),
the whole dataset is one batch (so the data order cannot differ), dropout is
off on both sides (TRL's default), TRL runs in float32 (its DPOConfig turns
bf16 autocast on by default, even on CPU: that alone moves its log-probs by
~3e-4 relative), and three steps are taken."""


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


METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
           "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen",
           "logits/rejected", "grad_norm", "learning_rate"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_metrics_match_trl(checkpoint, tmp_path, loss_type):
    import datasets
    import trl

    data = records(4)
    settings = dict(learning_rate=1e-2, per_device_train_batch_size=4, max_steps=3,
                    logging_steps=1, beta=0.3, loss_type=loss_type, max_length=64,
                    save_steps=0, max_grad_norm=1.0)
    trl_trainer = trl.DPOTrainer(
        model=transformers.AutoModelForCausalLM.from_pretrained(checkpoint),
        args=trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                           save_strategy="no", seed=0, bf16=False, **settings),
        train_dataset=datasets.Dataset.from_list(data),
        processing_class=transformers.AutoTokenizer.from_pretrained(checkpoint))
    trl_trainer.train()
    theirs = [h for h in trl_trainer.state.log_history if "loss" in h]

    ours_trainer = calign.DPOTrainer(str(checkpoint), args=calign.DPOConfig(
        output_dir=str(tmp_path / "calign"), disable_tqdm=True, **settings),
        train_dataset=data)
    ours_trainer.train()
    ours = [h for h in ours_trainer.state.log_history if "loss" in h]
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
