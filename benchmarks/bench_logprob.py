"""Fused token log-probs, forward + backward: calign versus torch, same machine, same run.

Each side runs in its own process (so peak RSS is honest) on the same shapes
and thread count, and computes log-probs of N target tokens under an lm_head
[V, d] plus the gradients of sum_i g_i logp_i with respect to hidden and
weight:
  calign      ops.token_logprobs_backward(..., return_logprobs=True): one call
  torch       naive: matmul, log_softmax, gather, autograd
  torch-lce   torch.nn.functional.linear_cross_entropy (g = -1/N, the
              cross-entropy gradient), where torch has it

Run: python benchmarks/bench_logprob.py [--repeats 5] [--threads N] [--quick]
With --native-blas a second calign row runs with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset (OpenBLAS then picks its kernel for this CPU); the
kernel each row used is printed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import ChildFailed, peak_rss_mib, run_child

SHAPES = [(2048, 768, 50257), (4096, 512, 32000)]
QUICK_SHAPES = [(512, 256, 32000)]


def current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_inputs(N, d, V):
    import numpy as np

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((N, d), dtype=np.float32)
    weight = (rng.standard_normal((V, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
    targets = rng.integers(0, V, N)
    return hidden, weight, targets


def run_calign(N, d, V, threads, repeats):
    import numpy as np

    import calign
    from calign import ops

    calign.set_num_threads(threads)
    hidden, weight, targets = make_inputs(N, d, V)
    grad = np.full(N, -1.0 / N)
    baseline = current_rss_mib()

    def step():
        ops.token_logprobs_backward(hidden, weight, targets, grad, return_logprobs=True)

    info = calign.build_info()
    return step, baseline, f"OpenBLAS {info['blas_core']}"


def run_torch(N, d, V, threads, repeats, fused):
    import torch
    torch.set_num_threads(threads)
    hidden_np, weight_np, targets_np = make_inputs(N, d, V)
    hidden = torch.from_numpy(hidden_np).requires_grad_()
    weight = torch.from_numpy(weight_np).requires_grad_()
    targets = torch.from_numpy(targets_np)
    baseline = current_rss_mib()

    def step():
        hidden.grad = None
        weight.grad = None
        if fused:
            loss = torch.nn.functional.linear_cross_entropy(hidden, weight, targets)
        else:
            logp = torch.log_softmax(hidden @ weight.T, dim=-1)
            loss = -logp.gather(1, targets[:, None]).mean()
        loss.backward()

    return step, baseline, f"torch MKL, CPU capability {torch.backends.cpu.get_cpu_capability()}"


def child(args):
    N, d, V = args.shape
    if args.side == "calign":
        step, baseline, kernel = run_calign(N, d, V, args.threads, args.repeats)
    else:
        step, baseline, kernel = run_torch(N, d, V, args.threads, args.repeats,
                                           fused=args.side == "torch-lce")
    step()  # warm-up, excluded
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times), "peak_rss_mib": peak_rss_mib(),
                      "baseline_rss_mib": baseline, "kernel": kernel}))


def run_side(side, shape, threads, repeats, native_blas=False):
    try:
        return run_child(__file__, ["--child", side, "--shape", *shape, "--threads", threads,
                                    "--repeats", repeats], native_blas=native_blas)
    except ChildFailed as failure:
        return {"error": str(failure).splitlines()[-1]}


def has_linear_cross_entropy():
    code = "import torch.nn.functional as F; print(hasattr(F, 'linear_cross_entropy'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="one small shape")
    parser.add_argument("--native-blas", action="store_true",
                        help="add a calign row with OPENBLAS_CORETYPE/L2_SIZE unset")
    parser.add_argument("--child", dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    import calign

    info = calign.build_info()
    print(f"CPU: {info['cpu']}, {info['cores']} cores; threads: {args.threads}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"median of {args.repeats} after 1 warm-up; each side in its own process")
    sides = ["calign"] + (["calign-native"] if args.native_blas else []) + ["torch"]
    if has_linear_cross_entropy():
        sides.append("torch-lce")
    header = (f"{'N x d x V':>20} {'side':>14} {'ms':>9} {'vs best torch':>14} "
              f"{'peak RSS MiB':>13} {'+ over inputs':>14}  kernel")
    print(header)
    print("-" * len(header))
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        results = {}
        for side in sides:
            real_side = "calign" if side == "calign-native" else side
            results[side] = run_side(real_side, shape, args.threads, args.repeats,
                                     native_blas=side == "calign-native")
        torch_times = [r["seconds"] for s, r in results.items()
                       if s.startswith("torch") and "seconds" in r]
        best_torch = min(torch_times) if torch_times else float("nan")
        for side, r in results.items():
            label = "x".join(map(str, shape))
            if "error" in r:
                print(f"{label:>20} {side:>14}  failed: {r['error']}")
                continue
            speedup = best_torch / r["seconds"]
            print(f"{label:>20} {side:>14} {r['seconds'] * 1e3:9.1f} {speedup:13.2f}x "
                  f"{r['peak_rss_mib']:13.0f} {r['peak_rss_mib'] - r['baseline_rss_mib']:14.0f}"
                  f"  {r['kernel']}")


if __name__ == "__main__":
    main()
