"""Iterated training: build pairs with the current model, DPO from it."""

import dataclasses
import os
import reprlib

from calign import checks
from calign.model import Model
from calign.selfimprove.checks import check_model, check_tokenizer
from calign.selfimprove.judge import self_rewarding_pairs


def iterate(model, prompts, args, iterations=2, pairs=self_rewarding_pairs, tokenizer=None,
            seed=0, evaluate=None, **pairs_kwargs):
    """Iterated preference training on the model's own pairs.

    Iteration t (1-based) starts from M_t: `pairs(M_t, prompts, tokenizer=...,
    seed=seed + t - 1, **pairs_kwargs)` (seed=None: unseeded sampling in every
    iteration, as Model.generate) builds the records, then DPO with args
    trains a copy of M_t on them with M_t as the frozen reference; the result
    is M_{t+1} (Yuan et al. 2024, Sec. 2.3: M1 -> M2 -> M3 for two
    iterations). An iteration that yields no pair leaves the model unchanged.

    Args:
        model: the starting calign.Model (M1); it is not modified.
        prompts: the prompts every iteration samples from (text or token ids).
        args: a DPOConfig; iteration t writes to output_dir/iteration<t>.
        iterations: how many (>= 1).
        pairs: a builder with the signature of self_rewarding_pairs,
            on_policy_pairs, scpo_pairs or divpo_pairs.
        evaluate: optional callable(model) -> dict of numbers, added to the
            iteration's summary after training.
        pairs_kwargs: passed to the builder (n, judge_samples, scorer, ...).

    Returns:
        (models, summaries): models[0] is the starting model and models[t]
        the model after iteration t; summaries[t - 1] holds the builder's
        summary of iteration t, the DPO steps taken and the last logged
        training loss.
    """
    from calign.trainers.config import DPOConfig
    from calign.trainers.dpo import DPOTrainer

    check_model("model", model)
    if not isinstance(args, DPOConfig):
        raise TypeError(f"args must be a calign.DPOConfig, not {type(args).__name__}")
    iterations = checks.integer("iterations", iterations, 1)
    seed = checks.seed("seed", seed, allow_none=True)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    if not callable(pairs):
        raise TypeError("pairs must be a pair builder such as selfimprove.self_rewarding_pairs")
    if evaluate is not None and not callable(evaluate):
        raise TypeError("evaluate must be None or a callable(model) -> dict")
    models, summaries = [model], []
    for t in range(1, iterations + 1):
        current = models[-1]
        built = pairs(current, prompts, tokenizer=tokenizer,
                      seed=None if seed is None else seed + t - 1, **pairs_kwargs)
        if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], dict)):
            raise TypeError(f"pairs must return (records, summary dict), got "
                            f"{reprlib.repr(built)}")
        records, summary = built
        following = Model(current.config)
        following.params[...] = current.params
        summary = dict(summary, iteration=t, steps=0, loss=None)
        if records:
            trainer = DPOTrainer(following, args=dataclasses.replace(
                args, output_dir=os.path.join(args.output_dir, f"iteration{t}")),
                train_dataset=records, processing_class=tokenizer)
            trainer.train()
            logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            summary.update(steps=trainer.state.global_step, loss=logged[-1] if logged else None)
        if evaluate is not None:
            measured = evaluate(following)
            if not isinstance(measured, dict):
                raise TypeError(f"evaluate must return a dict of numbers, got "
                                f"{reprlib.repr(measured)}")
            summary.update(measured)
        models.append(following)
        summaries.append(summary)
    return models, summaries
