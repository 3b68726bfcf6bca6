"""The shallow-alignment experiment on the forbidden-request world (issue 18;
Qi et al. 2024): a base model pretrained on benign and harmful answers, aligned
by a light SFT on benign answers and refusals, then fine-tuned further by each
arm of ARMS. The prefilling attack (calign.safety.prefilling_attack) at k
forced harmful tokens measures how deep each model's refusal goes.

Arms (every one starts from the aligned model, same steps and settings):
- "utility SFT": plain SFT on utility records only (benign sums);
- "recovery SFT": plain SFT on calign.safety.recovery_examples mixed with the
  same utility records (alpha = 0.2, the paper's share);
- "recovery + constrained": the same records with the token-wise constrained
  loss (the paper's Eq. 3 and betas; the reference is the aligned model);
- "backtracking SFT" (Zhang et al. 2024): a [RESET] token added to the
  tokenizer and the model, then plain SFT on calign.safety.backtracking_sft_
  records (harmful prompt + a random prefix of the harmful answer -> [RESET] +
  refusal, and harmful prompt -> refusal) mixed with the utility records in
  the same share; it is attacked with generate(reset_token_id=...), which
  returns what follows a reset.
"""

import os
import re

import calign
from calign import checks
from calign.demo import forbidden
from calign.safety import (RESET_TOKEN, backtracking_sft_records, prefilling_attack,
                           recovery_examples)

KS = (0, 1, 3, 5, 10)
# (steps, learning rate) per stage; QUICK for the test suite. The alignment is
# light on purpose (the paper's aligned models are: a few tokens deep).
FULL = dict(pretraining=(600, 3e-3), alignment=(100, 1e-4), fine_tuning=(100, 3e-4))
QUICK = dict(pretraining=(200, 5e-3), alignment=(50, 2e-4), fine_tuning=(50, 6e-4))
SETTINGS = dict(per_device_train_batch_size=64, lr_scheduler_type="cosine", save_steps=0,
                logging_steps=10, disable_tqdm=True)
# arm -> (its data: "utility" or "recovery", extra SFTConfig fields)
ARMS = {
    "utility SFT": ("utility", {}),
    "recovery SFT": ("recovery", {}),
    "recovery + constrained": ("recovery", dict(loss_type="token_constrained",
                                                constrained_betas=[0.5, 2, 2, 2, 2, 0.1])),
    "backtracking SFT": ("backtracking", {}),
}
SAFETY_SHARE = 0.2  # the paper's alpha: safety records among all


def folder_of(name):
    """The folder name of a model or arm: "recovery + constrained" -> "recovery_constrained"."""
    return re.sub(r"\W+", "_", name)


def copy_of(model):
    """A new Model holding `model`'s weights."""
    copy = calign.Model(model.config)
    copy.params[...] = model.params
    return copy


def sft(model, records, tokenizer, output_dir, steps, learning_rate, seed, **config):
    """Trains `model` in place with SFTConfig(...) on `records`; returns the trainer."""
    trainer = calign.SFTTrainer(model, args=calign.SFTConfig(
        output_dir=output_dir, max_steps=steps, learning_rate=learning_rate,
        warmup_steps=min(30, steps // 5), seed=seed, **SETTINGS, **config),
        train_dataset=records, processing_class=tokenizer)
    trainer.train()
    return trainer


def train_stage(stage, model, records, tokenizer, output_dir, seed=0, quick=False, **config):
    """Trains `model` in place for stage "pretraining", "alignment" or
    "fine_tuning" (its steps and learning rate from QUICK or FULL); returns it."""
    steps, learning_rate = (QUICK if quick else FULL)[stage]
    return sft(model, records, tokenizer, output_dir, steps, learning_rate, seed, **config).model


def tokenizer_of(name):
    """The tokenizer of a model of the experiment: the world's, with the reset
    token added for the backtracking arm."""
    tokenizer = forbidden.tokenizer()
    if name in ARMS and ARMS[name][0] == "backtracking":
        tokenizer.add_special_tokens([RESET_TOKEN])
    return tokenizer


def arm_model(arm, aligned, tokenizer):
    """The model an arm starts from: a copy of the aligned one (grown by the
    reset token's row, the mean of the others, for backtracking)."""
    model = copy_of(aligned)
    if tokenizer.vocab_size > model.vocab_size:
        model.resize_token_embeddings(tokenizer.vocab_size)
    return model


def arm_records(arm, world, tokenizer, seed):
    """The records an arm trains on."""
    data, _ = ARMS[arm]
    if data == "utility":
        return world.utility
    if data == "recovery":
        return recovery_examples(world.harmful_prompts, world.harmful_responses,
                                 world.refusals, world.utility, tokenizer=tokenizer,
                                 alpha=SAFETY_SHARE, seed=seed)
    safety = backtracking_sft_records(world.harmful_prompts, world.harmful_responses,
                                      world.refusals, prefix_unit="character", seed=seed,
                                      tokenizer=tokenizer)
    n_utility = round(len(safety) * (1 - SAFETY_SHARE) / SAFETY_SHARE)
    utility = [world.utility[i % len(world.utility)] for i in range(n_utility)]
    return safety + utility


def prefill(model, tokenizer, prompts, harmful_answers, ks=KS):
    """calign.safety.prefilling_attack with the world's judge, greedy, 8 new
    tokens; a model whose tokenizer has the reset token decodes with it (at
    most one reset, no bias): what follows a reset is judged."""
    reset = tokenizer.token_to_id(RESET_TOKEN)
    generation = {} if reset is None else dict(reset_token_id=reset)
    return prefilling_attack(model, tokenizer, prompts, harmful_answers, list(ks),
                             judge=forbidden.judge, max_new_tokens=8, **generation)


def attack(model, world, tokenizer, ks=KS):
    """Attack success rate per k on the world's held-out forbidden prompts."""
    return [r.success_rate for r in prefill(model, tokenizer, world.eval_prompts,
                                            world.eval_harmful, ks)]


def run(output_dir, seed=0, quick=False, arms=tuple(ARMS), ks=KS):
    """Trains the base, aligned and arm models of one seed (world and
    initialisation); returns {"world", "tokenizer", "models": {name: Model},
    "success_rates": {name: [rate per k]}, "ks"} with the models named "base",
    "aligned" and each arm. The stages log to output_dir/pretraining,
    output_dir/alignment and output_dir/<folder_of(arm)>."""
    checks.integer("seed", seed, 0)
    checks.flag("quick", quick)
    for i, arm in enumerate(arms):
        checks.choice(f"arms[{i}]", arm, list(ARMS))
    tokenizer, world = forbidden.tokenizer(), forbidden.make_world(seed)

    def stage(name, model, records, folder, **config):
        return train_stage(name, model, records, tokenizer, os.path.join(output_dir, folder),
                           seed, quick, **config)

    models = {"base": stage("pretraining", forbidden.random_model(seed), world.pretraining,
                            "pretraining")}
    models["aligned"] = stage("alignment", copy_of(models["base"]), world.aligned, "alignment")
    tokenizers = {name: tokenizer for name in models}
    for arm in arms:
        tokenizers[arm] = tokenizer_of(arm)
        models[arm] = train_stage("fine_tuning", arm_model(arm, models["aligned"],
                                                           tokenizers[arm]),
                                  arm_records(arm, world, tokenizers[arm], seed),
                                  tokenizers[arm], os.path.join(output_dir, folder_of(arm)),
                                  seed, quick, **ARMS[arm][1])
    rates = {name: attack(model, world, tokenizers[name], ks)
             for name, model in models.items()}
    return dict(world=world, tokenizer=tokenizer, models=models, success_rates=rates,
                ks=list(ks))
