"""Two rounds of on-policy DPO on the demo task, against the off-policy DPO of
`calign demo` (run: python notebooks/on_policy_rounds.py, about a minute).

The scorer is a program (is the sum right?); each round samples 4 answers per
training prompt from the current model, pairs a right one with a wrong one,
and takes 200 DPO steps. Measured on 500 held-out sums: SFT 40.2%, round 1
56.4%, round 2 62.2% (off-policy DPO, 400 steps: 60.8%).
"""

import calign
from calign import selfimprove
from calign.demo import run as demo

ASSETS = demo.ASSETS


def correct(prompt, completion):
    a, b = prompt[:-1].split("+")
    return float(completion.strip() == str(int(a) + int(b)))


def main(rounds=2, steps=200):
    tokenizer = calign.Tokenizer.from_pretrained(f"{ASSETS}/base")
    heldout = demo.read_jsonl(f"{ASSETS}/heldout.jsonl")
    prompts = [r["prompt"] for r in demo.read_jsonl(f"{ASSETS}/preferences.jsonl")]
    sft = calign.SFTTrainer(f"{ASSETS}/base", args=calign.SFTConfig(
        output_dir="rounds_out/sft", max_steps=1500, save_steps=0, disable_tqdm=True,
        **demo.SFT_SETTINGS), train_dataset=f"{ASSETS}/sft.jsonl", processing_class=tokenizer)
    sft.train()
    model = sft.model
    print(f"SFT: {demo.held_out_accuracy(model, tokenizer, heldout):.1%}")
    for round_index in range(rounds):
        records, summary = selfimprove.on_policy_pairs(model, prompts, correct, n=4,
                                                       tokenizer=tokenizer, max_new_tokens=4,
                                                       seed=round_index)
        dpo = calign.DPOTrainer(model, args=calign.DPOConfig(
            output_dir=f"rounds_out/round{round_index + 1}", learning_rate=3e-4, beta=2.0,
            max_steps=steps, per_device_train_batch_size=32, lr_scheduler_type="cosine",
            warmup_steps=10, save_steps=0, disable_tqdm=True),
            train_dataset=records, processing_class=tokenizer)
        dpo.train()
        model = dpo.model
        print(f"round {round_index + 1} ({summary['pairs']} pairs): "
              f"{demo.held_out_accuracy(model, tokenizer, heldout):.1%}")


if __name__ == "__main__":
    main()
