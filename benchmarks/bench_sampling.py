"""Sampling throughput: N completions sharing one prompt, calign versus transformers.

calign `Model.generate(..., do_sample=True, num_return_sequences=N)` against
transformers `generate(do_sample=True, num_return_sequences=N)` on the same
randomly initialised checkpoint (built with transformers, saved with
save_pretrained into a temporary folder, loaded by both). Each side runs in its
own process with the same thread count; the warm-up call is excluded; the time
is the median of the repeats; peak RSS is the process's. The two sides
alternate for --rounds rounds (calign, transformers, calign, ...), so that a
change in the load of a shared machine does not favour one side; the table
shows the median over rounds and the range of the per-round ratios. Both sides draw
exactly max_new_tokens tokens per sequence (no EOS) with the same sampling
settings: temperature 1 and no filter, or nucleus top_p = 0.9 (top_k off on
both sides: transformers' default top_k=50 is turned off).

Run: python benchmarks/bench_sampling.py [--repeats 5] [--rounds 2] [--threads T]
     [--native-blas] [--models llama-20M gpt2-20M]
"""

import argparse
import json
import os
import statistics
import tempfile

from common import ChildFailed, median_seconds, peak_rss_mib, run_child

SHAPES = {
    "llama-20M": dict(model_type="llama", num_hidden_layers=6, hidden_size=384,
                      num_attention_heads=6, num_key_value_heads=2, intermediate_size=1024,
                      vocab_size=32000, max_position_embeddings=1024),
    "gpt2-20M": dict(model_type="gpt2", n_layer=6, n_embd=384, n_head=6, vocab_size=50257,
                     n_positions=1024),
}
PROMPT_TOKENS, NEW_TOKENS = 32, 64
CASES = [(8, 1.0), (8, 0.9), (16, 1.0)]  # (completions per prompt N, top_p)


def build_checkpoint(shape, folder):
    import torch
    import transformers

    torch.manual_seed(0)
    spec = dict(shape)
    config = transformers.AutoConfig.for_model(spec.pop("model_type"), **spec)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def blas_kernel():
    """The BLAS library and core type the process loaded (threadpoolctl)."""
    from threadpoolctl import threadpool_info

    found = [f"{i['prefix']} {i.get('architecture', '?')}" for i in threadpool_info()
             if i["user_api"] == "blas"]
    return ", ".join(found) or "none"


def child_calign(folder, n, top_p, threads, repeats):
    import numpy as np

    import calign

    calign.set_num_threads(threads)
    model = calign.Model.from_pretrained(folder)
    prompt = np.random.default_rng(0).integers(0, model.vocab_size, PROMPT_TOKENS).tolist()
    seeds = iter(range(10_000))

    def step():
        out = model.generate([prompt], max_new_tokens=NEW_TOKENS, do_sample=True,
                             temperature=1.0, top_p=top_p, num_return_sequences=n,
                             seed=next(seeds))
        assert len(out) == n and all(len(o) == NEW_TOKENS for o in out)

    seconds = median_seconds(step, repeats)
    return seconds, f"calign + {blas_kernel()}"


def child_transformers(folder, n, top_p, threads, repeats):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS),
                           generator=torch.Generator().manual_seed(0))

    def step():
        with torch.no_grad():
            out = model.generate(prompt, do_sample=True, num_return_sequences=n,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 temperature=1.0, top_k=0, top_p=top_p, pad_token_id=0)
        assert out.shape == (n, PROMPT_TOKENS + NEW_TOKENS)

    seconds = median_seconds(step, repeats)
    return seconds, f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}) " \
                    f"+ {blas_kernel()}"


def child(args):
    run = child_calign if args.side == "calign" else child_transformers
    seconds, kernel = run(args.folder, args.n, args.top_p, args.threads, args.repeats)
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "kernel": kernel}))


def spawn(side, folder, n, top_p, threads, repeats, native_blas=False):
    # native_blas: OpenBLAS picks its kernel for the CPU (torch always does)
    try:
        return run_child(__file__, ["--child", side, "--folder", folder, "--n", n, "--top-p", top_p,
                                    "--threads", threads, "--repeats", repeats],
                         native_blas=native_blas)
    except ChildFailed as failure:
        raise RuntimeError(f"{side} failed:\n{str(failure)[-2000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--native-blas", action="store_true",
                        help="run calign with OPENBLAS_CORETYPE/L2_SIZE unset")
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=["llama-20M"])
    parser.add_argument("--child", dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--top-p", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (the median of at least 5 runs)")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")

    import calign

    info = calign.build_info()
    print(f"CPU: {info['cpu']}, {info['cores']} cores; threads: {args.threads} on both sides; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
          f"{' (unset for calign: --native-blas)' if args.native_blas else ''}; prompt "
          f"{PROMPT_TOKENS} tokens, {NEW_TOKENS} new tokens per completion, temperature 1, "
          f"top_k off; median of {args.repeats} after a warm-up, {args.rounds} alternating "
          "rounds")
    header = (f"{'model':>10} {'N':>3} {'top_p':>5} {'calign tok/s':>13} "
              f"{'transformers tok/s':>19} {'ratio':>6} {'ratio range':>12} {'calign RSS':>11} "
              f"{'transformers RSS':>17}")
    print(header)
    print("-" * len(header))
    kernels = set()
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder:
            build_checkpoint(SHAPES[name], folder)
            for n, top_p in CASES:
                rounds = []
                for _ in range(args.rounds):
                    mine = spawn("calign", folder, n, top_p, args.threads, args.repeats,
                                 args.native_blas)
                    theirs = spawn("transformers", folder, n, top_p, args.threads, args.repeats)
                    kernels.update([mine["kernel"], theirs["kernel"]])
                    rounds.append((mine, theirs))
                ours = statistics.median(m["seconds"] for m, _ in rounds)
                reference = statistics.median(t["seconds"] for _, t in rounds)
                ratios = [t["seconds"] / m["seconds"] for m, t in rounds]
                tokens = n * NEW_TOKENS
                print(f"{name:>10} {n:>3} {top_p:>5} {tokens / ours:13.0f} "
                      f"{tokens / reference:19.0f} {reference / ours:5.2f}x "
                      f"{min(ratios):5.2f}-{max(ratios):4.2f}x "
                      f"{max(m['peak_rss_mib'] for m, _ in rounds):10.0f}M "
                      f"{max(t['peak_rss_mib'] for _, t in rounds):16.0f}M", flush=True)
    print("kernels: " + "; ".join(sorted(kernels)))


if __name__ == "__main__":
    main()
