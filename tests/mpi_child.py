"""The script tests/test_mpi*.py start under mpirun (or as one plain process).

    python mpi_child.py train RESULT_DIR JSON_OPTIONS
    python mpi_child.py buckets RESULT_DIR N BUCKET
    python mpi_child.py wordalign RESULT_DIR

`train` runs an unchanged training script (the trainer finds the ranks by
itself); rank 0 writes result.json (the log history, the state) and
params.npy, and every rank writes the SHA-256 of its parameters to
rank<r>.sha so the test can check that the replicas agree bit for bit.
Options: trainer (sft, dpo, kto, online_dpo, grpo, rloo, ppo), model (a
folder), per_device, accumulation, max_steps, save_steps, resume (a
checkpoint folder or true), precompute, learning_rate, config (more config
fields),
fail_at_step (rank 1 raises in that step), die_at_step (rank 1 exits
without a word), fail_after_train (rank 1 raises outside the trainer while
rank 0 waits in a barrier), eval.

`wordalign` fits each model of WORDALIGN_MODELS on WORDALIGN_CORPUS with an
unchanged script (fit() finds the ranks); rank 0 writes <name>.npz
(model_state's arrays) and every rank the SHA-256 of its states to
wordalign-rank<r>.sha.
"""

import hashlib
import json
import os
import sys

import numpy as np

import calign
from calign import distributed
from calign import wordalign
from calign.testing.data import kto_records, preference_records, sft_records

# (name, model maker): every kind of EM, the IBM2 also the other way round
WORDALIGN_MODELS = (("ibm1", lambda: wordalign.IBM1()),
                    ("ibm1_vb", lambda: wordalign.IBM1(alpha=0.1)),
                    ("ibm2", lambda: wordalign.IBM2()),
                    ("ibm2_reverse", lambda: wordalign.IBM2(reverse=True)),
                    ("hmm", lambda: wordalign.HMM(ibm1_iterations=2)),
                    ("joint", lambda: wordalign.JointHMM(ibm1_iterations=2)))
WORDALIGN_ITERATIONS = 4


def wordalign_corpus():
    """A small corpus whose pairs split unevenly over 2 ranks."""
    return wordalign.synthetic_corpus(301, seed=11, vocab_size=120)[0]


def model_state(model):
    """What EM learned, as arrays: the translation table(s), IBM2's tension,
    the HMM's jump weights, the log-likelihoods."""
    state = {"log_likelihoods": np.asarray(model.log_likelihoods, np.float64)}
    directions = {"forward": model.forward, "reverse": model.reverse} \
        if isinstance(model, wordalign.JointHMM) else {"": model}
    for prefix, direction in directions.items():
        state.update({prefix + key: value for key, value in
                      zip(("row_start", "cols", "prob"), direction.table)})
        state[prefix + "tension"] = np.float64(direction.tension)
        if isinstance(direction, wordalign.HMM):
            state[prefix + "jump"] = np.asarray(direction.jump, np.float64)
    return state


def write_rank_digest(out, weights):
    rank = distributed.world().rank
    with open(os.path.join(out, f"rank{rank}.sha"), "w") as f:
        f.write(hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest())


def completion_reward(prompts, completions, completion_ids, **kwargs):
    """A reward of the token ids that differs between most completions."""
    return [float(sum(ids) % 7) - 3.0 for ids in completion_ids]


def pair_reward(prompt, completion):
    return float(len(completion) % 3) + 0.1 * len(prompt)


def config_vocab(options):
    with open(os.path.join(options["model"], "config.json")) as f:
        return json.load(f)["vocab_size"]


def prompt_records(n, seed, model):
    """n prompts in the words of the model's vocabulary."""
    vocab_size = config_vocab({"model": model})
    return [{"prompt": r["prompt"]} for r in sft_records(n, seed=seed, vocab_size=vocab_size)]


def train(out, options):
    kind = options["trainer"]
    common = dict(output_dir=os.path.join(out, "run"),
                  learning_rate=options.get("learning_rate", 5e-3),
                  per_device_train_batch_size=options["per_device"],
                  gradient_accumulation_steps=options.get("accumulation", 1),
                  max_steps=options["max_steps"], logging_steps=1, disable_tqdm=False,
                  save_strategy="steps" if options.get("save_steps") else "no",
                  save_steps=options.get("save_steps") or 500, seed=3,
                  lr_scheduler_type="linear", warmup_steps=2)
    evaluated = options.get("eval", False)
    if evaluated:
        common.update(eval_strategy="steps", eval_steps=5, per_device_eval_batch_size=2)
    if kind == "sft":
        config, data = calign.SFTConfig(**common), sft_records(24, seed=5)
        make = calign.SFTTrainer
    elif kind == "dpo":
        config = calign.DPOConfig(beta=0.3, precompute_ref_log_probs=options.get("precompute",
                                                                                 False), **common)
        data, make = preference_records(24, seed=6), calign.DPOTrainer
    elif kind == "kto":
        config, data = calign.KTOConfig(beta=0.4, **common), kto_records(24, seed=7)
        make = calign.KTOTrainer
    elif kind == "online_dpo":
        config = calign.OnlineDPOConfig(beta=0.3, max_new_tokens=5, **common,
                                        **options.get("config", {}))
        data = prompt_records(24, seed=8, model=options["model"])

        def make(model, **kwargs):
            return calign.OnlineDPOTrainer(model, reward_model=pair_reward, **kwargs)
    elif kind in ("grpo", "rloo"):
        rl = dict(num_generations=2, max_completion_length=6, beta=0.1)
        rl.update(options.get("config", {}))
        if evaluated:
            common.update(per_device_eval_batch_size=4)
        config = {"grpo": calign.GRPOConfig, "rloo": calign.RLOOConfig}[kind](**common, **rl)
        data = prompt_records(24, seed=9, model=options["model"])
        trainer_class = {"grpo": calign.GRPOTrainer, "rloo": calign.RLOOTrainer}[kind]

        def make(model, **kwargs):
            return trainer_class(model, reward_funcs=completion_reward, **kwargs)
    elif kind == "ppo":
        rl = dict(num_ppo_epochs=2, num_mini_batches=2, response_length=5, stop_token="eos",
                  ptx_coef=0.5)
        rl.update(options.get("config", {}))
        config, data = calign.PPOConfig(**common, **rl), prompt_records(24, 10, options["model"])
        pretraining = [{"text": r["prompt"] + r["completion"]}
                       for r in sft_records(12, seed=11, vocab_size=config_vocab(options))]

        def make(model, **kwargs):
            return calign.PPOTrainer(model, reward_model=completion_reward,
                                     ptx_dataset=pretraining, **kwargs)
    else:
        raise ValueError(f"unknown trainer {kind!r}")
    trainer = make(options["model"], args=config, train_dataset=data,
                   eval_dataset=data[:7] if evaluated else None)
    fail_at, die_at = options.get("fail_at_step"), options.get("die_at_step")
    if (fail_at is not None or die_at is not None) and trainer.world.rank == 1:
        step_of = trainer._training_step

        def failing(step, *rest):
            if step == fail_at:
                raise RuntimeError(f"rank 1 fails on purpose at step {step}")
            if step == die_at:
                os._exit(3)
            return step_of(step, *rest)

        trainer._training_step = failing
    state = trainer.train(resume_from_checkpoint=options.get("resume"))
    if options.get("fail_after_train"):
        if trainer.world.rank == 1:
            raise RuntimeError("rank 1 fails on purpose after training")
        trainer.world.barrier()
    write_rank_digest(out, trainer.model.params)
    if trainer.world.is_main:
        np.save(os.path.join(out, "params.npy"), trainer.model.params)
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"log_history": state.log_history, "num_tokens": state.num_tokens,
                       "global_step": state.global_step, "ranks": trainer.world.size}, f)


def buckets(out, n, bucket):
    world = distributed.world()
    values = (np.arange(n, dtype=np.float32) % 97) * (world.rank + 1)
    world.sum_in_place(values, bucket_elements=bucket)
    if world.is_main:
        np.save(os.path.join(out, "sum.npy"), values)


def wordalign_models(out):
    world = distributed.world()
    pairs = wordalign_corpus()
    digest = hashlib.sha256()
    for name, make in WORDALIGN_MODELS:
        state = model_state(make().fit(pairs, iterations=WORDALIGN_ITERATIONS))
        for key in sorted(state):
            digest.update(np.ascontiguousarray(state[key]).tobytes())
        if world.is_main:
            np.savez(os.path.join(out, f"{name}.npz"), **state)
    with open(os.path.join(out, f"wordalign-rank{world.rank}.sha"), "w") as f:
        f.write(digest.hexdigest())


def main(argv):
    mode, out = argv[1], argv[2]
    os.makedirs(out, exist_ok=True)
    if mode == "train":
        train(out, json.loads(argv[3]))
    elif mode == "buckets":
        buckets(out, int(argv[3]), int(argv[4]))
    elif mode == "wordalign":
        wordalign_models(out)
    else:
        raise ValueError(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
