"""Word alignment: calign's HMM against eflomal on the synthetic corpus, same run.

Both sides align the same seeded synthetic corpus in both directions and the
links are symmetrised with calign's grow-diag-final-and, so the aligners (not
the symmetrisers) are compared; AER is against the generator's gold links.
calign runs 5 IBM1 + 5 HMM EM iterations per direction; eflomal (a collapsed
Gibbs sampler, Östling & Tiedemann 2016) runs its HMM model (model 2) and its
fertility model (model 3) with its default iteration schedule. eflomal is a
benchmark-only reference: pip install eflomal.

Run: python benchmarks/bench_wordalign.py [--pairs 100000] [--threads N]
"""

import argparse
import os
import tempfile
import time

from calign import build_info, set_num_threads, wordalign


def pharaoh_lines(path):
    with open(path) as f:
        return [[tuple(map(int, link.split("-"))) for link in line.split()] for line in f]


def run_calign(pairs, iterations):
    start = time.perf_counter()
    forward = wordalign.HMM().fit(pairs, iterations).align(pairs)
    reverse = wordalign.HMM(reverse=True).fit(pairs, iterations).align(pairs)
    return forward, reverse, time.perf_counter() - start


def run_eflomal(pairs, model):
    import eflomal

    with tempfile.TemporaryDirectory() as folder:
        fwd, rev = os.path.join(folder, "fwd"), os.path.join(folder, "rev")
        start = time.perf_counter()
        eflomal.Aligner(model=model).align([" ".join(s) + "\n" for s, _ in pairs],
                                           [" ".join(t) + "\n" for _, t in pairs],
                                           links_filename_fwd=fwd, links_filename_rev=rev)
        seconds = time.perf_counter() - start
        forward = pharaoh_lines(fwd)
        reverse = pharaoh_lines(rev)
    return forward, reverse, seconds  # both files list source-target links


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    set_num_threads(args.threads)
    pairs, sure, possible = wordalign.synthetic_corpus(args.pairs, seed=0)
    info = build_info()
    print(f"CPU: {info['cpu']}, {info['cores']} cores; threads: {args.threads}; "
          f"{args.pairs} synthetic pairs (seed 0); both directions + grow-diag-final-and")
    rows = [("calign HMM", *run_calign(pairs, args.iterations))]
    for model in (2, 3):
        try:
            rows.append((f"eflomal model {model}", *run_eflomal(pairs, model)))
        except ImportError:
            print("eflomal is not installed: pip install eflomal")
            break
    print(f"{'aligner':>16} {'seconds':>8} {'pairs/s':>9} {'AER fwd':>8} {'AER gdfa':>9}")
    for name, forward, reverse, seconds in rows:
        gdfa = [wordalign.symmetrize(f, r) for f, r in zip(forward, reverse)]
        print(f"{name:>16} {seconds:8.1f} {2 * args.pairs / seconds:9.0f} "
              f"{wordalign.aer(forward, sure, possible):8.4f} "
              f"{wordalign.aer(gdfa, sure, possible):9.4f}")
    if len(rows) > 1:
        print(f"speed: calign {rows[1][3] / rows[0][3]:.2f}x eflomal model 2's pairs/s")


if __name__ == "__main__":
    main()
