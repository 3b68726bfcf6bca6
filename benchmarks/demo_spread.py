"""The demo's held-out exact match across OpenBLAS kernels, thread counts and
seeds: the training is chaotic in the summation order of the matrix
products, so one number says little; this prints the spread the README quotes
and whether DPO beat SFT in every run.

Each run is `calign.demo.run.run(method=..., seed=S)` in a process of its own,
with OMP_NUM_THREADS set and OpenBLAS's kernel either as the machine sets it
(OPENBLAS_CORETYPE, if any) or chosen by OpenBLAS for the CPU (both
OPENBLAS_* variables unset for that process only); the kernel each run used
is read from calign.build_info().

Run: python benchmarks/demo_spread.py [--seeds 42 1 2] [--threads 1 2] [--method dpo]
"""

import argparse
import json
import statistics
import tempfile

from common import ChildFailed, run_child


def child(args):
    import calign
    from calign.demo.run import run

    with tempfile.TemporaryDirectory() as folder:
        accuracies = run(folder, method=args.method, seed=args.seed, say=lambda *_: None)
    print(json.dumps(dict(accuracies, kernel=calign.build_info()["blas_core"])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--method", default="dpo", choices=["dpo", "kto", "orpo", "simpo"])
    parser.add_argument("--kernels", nargs="+", choices=["as-set", "native"],
                        default=["as-set", "native"],
                        help="OpenBLAS's kernel as the environment sets it, or its own choice")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    method = args.method
    rows = []
    print(f"{'kernel':>10} {'threads':>7} {'seed':>5} {'base':>6} {'SFT':>6} {method.upper():>6}")
    for kernel in args.kernels:
        for threads in args.threads:
            for seed in args.seeds:
                try:
                    r = run_child(__file__, ["--child", "--seed", seed, "--method", method],
                                  native_blas=kernel == "native", OMP_NUM_THREADS=str(threads),
                                  TQDM_DISABLE="1")
                except ChildFailed as failure:
                    raise SystemExit(f"seed {seed}, {threads} threads, kernel {kernel} failed:\n"
                                     f"{str(failure)[-2000:]}")
                rows.append(r)
                print(f"{r['kernel']:>10} {threads:>7} {seed:>5} {r['base']:6.1%} {r['sft']:6.1%} "
                      f"{r[method]:6.1%}", flush=True)
    sft = [r["sft"] for r in rows]
    after = [r[method] for r in rows]
    gains = [r[method] - r["sft"] for r in rows]
    print(f"\n{len(rows)} runs; SFT {min(sft):.1%}-{max(sft):.1%} (median "
          f"{statistics.median(sft):.1%}); {method.upper()} {min(after):.1%}-{max(after):.1%} "
          f"(median {statistics.median(after):.1%}); {method.upper()} - SFT "
          f"{min(gains) * 100:+.1f} to {max(gains) * 100:+.1f} points; {method.upper()} beat SFT "
          f"in {sum(g > 0 for g in gains)} of {len(rows)}")


if __name__ == "__main__":
    main()
