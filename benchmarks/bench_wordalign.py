"""Word alignment: calign against eflomal on the synthetic corpus, same run.

Every aligner aligns the same seeded synthetic corpus in both directions, in
its own process (one per repeat, imports and corpus loading untimed); the
table gives the median seconds of the repeats, pairs aligned per second
(both directions), the AER of the forward (source->target) links and of the
symmetrised links against the generator's gold links, and the ratios of
calign's recommended aligner to eflomal's.

- calign JointHMM (recommended, its defaults): 5 IBM1 + 5 HMM iterations
  trained by agreement, fertility sampling (5 burn-in + 10 counted sweeps),
  soft union;
- calign HMM: the two directions trained independently (5 IBM1 + 5 HMM),
  Viterbi links, grow-diag-final-and (calign's previous configuration);
- eflomal (a collapsed Gibbs sampler, Ostling & Tiedemann 2016) with its
  default schedule and settings (3 samplers), its OpenMP threads as many as
  calign's: model 2 (HMM) and model 3 (HMM + fertility, its default),
  symmetrised with calign's grow-diag-final-and.
The JointHMM's time includes its symmetrisation (the soft union, in C); the
others' grow-diag-final-and (calign's Python symmetrize) and the reading of
eflomal's link files are not timed.
eflomal is a benchmark-only reference: pip install eflomal.

--per-iteration prices one HMM iteration instead: the time of 11 HMM
iterations minus that of 1 (after 5 IBM1 ones), over 10, both directions; for
calign an EM iteration (forward-backward over every pair, then the M-step),
for eflomal model 2 a Gibbs sweep of each of its samplers (1, and its default
3).

Run: python benchmarks/bench_wordalign.py [--pairs 100000] [--threads N] [--repeats 3]
         [--per-iteration]
"""

import argparse
import json
import os
import pickle
import statistics
import tempfile
import time

from common import run_child

ALIGNERS = ("calign JointHMM", "calign HMM", "eflomal model 2", "eflomal model 3")


def pharaoh_lines(path):
    with open(path) as f:
        return [[tuple(map(int, link.split("-"))) for link in line.split()] for line in f]


def run_calign_joint(pairs):
    from calign import wordalign

    start = time.perf_counter()
    model = wordalign.JointHMM().fit(pairs, 5)
    links = model.align(pairs)
    seconds = time.perf_counter() - start
    return model.align(pairs, "forward"), links, seconds  # the sampler is seeded: same run


def run_calign_hmm(pairs):
    from calign import wordalign

    start = time.perf_counter()
    forward = wordalign.HMM().fit(pairs, 5).align(pairs)
    reverse = wordalign.HMM(reverse=True).fit(pairs, 5).align(pairs)
    seconds = time.perf_counter() - start
    return forward, [wordalign.symmetrize(f, r) for f, r in zip(forward, reverse)], seconds


def run_eflomal(pairs, model):
    import eflomal

    from calign import wordalign

    with tempfile.TemporaryDirectory() as folder:
        fwd, rev = os.path.join(folder, "fwd"), os.path.join(folder, "rev")
        start = time.perf_counter()
        eflomal.Aligner(model=model).align([" ".join(s) + "\n" for s, _ in pairs],
                                           [" ".join(t) + "\n" for _, t in pairs],
                                           links_filename_fwd=fwd, links_filename_rev=rev)
        seconds = time.perf_counter() - start
        forward, reverse = pharaoh_lines(fwd), pharaoh_lines(rev)  # both source-target links
    return forward, [wordalign.symmetrize(f, r) for f, r in zip(forward, reverse)], seconds


def hmm_seconds(pairs, side, hmm_iterations, samplers):
    """Seconds to train both directions' HMMs: 5 IBM1 iterations, then
    hmm_iterations (calign's EM, or eflomal model 2's Gibbs sweeps)."""
    from calign import wordalign

    if side == "calign":
        start = time.perf_counter()
        wordalign.HMM(ibm1_iterations=5).fit(pairs, hmm_iterations)
        wordalign.HMM(ibm1_iterations=5, reverse=True).fit(pairs, hmm_iterations)
        return time.perf_counter() - start
    import eflomal

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        eflomal.Aligner(model=2, n_iterations=(5, hmm_iterations, 0), n_samplers=samplers).align(
            [" ".join(s) + "\n" for s, _ in pairs], [" ".join(t) + "\n" for _, t in pairs],
            links_filename_fwd=os.path.join(folder, "fwd"),
            links_filename_rev=os.path.join(folder, "rev"))
        return time.perf_counter() - start


def worker(name, data, threads):
    """One timed alignment in this process; prints a JSON line."""
    from calign import set_num_threads, wordalign

    set_num_threads(threads)
    with open(data, "rb") as f:
        pairs, sure, possible = pickle.load(f)
    if name.startswith("iterations"):  # iterations <side> <hmm iterations> <samplers>
        _, side, hmm_iterations, samplers = name.split()
        print(json.dumps({"seconds": hmm_seconds(pairs, side, int(hmm_iterations), int(samplers))}))
        return
    if name == "calign JointHMM":
        forward, links, seconds = run_calign_joint(pairs)
    elif name == "calign HMM":
        forward, links, seconds = run_calign_hmm(pairs)
    else:
        forward, links, seconds = run_eflomal(pairs, int(name[-1]))
    print(json.dumps({"seconds": seconds, "aer_forward": wordalign.aer(forward, sure, possible),
                      "aer_symmetrised": wordalign.aer(links, sure, possible)}))


def spawn(name, data, threads):
    """Runs worker `name` in a new process; its JSON line as a dict."""
    return run_child(__file__, ["--worker", name, "--data", data, "--threads", threads],
                     OMP_NUM_THREADS=str(threads))


def per_iteration(args, data, with_eflomal):
    """Seconds per HMM iteration, both directions: (t(11) - t(1)) / 10."""
    sides = [("calign", 1)] + ([("eflomal", 1), ("eflomal", 3)] if with_eflomal else [])
    runs = {}
    for _ in range(args.repeats):
        for side, samplers in sides:
            for k in (1, 11):
                name = f"iterations {side} {k} {samplers}"
                runs.setdefault((side, samplers, k), []).append(spawn(name, data, args.threads))
    each = {}
    print("| HMM trainer | seconds for 1 / 11 iterations | seconds per iteration |")
    print("|---|---|---|")
    for side, samplers in sides:
        one, eleven = (statistics.median(r["seconds"] for r in runs[(side, samplers, k)])
                       for k in (1, 11))
        each[(side, samplers)] = (eleven - one) / 10
        label = "calign HMM (EM)" if side == "calign" else \
            f"eflomal model 2 ({samplers} sampler{'s' if samplers > 1 else ''})"
        print(f"| {label} | {one:.2f} / {eleven:.2f} | {each[(side, samplers)]:.3f} |")
    for samplers in (1, 3):
        if ("eflomal", samplers) in each:
            print(f"calign EM iteration / eflomal sweep with {samplers} sampler(s): "
                  f"{each[('calign', 1)] / each[('eflomal', samplers)]:.2f}x the time")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated aligners to run (default: all)")
    parser.add_argument("--per-iteration", action="store_true",
                        help="price one HMM iteration (calign EM against eflomal sweeps)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.data, args.threads)

    from calign import build_info, wordalign

    aligners = ALIGNERS if not args.only else tuple(a.strip() for a in args.only.split(","))
    unknown = set(aligners) - set(ALIGNERS)
    if unknown:
        parser.error(f"--only: unknown aligners {sorted(unknown)}; choose from {list(ALIGNERS)}")
    try:
        import eflomal  # noqa: F401
    except ImportError:
        print("eflomal is not installed (pip install eflomal): calign only")
        aligners = tuple(a for a in aligners if a.startswith("calign"))
    info = build_info()
    print(f"CPU: {info['cpu']}, {info['cores']} cores; threads: {args.threads} (calign's setting "
          f"and OMP_NUM_THREADS, which eflomal's OpenMP follows); {args.pairs} synthetic pairs "
          f"(seed 0); median of {args.repeats} runs, each in its own process")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "corpus.pickle")
        with open(data, "wb") as f:
            pickle.dump(wordalign.synthetic_corpus(args.pairs, seed=0), f)
        if args.per_iteration:
            return per_iteration(args, data, "eflomal model 2" in aligners)
        runs = {name: [] for name in aligners}
        for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits all sides
            for name in aligners:
                runs[name].append(spawn(name, data, args.threads))
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          "(other processes share the cores; compare the ratios)")
    rows = {}
    print("| aligner | seconds | pairs/s | AER forward | AER symmetrised |")
    print("|---|---|---|---|---|")
    for name in aligners:
        seconds = statistics.median(r["seconds"] for r in runs[name])
        forward, symmetrised = runs[name][0]["aer_forward"], runs[name][0]["aer_symmetrised"]
        rows[name] = (seconds, forward, symmetrised)
        sym = "soft union" if name == "calign JointHMM" else "gdfa"
        print(f"| {name} | {seconds:.1f} | {args.pairs / seconds:.0f} | {forward:.4f} | "
              f"{symmetrised:.4f} ({sym}) |")
    ours = rows.get("calign JointHMM")
    for name in (a for a in aligners if ours and a.startswith("eflomal")):
        theirs = rows[name]
        print(f"calign JointHMM / {name}: time {ours[0] / theirs[0]:.2f}x, "
              f"AER symmetrised {ours[2] / theirs[2]:.2f}x, AER forward {ours[1] / theirs[1]:.2f}x")


if __name__ == "__main__":
    main()
