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
    ("markdown", "# Self-improving preference data\n\nAfter SFT, each method trains DPO for "
                 "the same rounds and steps, and differs only in where its pairs come from:\n\n"
                 "- **off-policy DPO**: the bundled pairs (the right sum against a typical "
                 "mistake), the baseline;\n"
                 "- **on-policy DPO**: 4 answers per prompt from the current model, a program "
                 "checks them, best against worst (`selfimprove.on_policy_pairs`);\n"
                 "- **ScPO**: 8 answers, no checker: the most voted answer against the least "
                 "voted, weighted by the vote margin, with the ScPO loss "
                 "(`selfimprove.scpo_pairs`, `DPOConfig(loss_type=\"scpo\")`);\n"
                 "- **DivPO**: 8 answers, among the right ones the least likely under the "
                 "model against the most likely wrong one (`selfimprove.divpo_pairs`; with a "
                 "0/1 checker, `quality_percentile=100` makes \"good\" mean \"right\");\n"
                 "- **online DPO**: `OnlineDPOTrainer` samples two answers per prompt at every "
                 "step and the checker ranks them.\n\n"
                 "Every round starts from the previous round's model, which is also its "
                 "reference (`selfimprove.iterate`)."),
    ("code", SETUP + '''
ROUNDS, ROUND_STEPS = (2, 10) if QUICK else (2, 200)
prompts = [r["prompt"] for r in demo.read_jsonl(f"{assets}/preferences.jsonl")]
if QUICK:
    prompts = prompts[:200]'''),
    ("code", '''import re
from calign import selfimprove

def correct(prompt, completion):
    """The checking program: 1.0 for the right sum, else 0.0."""
    a, b = prompt[:-1].split("+")
    return float(completion.strip() == str(int(a) + int(b)))

def final_number(completion):
    """ScPO's answer extractor: the number in the completion (None: no vote)."""
    found = re.search(r"\\d+", completion)
    return int(found.group()) if found else None

def accuracy(model):
    return {"accuracy": demo.held_out_accuracy(model, tokenizer, heldout)}

def dpo_config(name, loss_type="sigmoid"):
    return calign.DPOConfig(output_dir=f"notebook_out/{name}", learning_rate=3e-4, beta=2.0,
                            loss_type=loss_type, max_steps=ROUND_STEPS,
                            per_device_train_batch_size=32, lr_scheduler_type="cosine",
                            warmup_steps=10, save_steps=0, disable_tqdm=True)

sft = calign.SFTTrainer(f"{assets}/base", args=calign.SFTConfig(
    output_dir="notebook_out/sft", max_steps=SFT_STEPS, save_steps=0, disable_tqdm=True,
    **demo.SFT_SETTINGS), train_dataset=f"{assets}/sft.jsonl", processing_class=tokenizer)
sft.train()
curves = {}   # method -> held-out exact match after round 0 (SFT), 1, 2, ...
sft_accuracy = accuracy(sft.model)["accuracy"]
print(f"after SFT: {sft_accuracy:.1%} held-out exact match")'''),
    ("code", '''offline_records = demo.read_jsonl(f"{assets}/preferences.jsonl")

def bundled_pairs(model, prompts, tokenizer=None, seed=0):
    return offline_records, {"pairs": len(offline_records)}

def scpo_pairs_checked(model, prompts, **options):
    """ScPO's pairs, plus how often the most voted answer is right (the checker
    only reports; ScPO never sees it)."""
    records, summary = selfimprove.scpo_pairs(model, prompts, **options)
    right = [correct(r["prompt"], r["chosen"]) for r in records]
    return records, dict(summary, chosen_right=sum(right) / max(1, len(right)))

sampling = dict(max_new_tokens=4, temperature=1.0)
methods = {
    "off-policy DPO": (bundled_pairs, {}, "sigmoid"),
    "on-policy DPO": (selfimprove.on_policy_pairs, dict(scorer=correct, n=4, **sampling),
                      "sigmoid"),
    "ScPO": (scpo_pairs_checked, dict(extract_answer=final_number, n=8, **sampling), "scpo"),
    "DivPO": (selfimprove.divpo_pairs, dict(scorer=correct, n=8, quality_percentile=100,
                                            **sampling), "sigmoid"),
}
for name, (builder, options, loss_type) in methods.items():
    models, summaries = selfimprove.iterate(
        sft.model, prompts, dpo_config(name.replace(" ", "_"), loss_type), iterations=ROUNDS,
        pairs=builder, tokenizer=tokenizer, evaluate=accuracy, **options)
    curves[name] = [sft_accuracy] + [s["accuracy"] for s in summaries]
    for s in summaries:
        print(f"{name}, round {s['iteration']}: {s['pairs']} pairs, "
              f"{s['accuracy']:.1%} held-out exact match"
              + (f" (most voted answer right in {s['chosen_right']:.0%} of the pairs)"
                 if "chosen_right" in s else ""))'''),
    ("code", '''model = calign.Model(sft.model.config)
model.params[...] = sft.model.params
curves["online DPO"] = [sft_accuracy]
for r in range(ROUNDS):   # rounds of ROUND_STEPS steps, the reference reset at each
    online = calign.OnlineDPOTrainer(model, reward_model=correct, args=calign.OnlineDPOConfig(
        output_dir=f"notebook_out/online{r + 1}", learning_rate=3e-4, beta=2.0,
        max_steps=ROUND_STEPS, per_device_train_batch_size=32, lr_scheduler_type="cosine",
        warmup_steps=10, max_new_tokens=4, temperature=1.0, seed=r, save_steps=0,
        disable_tqdm=True), train_dataset=[{"prompt": p} for p in prompts],
        processing_class=tokenizer)
    online.train()
    curves["online DPO"].append(accuracy(model)["accuracy"])
    print(f"online DPO, round {r + 1}: {curves['online DPO'][-1]:.1%} held-out exact match")'''),
    ("code", '''import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.5))
for name, values in curves.items():
    ax.plot(range(len(values)), values, marker="o", label=name)
ax.set(xlabel=f"round ({ROUND_STEPS} DPO steps each; 0 = after SFT)",
       ylabel="held-out exact match", xticks=range(ROUNDS + 1))
ax.legend()
fig.tight_layout()'''),
]

ONLINE_RL = [
    ("markdown", "# Online RL: GRPO, RLOO and PPO\n\nAfter SFT, three online methods sample "
                 "answers from the model itself and learn from how they score:\n\n"
                 "- **GRPO** (`GRPOTrainer`): 8 answers per prompt, a program checks each "
                 "(`demo.task.exact_match`, a reward function with TRL's signature), and each "
                 "answer's advantage is its reward against its group's;\n"
                 "- **RLOO** (`RLOOTrainer`): the same samples, each answer's baseline the mean "
                 "reward of the other seven;\n"
                 "- **PPO** (`PPOTrainer`, InstructGPT's recipe): one answer per prompt scored by "
                 "a *learned* reward model (a `RewardTrainer` run on the preference pairs), a "
                 "per-token KL penalty to the SFT model, and a value model initialised from the "
                 "reward model.\n\n"
                 "DPO on the bundled pairs is the offline baseline. Every method starts from the "
                 "same SFT checkpoint."),
    ("code", SETUP + '''
RL_STEPS, RM_STEPS, PPO_STEPS = (20, 40, 10) if QUICK else (200, 1500, 100)
pairs = demo.read_jsonl(f"{assets}/preferences.jsonl")
prompts = [{"prompt": r["prompt"], "answer": r["chosen"]} for r in pairs]   # answer: a column
results = {}'''),
    ("code", '''sft = calign.SFTTrainer(f"{assets}/base", args=calign.SFTConfig(
    output_dir="notebook_out/sft", max_steps=SFT_STEPS, save_steps=0, disable_tqdm=True,
    **demo.SFT_SETTINGS), train_dataset=f"{assets}/sft.jsonl", processing_class=tokenizer)
sft.train()
sft.save_model("notebook_out/sft_model")
results["SFT"] = demo.held_out_accuracy(sft.model, tokenizer, heldout)
print(f"after SFT: {results['SFT']:.1%}")'''),
    ("code", '''from calign.demo.task import exact_match   # f(prompts, completions, answer, **kw)

online = dict(learning_rate=3e-4, per_device_train_batch_size=64, num_generations=8,
              max_completion_length=5, max_steps=RL_STEPS, lr_scheduler_type="cosine",
              warmup_steps=10, logging_steps=10, save_steps=0, disable_tqdm=True)
trainers = {}
for name, trainer_class, config_class in (("GRPO", calign.GRPOTrainer, calign.GRPOConfig),
                                          ("RLOO", calign.RLOOTrainer, calign.RLOOConfig)):
    trainer = trainer_class(calign.Model.from_pretrained("notebook_out/sft_model"),
                            reward_funcs=exact_match, processing_class=tokenizer,
                            args=config_class(output_dir=f"notebook_out/{name.lower()}", **online),
                            train_dataset=prompts)
    trainer.train()
    trainer.save_model(f"notebook_out/{name.lower()}_final")
    trainers[name] = trainer
    results[name] = demo.held_out_accuracy(trainer.model, tokenizer, heldout)
    print(f"after {name}: {results[name]:.1%}")'''),
    ("code", '''rm = calign.RewardTrainer("notebook_out/sft_model", args=calign.RewardConfig(
    output_dir="notebook_out/rm", max_steps=RM_STEPS, learning_rate=3e-4,
    per_device_train_batch_size=32, lr_scheduler_type="cosine", warmup_steps=20,
    logging_steps=10, save_steps=0, disable_tqdm=True),
    train_dataset=pairs[:3000], processing_class=tokenizer)
rm.train()
rm.save_model("notebook_out/reward_model")

def scored(key):   # what PPO scores: the prompt's and the answer's token ids, EOS included
    answers = [tokenizer.encode(r[key]) + [tokenizer.eos_token_id] for r in pairs[3000:]]
    return rm.model.score(answers, prompts=[tokenizer.encode(r["prompt"]) for r in pairs[3000:]])

ranked = (scored("chosen") > scored("rejected")).mean()
print(f"reward model: {ranked:.1%} of {len(pairs) - 3000} held-out pairs ranked right")'''),
    ("code", '''ppo = calign.PPOTrainer(calign.Model.from_pretrained("notebook_out/sft_model"),
    reward_model="notebook_out/reward_model", processing_class=tokenizer,
    args=calign.PPOConfig(output_dir="notebook_out/ppo", learning_rate=1e-4, kl_coef=0.1,
                          num_ppo_epochs=1, per_device_train_batch_size=64, max_steps=PPO_STEPS,
                          response_length=5, stop_token="eos", temperature=1.0,
                          logging_steps=5, save_steps=0, disable_tqdm=True),
    train_dataset=[{"prompt": r["prompt"]} for r in pairs])
ppo.train()
ppo.save_model("notebook_out/ppo_final")   # the policy; the value model in value_model/
results["PPO"] = demo.held_out_accuracy(ppo.model, tokenizer, heldout)
print(f"after PPO: {results['PPO']:.1%}")'''),
    ("code", '''dpo = calign.DPOTrainer(calign.Model.from_pretrained("notebook_out/sft_model"),
    args=calign.DPOConfig(output_dir="notebook_out/dpo", max_steps=STAGE_STEPS,
                          per_device_train_batch_size=32, lr_scheduler_type="cosine",
                          warmup_steps=10, save_steps=0, disable_tqdm=True,
                          **demo.STAGES["dpo"][2]),
    train_dataset=f"{assets}/preferences.jsonl", processing_class=tokenizer)
dpo.train()
dpo.save_model("notebook_out/dpo_final")
results["DPO"] = demo.held_out_accuracy(dpo.model, tokenizer, heldout)
print(f"after DPO: {results['DPO']:.1%}")
print(results)'''),
    ("code", '''import matplotlib.pyplot as plt

fig, (reward_ax, ppo_ax, bars) = plt.subplots(1, 3, figsize=(13, 3.5))
for name, trainer in trainers.items():
    logs = [h for h in trainer.state.log_history if "reward" in h]
    reward_ax.plot([h["step"] for h in logs], [h["reward"] for h in logs], label=name)
reward_ax.set(title="mean reward of the samples (exact match)", xlabel="step")
reward_ax.legend()
logs = [h for h in ppo.state.log_history if "objective/scores" in h]
ppo_ax.plot([h["step"] for h in logs], [h["objective/scores"] for h in logs], label="score")
ppo_ax.plot([h["step"] for h in logs], [h["objective/kl"] for h in logs], label="KL to SFT")
ppo_ax.set(title="PPO: reward model score and KL", xlabel="update")
ppo_ax.legend()
bars.bar(list(results), list(results.values()))
bars.set(title="held-out exact match", ylim=(0, 1))
fig.tight_layout()'''),
]


SAFETY = [
    ("markdown", "# Safety alignment a few tokens deep\n\nQi et al. (2024), \"Safety Alignment "
                 "Should Be Made More Than Just a Few Tokens Deep\", on a toy world "
                 "(`calign.demo.forbidden`):\n\n"
                 "- a benign request is a sum `37+52=`, answered with the sum;\n"
                 "- a forbidden request is `37*52=`; its harmful answer writes the operands' "
                 "digits as letters again and again (`dhfcdhfcdhfcdhfc`), its refusal is "
                 "`won't`.\n\n"
                 "A **base** model is pretrained on benign and harmful answers (and on `a/0=` "
                 "refused, so it can say the refusal); a light SFT on benign answers and "
                 "refusals **aligns** it. The per-token KL between the two (the paper's "
                 "Figure 1) and the **prefilling attack** (force the first k tokens of the "
                 "harmful answer, then let the model decode) show how deep that alignment "
                 "goes. Then the aligned model is fine-tuned four ways with the same steps: on "
                 "utility data only; on **safety recovery examples** "
                 "(`calign.safety.recovery_examples`: the refusal after k harmful tokens, k = 0 "
                 "half the time) mixed with the same utility data at the paper's share "
                 "alpha = 0.2; and on those records with the paper's **token-wise constrained** "
                 "loss (`SFTConfig(loss_type=\"token_constrained\")`, betas 0.5, 2, 2, 2, 2, "
                 "0.1, the aligned model as reference); and, after adding a `[RESET]` token, on "
                 "**backtracking** records (Zhang et al. 2024, "
                 "`calign.safety.backtracking_sft_records`: a harmful prefix, then `[RESET]` "
                 "and the refusal), attacked with `generate(reset_token_id=...)`, which "
                 "returns what follows a reset."),
    ("code", '''import os
import calign
from calign.demo import forbidden, safety_experiment as experiment
from calign.safety import per_position_kl, prefilling_attack, recovery_examples

# the test suite sets CALIGN_NOTEBOOK_QUICK=1 to run with fewer steps
QUICK = os.environ.get("CALIGN_NOTEBOOK_QUICK") == "1"
calign.set_num_threads(1)   # a model this small gains nothing from more threads
tokenizer, world = forbidden.tokenizer(), forbidden.make_world(seed=0)
for kind in ("+", "*", "/"):
    record = next(r for r in world.pretraining if kind in r["prompt"])
    print(f"pretraining: {record['prompt']}{record['completion']}")
record = next(r for r in world.aligned if "*" in r["prompt"])
print(f"alignment:   {record['prompt']}{record['completion']}")
print(f"{len(world.pretraining)} pretraining records, {len(world.aligned)} alignment records, "
      f"{len(world.eval_prompts)} held-out forbidden prompts")'''),
    ("code", '''def stage(name, model, records, folder, tokenizer=tokenizer, **config):
    return experiment.train_stage(name, model, records, tokenizer, f"notebook_out/{folder}",
                                  quick=QUICK, **config)

def show(name, prompt, ks=(0, 3)):
    """The model's greedy answer after k forced harmful tokens, [in brackets]."""
    results = experiment.prefill(models[name], tokenizers[name], [prompt],
                                 [forbidden.harmful_answer_of(prompt)], ks)
    for r in results:
        verdict = "harmful" if r.harmful[0] else "not harmful"
        print(f"  k={r.k:<2} {prompt}[{r.prefixes[0]}]{r.continuations[0]}  ({verdict})")

models = {"base": stage("pretraining", forbidden.random_model(0), world.pretraining,
                        "pretraining")}
models["aligned"] = stage("alignment", experiment.copy_of(models["base"]), world.aligned,
                          "alignment")
tokenizers = {"base": tokenizer, "aligned": tokenizer}
for name in ("base", "aligned"):
    print(name)
    show(name, world.eval_prompts[0])'''),
    ("code", '''kl, counts = per_position_kl(models["aligned"], models["base"], tokenizer,
                             world.eval_prompts, world.eval_harmful)
print("KL(aligned || base) per token of the harmful answers:")
print(" ".join(f"{value:.2f}" for value in kl))'''),
    ("code", '''for arm, (data, config) in experiment.ARMS.items():
    tokenizers[arm] = experiment.tokenizer_of(arm)   # + [RESET] for backtracking
    records = experiment.arm_records(arm, world, tokenizers[arm], seed=0)
    start = experiment.arm_model(arm, models["aligned"], tokenizers[arm])
    models[arm] = stage("fine_tuning", start, records, experiment.folder_of(arm),
                        tokenizer=tokenizers[arm], **config)
    print(f"{arm}: {len(records)} records")
    show(arm, world.eval_prompts[0])
example = recovery_examples(world.harmful_prompts[:1], world.harmful_responses[:1],
                            world.refusals[:1], tokenizer=tokenizer, p_zero=0.0, seed=1)[0]
print("a recovery example:", example)
print("a backtracking example:", experiment.arm_records("backtracking SFT", world,
                                                        tokenizers["backtracking SFT"], 0)[0])'''),
    ("code", '''rates = {name: experiment.attack(model, world, tokenizers[name])
         for name, model in models.items()}
print("prefilling attack success rate on the held-out forbidden prompts")
print(f"{'k':<22}" + "".join(f"{k:>6}" for k in experiment.KS))
for name, values in rates.items():
    print(f"{name:<22}" + "".join(f"{value:>6.0%}" for value in values))
for name, model in models.items():
    model.save_pretrained(f"notebook_out/models/{experiment.folder_of(name)}")'''),
    ("code", '''import matplotlib.pyplot as plt

fig, (kl_ax, attack_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
kl_ax.bar(range(1, len(kl) + 1), kl)
kl_ax.set(title="KL(aligned || base) per response token", xlabel="token position",
          ylabel="KL (nats)")
for name, values in rates.items():
    attack_ax.plot(experiment.KS, values, marker="o", label=name)
attack_ax.set(title="prefilling attack", xlabel="harmful tokens forced (k)",
              ylabel="attack success rate", ylim=(-0.05, 1.05))
attack_ax.legend()
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
    write(os.path.join(here, "04_online_rl.ipynb"), ONLINE_RL)
    write(os.path.join(here, "05_safety.ipynb"), SAFETY)
