"""Transformer engine: calign versus transformers + torch on the same model, same run.

Workloads (each side in its own process, same thread count, warm-up excluded,
median of repeats):
  train     forward + backward + AdamW step of causal-LM cross-entropy
  train-bf16  the same with bf16 products: calign's Model.bf16_products against
            torch's CPU autocast to bfloat16 (what bf16=True runs in TRL)
  forward   forward only (log-probs of every next token for calign, logits for torch)
  generate  greedy generation of 64 new tokens after a 16-token prompt, batch 1 and 8;
            generate-8-bf16: calign reading its matrix weights as bfloat16
            (generate(weight_dtype="bfloat16")) against transformers in float32,
            its fastest here (torch's bfloat16 product is a scalar path without
            AVX512-BF16). For each generation row the bandwidth limit is printed:
            batch x (measured copy bandwidth / weight bytes a decoding step reads)
on a ~20M-parameter GPT-2 shape (6 layers, d=384, 6 heads, vocab 50257) and a
~20M Llama shape (6 layers, d=384, 6 heads, 2 kv heads, vocab 32000), batch
4 x 256 tokens. Achieved FLOP/s is compared with calign's sgemm measured in the
same run (model FLOPs: 6N per token for training, 2N forward, plus attention).

With --llmc PATH (a checkout of karpathy/llm.c) it also times llm.c's CPU
trainer, train_gpt2.c built by its Makefile, against calign's training step
on the same shape and batch: GPT-2 124M, B 4, T 64, AdamW (llmc_side.py), with
calign in float32 and with bf16 products (llm.c's CPU trainer has only
float32). Without the option that row is skipped with a message.

Run: python benchmarks/bench_engine.py [--repeats 5] [--quick] [--native-blas] [--llmc PATH]
"""

import argparse
import json
import os
import tempfile

import llmc_side
from common import (ChildFailed, copy_bandwidth, cpu_features_text, median_seconds,
                    peak_rss_mib, run_child)

SHAPES = {
    "gpt2-20M": dict(model_type="gpt2", n_layer=6, n_embd=384, n_head=6, vocab_size=50257,
                     n_positions=1024),
    "llama-20M": dict(model_type="llama", num_hidden_layers=6, hidden_size=384,
                      num_attention_heads=6, num_key_value_heads=2, intermediate_size=1024,
                      vocab_size=32000, max_position_embeddings=1024),
    # d = 768: where the fraction of sgemm is judged
    "gpt2-124M": dict(model_type="gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                      n_positions=1024),
}
DEFAULT_MODELS = ("gpt2-20M", "llama-20M")
WORKLOADS = ("train", "train-bf16", "forward", "generate-1", "generate-8", "generate-8-bf16")
QUICK = {"gpt2-20M": dict(SHAPES["gpt2-20M"], n_layer=2, vocab_size=8000)}
BATCH, SEQ = 4, 256


def build_checkpoint(shape, folder):
    import torch
    import transformers

    torch.manual_seed(0)
    spec = dict(shape)
    model_type = spec.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **spec)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)


def matmul_params(config):
    """Parameters that take part in matrix products (the lm_head counted once)."""
    if config["model_type"] == "gpt2":
        d, L, V = config["n_embd"], config["n_layer"], config["vocab_size"]
        return L * (4 * d * d + 8 * d * d) + V * d, L, d
    d, L, V = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    hd = d // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd
    ff = config["intermediate_size"]
    return L * (2 * d * d + 2 * d * kv + 3 * d * ff) + V * d, L, d


def model_flops(config, train):
    N, L, d = matmul_params(config)
    tokens = BATCH * SEQ
    per_token = (6 if train else 2) * N + (12 if train else 4) * L * d * SEQ // 2
    return per_token * tokens


def child_calign(folder, workload, threads, repeats):
    import numpy as np

    import calign

    calign.set_num_threads(threads)
    model = calign.Model.from_pretrained(folder)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.vocab_size, (BATCH, SEQ))
    if workload.startswith("train-b4t64"):  # llm.c's train_gpt2.c: B 4, T 64
        ids = ids[:, :64]
    if workload.startswith("train"):
        model.bf16_products = workload.endswith("-bf16")
        opt = calign.optim.AdamW(model, lr=1e-4)

        def step():
            model.lm_loss_backward(ids, ids)
            opt.step()
    elif workload == "forward":
        def step():
            model.token_logprobs(ids, ids)
    else:
        batch = int(workload.split("-")[1])
        prompts = rng.integers(0, model.vocab_size, (batch, 16)).tolist()
        dtype = "bfloat16" if workload.endswith("bf16") else "float32"

        def step():
            model.generate(prompts, max_new_tokens=64, weight_dtype=dtype)
    seconds = median_seconds(step, repeats)
    info = calign.build_info()
    # same process, same kernel: the sgemm, or under bf16 products the bf16 product
    bf16 = workload.startswith("train") and workload.endswith("-bf16")
    sgemm = calign._C.sgemm_gflops(1024, 1024, 1024, 5, bf16=bf16)
    kernel = f"OpenBLAS {info['blas_core']}"
    if bf16:
        kernel += f", bf16 {calign.bf16_backend()}"
    return seconds, kernel, sgemm


def child_torch(folder, workload, threads, repeats):
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    if workload.startswith("train"):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        bf16 = workload.endswith("-bf16")

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    elif workload == "forward":
        model.eval()

        def step():
            with torch.no_grad():
                model(ids)
    else:
        model.eval()
        batch = int(workload.split("-")[1])
        prompts = torch.randint(0, model.config.vocab_size, (batch, 16))

        def step():
            with torch.no_grad():
                model.generate(prompts, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                               pad_token_id=0)
    seconds = median_seconds(step, repeats)
    return seconds, f"torch MKL, {torch.backends.cpu.get_cpu_capability()}", None


def child(args):
    run = child_calign if args.side == "calign" else child_torch
    seconds, kernel, sgemm = run(args.folder, args.workload, args.threads, args.repeats)
    rss = peak_rss_mib()  # before the bandwidth probe's 800 MB
    bandwidth = copy_bandwidth() if args.side == "calign" and "generate" in args.workload \
        else None
    print(json.dumps({"seconds": seconds, "peak_rss_mib": rss, "kernel": kernel,
                      "sgemm_gflops": sgemm, "copy_gbs": bandwidth}))


def spawn(side, folder, workload, threads, repeats, native_blas=False):
    try:
        return run_child(__file__, ["--child", side, "--folder", folder, "--workload", workload,
                                    "--threads", threads, "--repeats", repeats],
                         native_blas=native_blas)
    except ChildFailed as failure:
        return {"error": str(failure).splitlines()[-1]}


def compare_llmc(args):
    """calign's training step against llm.c's train_gpt2 (GPT-2 124M, B 4, T 64)."""
    if not args.llmc:
        print("llm.c row skipped: pass --llmc PATH (a checkout of karpathy/llm.c) to time its "
              "train_gpt2.c against calign's training step")
        return
    with tempfile.TemporaryDirectory() as folder:
        build_checkpoint(SHAPES["gpt2-124M"], folder)
        mine = {w: spawn("calign", folder, w, args.threads, args.repeats, args.native_blas)
                for w in ("train-b4t64", "train-b4t64-bf16")}
    failed = [r["error"] for r in mine.values() if "error" in r]
    if failed:
        print(f"llm.c row: calign failed: {failed[0]}")
        return
    theirs, compile_line, losses = llmc_side.step_seconds(args.llmc, args.repeats, args.threads)
    print(f"llm.c built with: {compile_line}")
    print(f"llm.c losses of its first steps: {', '.join(f'{x:.3f}' for x in losses)}")
    for workload, r in mine.items():
        products = "bf16 products" if workload.endswith("bf16") else "float32"
        print(f"gpt2-124M, B 4 x T 64, AdamW, calign {products}: calign {r['seconds']:.3f} "
              f"s/step ({r['kernel']}), llm.c train_gpt2.c {theirs:.3f} s/step "
              f"(OMP_NUM_THREADS={args.threads}): calign {theirs / r['seconds']:.2f}x faster; "
              f"calign peak RSS {r['peak_rss_mib']:.0f} MiB")
        print(f"README row: | gpt2-124M, B 4 x T 64, AdamW, calign {products} | "
              f"{r['seconds']:.3f} | {theirs:.3f} | {theirs / r['seconds']:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=DEFAULT_MODELS)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=WORKLOADS)
    parser.add_argument("--native-blas", action="store_true",
                        help="run calign with OPENBLAS_CORETYPE/L2_SIZE unset")
    parser.add_argument("--llmc", metavar="PATH",
                        help="a checkout of karpathy/llm.c: also time its train_gpt2.c")
    parser.add_argument("--llmc-only", action="store_true",
                        help="run only the llm.c comparison")
    parser.add_argument("--child", dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    import calign

    info = calign.build_info()
    print(f"CPU: {info['cpu']} ({cpu_features_text(info)}), {info['cores']} cores; "
          f"threads: {args.threads}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
          f"{' (unset for calign: --native-blas)' if args.native_blas else ''}; "
          f"batch {BATCH}x{SEQ}; median of {args.repeats}; %sgemm against calign's 1024^3 sgemm "
          "measured in the calign process")
    header = (f"{'model':>10} {'workload':>11} {'calign tok/s':>13} {'torch tok/s':>12} "
              f"{'ratio':>6} {'calign RSS':>11} {'torch RSS':>10} {'calign %sgemm':>14}  kernels")
    if args.llmc_only:
        return compare_llmc(args)
    print(header)
    print("-" * len(header))
    shapes = QUICK if args.quick else {m: SHAPES[m] for m in args.models}
    for name, shape in shapes.items():
        with tempfile.TemporaryDirectory() as folder:
            build_checkpoint(shape, folder)
            for workload in args.workloads:
                mine = spawn("calign", folder, workload, args.threads, args.repeats,
                             args.native_blas)
                ref = spawn("torch", folder, workload, args.threads, args.repeats)
                if "error" in mine or "error" in ref:
                    print(f"{name:>10} {workload:>11}  failed: {mine.get('error') or ref.get('error')}")
                    continue
                if workload.startswith("generate"):
                    batch = int(workload.split("-")[1])
                    tokens = batch * 64
                    weight_bytes = matmul_params(shape)[0] * (2 if "bf16" in workload else 4)
                    limit = batch * mine["copy_gbs"] * 1e9 / weight_bytes
                    flops_note = "-"
                    note = (f"{'':>10} {'':>11} bandwidth limit {limit:.0f} tok/s "
                            f"({weight_bytes / 1e6:.0f} MB of weights a step at "
                            f"{mine['copy_gbs']:.1f} GB/s): calign at "
                            f"{100 * tokens / mine['seconds'] / limit:.0f}%")
                else:
                    tokens = BATCH * SEQ
                    train = workload.startswith("train")
                    achieved = model_flops(shape, train) / mine["seconds"] / 1e9
                    flops_note = f"{100 * achieved / mine['sgemm_gflops']:.0f}%"
                    note = None
                print(f"{name:>10} {workload:>11} {tokens / mine['seconds']:13.0f} "
                      f"{tokens / ref['seconds']:12.0f} {ref['seconds'] / mine['seconds']:5.2f}x "
                      f"{mine['peak_rss_mib']:10.0f}M {ref['peak_rss_mib']:9.0f}M "
                      f"{flops_note:>14}  {mine['kernel']} / {ref['kernel']}")
                if note:
                    print(note)
    compare_llmc(args)


if __name__ == "__main__":
    main()
