"""Writes the notebooks from the cells below: `python notebooks/make_notebooks.py`.

Keeping their source here keeps them reviewable; the test suite executes the
.ipynb files with CALIGN_NOTEBOOK_QUICK=1 (fewer steps)."""

import os

import nbformat

SETUP = '''import os
import calign
from calign.demo import run as demo

# the test suite sets CALIGN_NOTEBOOK_QUICK=1 to run with fewer steps
QUICK = os.environ.get("CALIGN_NOTEBOOK_QUICK") == "1"
SFT_STEPS, STAGE_STEPS = (100, 40) if QUICK else (1500, 400)
assets = demo.ASSETS
tokenizer = calign.Tokenizer.from_pretrained(f"{assets}/base")
heldout = demo.read_jsonl(f"{assets}/heldout.jsonl")[:200]
calign.build_info()'''

QUICKSTART = [
    ("markdown", "# Quickstart: SFT, then DPO, from Python\n\nThe bundled task: sums of two "
                 "numbers below 100, written character by character. The SFT demonstrations "
                 "forget the carry 70% of the time; the preference pairs reject that mistake."),
    ("code", SETUP),
    ("code", '''model = calign.Model.from_pretrained(f"{assets}/base")
print("base model:", model.num_parameters(), "parameters,",
      f"held-out exact match {demo.held_out_accuracy(model, tokenizer, heldout):.1%}")'''),
    ("code", '''sft = calign.SFTTrainer(model, args=calign.SFTConfig(
    output_dir="notebook_out/sft", max_steps=SFT_STEPS, learning_rate=3e-3,
    per_device_train_batch_size=64, lr_scheduler_type="cosine", warmup_steps=30,
    save_steps=0, logging_steps=10, disable_tqdm=True),
    train_dataset=f"{assets}/sft.jsonl", processing_class=tokenizer)
sft.train()
print(f"after SFT: {demo.held_out_accuracy(sft.model, tokenizer, heldout):.1%}")'''),
    ("code", '''def show(model, prompts=("57+38=", "23+41=", "66+19=")):
    ids = [tokenizer.encode(p) for p in prompts]
    for p, out in zip(prompts, model.generate(ids, max_new_tokens=4,
                                              eos_token_id=tokenizer.eos_token_id)):
        print(p + tokenizer.decode(out, skip_special_tokens=True), " (right:", eval(p[:-1]), ")")

sft_params = sft.model.params.copy()   # keep the SFT model to compare later
show(sft.model)'''),
    ("code", '''dpo = calign.DPOTrainer(sft.model, args=calign.DPOConfig(
    output_dir="notebook_out/dpo", max_steps=STAGE_STEPS, learning_rate=3e-4, beta=2.0,
    per_device_train_batch_size=32, lr_scheduler_type="cosine", warmup_steps=10,
    save_steps=0, logging_steps=10, disable_tqdm=True),
    train_dataset=f"{assets}/preferences.jsonl", processing_class=tokenizer)
dpo.train()
print(f"after DPO: {demo.held_out_accuracy(dpo.model, tokenizer, heldout):.1%}")
show(dpo.model)'''),
    ("code", '''import matplotlib.pyplot as plt

logs = [h for h in dpo.state.log_history if "loss" in h]
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].plot([h["step"] for h in logs], [h["rewards/chosen"] for h in logs], label="chosen")
axes[0].plot([h["step"] for h in logs], [h["rewards/rejected"] for h in logs], label="rejected")
axes[0].set(title="implicit rewards", xlabel="step"); axes[0].legend()
axes[1].plot([h["step"] for h in logs], [h["rewards/margins"] for h in logs])
axes[1].set(title="reward margin", xlabel="step")
fig.tight_layout()'''),
    ("code", '''dpo.save_model("notebook_out/final")   # transformers.AutoModelForCausalLM loads this folder
sorted(os.listdir("notebook_out/final"))'''),
]

KTO_AND_RM = [
    ("markdown", "# A reward model, then KTO\n\nTrain a Bradley–Terry reward model on the "
                 "preference pairs, use it to score answers, and run KTO from the same pairs "
                 "(split into desirable and undesirable examples as TRL does)."),
    ("code", SETUP),
    ("code", '''rm = calign.RewardTrainer(f"{assets}/base", args=calign.RewardConfig(
    output_dir="notebook_out/rm", max_steps=STAGE_STEPS, learning_rate=1e-3,
    per_device_train_batch_size=32, save_steps=0, logging_steps=10, disable_tqdm=True),
    train_dataset=f"{assets}/preferences.jsonl", processing_class=tokenizer)
rm.train()
print("last logged accuracy:", rm.state.log_history[-1]["accuracy"])'''),
    ("code", '''prompts = ["57+38=", "57+38=", "23+41=", "23+41="]
answers = ["95", "85", "64", "65"]
scores = rm.model.score([p + a for p, a in zip(prompts, answers)], tokenizer=tokenizer)
for p, a, s in zip(prompts, answers, scores):
    print(f"{p}{a:<4} reward {s:+.3f}")'''),
    ("code", '''rm.save_model("notebook_out/reward_model")   # an ...ForSequenceClassification folder'''),
    ("code", '''model = calign.Model.from_pretrained(f"{assets}/base")
sft = calign.SFTTrainer(model, args=calign.SFTConfig(
    output_dir="notebook_out/sft2", max_steps=SFT_STEPS, learning_rate=3e-3,
    per_device_train_batch_size=64, lr_scheduler_type="cosine", warmup_steps=30,
    save_steps=0, logging_steps=10, disable_tqdm=True),
    train_dataset=f"{assets}/sft.jsonl", processing_class=tokenizer)
sft.train()
kto = calign.KTOTrainer(sft.model, args=calign.KTOConfig(
    output_dir="notebook_out/kto", max_steps=STAGE_STEPS, learning_rate=3e-4, beta=2.0,
    per_device_train_batch_size=32, lr_scheduler_type="cosine", warmup_steps=10,
    save_steps=0, logging_steps=10, disable_tqdm=True),
    train_dataset=f"{assets}/preferences.jsonl", processing_class=tokenizer)
kto.train()
print(f"SFT then KTO: {demo.held_out_accuracy(kto.model, tokenizer, heldout):.1%}")
print({k: round(v, 3) for k, v in kto.state.log_history[-1].items() if "/" in k or k == "kl"})'''),
]


SELF_IMPROVING = [
    ("markdown", "# Self-improving preference data\n\nAfter SFT, the model answers each "
                 "training prompt 4 times; a program checks the sums; a right and a wrong "
                 "answer make a pair (calign.selfimprove.on_policy_pairs); DPO trains on them; "
                 "repeat. Compared with DPO on the bundled off-policy pairs."),
    ("code", SETUP + '''
ROUNDS, ROUND_STEPS = (1, 20) if QUICK else (2, 200)
prompts = [r["prompt"] for r in demo.read_jsonl(f"{assets}/preferences.jsonl")]
if QUICK:
    prompts = prompts[:200]'''),
    ("code", '''from calign import selfimprove

def correct(prompt, completion):
    a, b = prompt[:-1].split("+")
    return float(completion.strip() == str(int(a) + int(b)))

def dpo_config(name, steps):
    return calign.DPOConfig(output_dir=f"notebook_out/{name}", learning_rate=3e-4, beta=2.0,
                            max_steps=steps, per_device_train_batch_size=32,
                            lr_scheduler_type="cosine", warmup_steps=10, save_steps=0,
                            disable_tqdm=True)

sft = calign.SFTTrainer(f"{assets}/base", args=calign.SFTConfig(
    output_dir="notebook_out/sft", max_steps=SFT_STEPS, save_steps=0, disable_tqdm=True,
    **demo.SFT_SETTINGS), train_dataset=f"{assets}/sft.jsonl", processing_class=tokenizer)
sft.train()
accuracy = {"SFT": demo.held_out_accuracy(sft.model, tokenizer, heldout)}
sft_params = sft.model.params.copy()'''),
    ("code", '''model = sft.model
for r in range(ROUNDS):
    records, summary = selfimprove.on_policy_pairs(model, prompts, correct, n=4,
                                                   tokenizer=tokenizer, max_new_tokens=4, seed=r)
    print(f"round {r + 1}:", summary)
    trainer = calign.DPOTrainer(model, args=dpo_config(f"round{r + 1}", ROUND_STEPS),
                                train_dataset=records, processing_class=tokenizer)
    trainer.train()
    model = trainer.model
    accuracy[f"on-policy round {r + 1}"] = demo.held_out_accuracy(model, tokenizer, heldout)'''),
    ("code", '''baseline = calign.Model(sft.model.config)
baseline.params[...] = sft_params
off_policy = calign.DPOTrainer(baseline, args=dpo_config("off_policy", ROUNDS * ROUND_STEPS),
                               train_dataset=f"{assets}/preferences.jsonl",
                               processing_class=tokenizer)
off_policy.train()
accuracy["off-policy DPO"] = demo.held_out_accuracy(off_policy.model, tokenizer, heldout)
for name, value in accuracy.items():
    print(f"{name:>20}: {value:.1%} held-out exact match")'''),
    ("code", '''import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(list(accuracy), list(accuracy.values()))
ax.set(ylabel="held-out exact match", ylim=(0, 1))
fig.tight_layout()'''),
]


def write(path, cells):
    notebook = nbformat.v4.new_notebook()
    for kind, source in cells:
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        notebook.cells.append(make(source))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    write(os.path.join(here, "01_quickstart_dpo.ipynb"), QUICKSTART)
    write(os.path.join(here, "02_kto_and_reward_model.ipynb"), KTO_AND_RM)
    write(os.path.join(here, "03_self_improving.ipynb"), SELF_IMPROVING)
