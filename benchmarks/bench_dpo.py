"""DPO training: calign's DPOTrainer versus TRL's DPOTrainer (torch CPU), same run.

Workload (the performance issue's): a GPT-2 or Llama shape (llama-135M:
SmolLM-135M's, 30 layers, hidden 576, 9 / 3 heads, vocabulary 49152, tied)
with random weights, 4 pairs
a step, prompt 64 + chosen 64 + rejected 64 tokens (--prompt/--completion
change them), live reference model (--precompute: reference log-probs computed
before training, on both sides). Both sides get the same text records and the
same word-level tokenizer (one token a word), the same thread count, the same
gradient checkpointing setting (off unless --gradient-checkpointing; TRL 1.16
turns it on by default), and run in their own processes so peak RSS is honest.
One warm-up step is excluded; the median of the timed steps is reported.
Tokens per step count each pair as prompt+chosen+prompt+rejected (what a
padded batch holds), the same number on both sides. Both sides compute in
float32 (TRL's default bf16 autocast is switched off), or with --bf16 both
run bf16=True: TRL's default (torch's CPU autocast) and calign's bfloat16
products. A side still running after --deadline seconds is stopped and its
time so far is reported as a lower bound (without AVX512-BF16, torch's
bfloat16 product is a slow path).

Run: python benchmarks/bench_dpo.py [--steps 5] [--model gpt2-20M|gpt2-124M|llama-135M]
         [--native-blas] [--prompt 64] [--completion 64] [--gradient-checkpointing]
         [--precompute] [--bf16] [--deadline 1800]
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from common import (ChildFailed, cpu_features_text, describe_seconds, peak_rss_mib, run_child,
                    run_with_deadline, trl_clock, write_word_preferences)

MODELS = {
    "gpt2-20M": dict(n_layer=6, n_embd=384, n_head=6),
    "gpt2-124M": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-tiny": dict(n_layer=2, n_embd=64, n_head=2),
    # SmolLM-135M's shape
    "llama-135M": dict(n_layer=30, n_embd=576, n_head=9, n_kv_head=3, intermediate=1536,
                       vocab=49152),
}
PAIRS = 4


def vocab_of(model_name):
    return MODELS[model_name].get("vocab", 50257)


def build(folder, model_name, n_records, prompt, completion):
    import torch
    import transformers

    shape, vocab = MODELS[model_name], vocab_of(model_name)
    records = write_word_preferences(folder, vocab, n_records, prompt, completion)
    torch.manual_seed(0)
    positions = max(512, prompt + completion)
    if model_name.startswith("llama"):
        config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=shape["n_embd"], intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["n_layer"], num_attention_heads=shape["n_head"],
            num_key_value_heads=shape["n_kv_head"], max_position_embeddings=positions,
            tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    else:
        config = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, pad_token_id=0,
                                         eos_token_id=1, bos_token_id=1, **shape)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return records


def settings(args, steps):
    return dict(learning_rate=1e-5, per_device_train_batch_size=PAIRS, max_steps=steps,
                logging_steps=1, beta=0.1, max_length=args.prompt + args.completion,
                save_steps=0, gradient_checkpointing=args.gradient_checkpointing,
                precompute_ref_log_probs=args.precompute, bf16=args.bf16)


def run_calign(args, folder, steps, threads):
    import calign

    calign.set_num_threads(threads)
    stamps = []

    class Timed(calign.DPOTrainer):
        def _after_optimizer_step(self):
            super()._after_optimizer_step()
            stamps.append(time.perf_counter())
            if len(stamps) == 2:  # the warm-up step is over: start the per-phase clocks
                calign._C.profile(enable=True, reset=True)

    trainer = Timed(folder, args=calign.DPOConfig(output_dir=os.path.join(folder, "calign"),
                                                  disable_tqdm=True, **settings(args, steps)),
                    train_dataset=os.path.join(folder, "data.jsonl"))
    stamps.append(time.perf_counter())
    trainer.train()
    phases = calign._C.profile(enable=False, reset=True)
    info = calign.build_info()
    # the achieved-FLOP/s reference: calign's own product (bf16 products on
    # their backend under --bf16), measured in this process
    phases["sgemm_gflops"] = calign._C.sgemm_gflops(1024, 1024, 1024, 5, bf16=args.bf16)
    phases["params"] = trainer.model.num_parameters()
    kernel = f"OpenBLAS {info['blas_core']}"
    if args.bf16:
        kernel += f", bf16 products {calign.bf16_backend()}"
        if info["onednn"]:
            kernel += f" (oneDNN {info['onednn']})"
    return stamps, kernel, phases


def run_trl(args, folder, steps, threads):
    import datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(threads)
    stamps = []
    records = [json.loads(line) for line in open(os.path.join(folder, "data.jsonl"))]
    trainer = trl.DPOTrainer(
        model=transformers.AutoModelForCausalLM.from_pretrained(folder),
        args=trl.DPOConfig(output_dir=os.path.join(folder, "trl"), report_to="none",
                           use_cpu=True, save_strategy="no", disable_tqdm=True,
                           **settings(args, steps)),
        train_dataset=datasets.Dataset.from_list(records),
        processing_class=transformers.AutoTokenizer.from_pretrained(folder),
        callbacks=[trl_clock(stamps)])
    trainer.train()
    return stamps, f"torch MKL, {torch.backends.cpu.get_cpu_capability()}", None


def child(args):
    run = run_calign if args.side == "calign" else run_trl
    stamps, kernel, phases = run(args, args.folder, args.steps + 1, args.threads)
    step_seconds = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # first step is warm-up
    extra = {}
    if phases is not None:  # per step, and what the clocks did not cover
        extra = {k: phases.pop(k) for k in ("sgemm_gflops", "params")}
        phases = {k: v / len(step_seconds) for k, v in phases.items()}
        phases["other"] = sum(step_seconds) / len(step_seconds) - sum(phases.values())
    print(json.dumps({"seconds": statistics.median(step_seconds), "steps": len(step_seconds),
                      "peak_rss_mib": peak_rss_mib(),
                      "kernel": kernel, "phases": phases, **extra}))


def spawn(side, folder, args, bf16=None):
    bf16 = args.bf16 if bf16 is None else bf16
    cmd = ["--child", side, "--folder", folder, "--steps", args.steps, "--threads", args.threads,
           "--prompt", args.prompt, "--completion", args.completion]
    cmd += ["--gradient-checkpointing"] * args.gradient_checkpointing
    cmd += ["--precompute"] * args.precompute + ["--bf16"] * bf16 + ["--model", args.model]
    try:
        if side == "trl":
            return run_with_deadline(__file__, cmd, args.deadline)
        return run_child(__file__, cmd, native_blas=args.native_blas)
    except ChildFailed as failure:
        raise SystemExit(f"{side} failed:\n{str(failure)[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-20M")
    parser.add_argument("--native-blas", action="store_true",
                        help="run calign with OPENBLAS_CORETYPE/L2_SIZE unset")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--completion", type=int, default=64, help="tokens of each completion")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="gradient checkpointing on both sides (TRL's default)")
    parser.add_argument("--precompute", action="store_true",
                        help="precompute_ref_log_probs on both sides")
    parser.add_argument("--bf16", action="store_true",
                        help="bf16=True on both sides (TRL's default on a CPU)")
    parser.add_argument("--deadline", type=float, default=1800,
                        help="stop TRL's side after this many seconds (its time is then a bound)")
    parser.add_argument("--child", dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    import calign

    info = calign.build_info()
    P, C = args.prompt, args.completion
    tokens = PAIRS * 2 * (P + C)
    with tempfile.TemporaryDirectory() as folder:
        build(folder, args.model, PAIRS * (args.steps + 1), P, C)
        mine = spawn("calign", folder, args)
        theirs = spawn("trl", folder, args)
        # under --bf16, TRL in float32 too: the second reference
        theirs32 = spawn("trl", folder, args, bf16=False) if args.bf16 else None
    print(f"CPU: {info['cpu']} ({cpu_features_text(info)}), {info['cores']} cores; "
          f"threads: {args.threads}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
          f"{' (unset for calign)' if args.native_blas else ''}; {args.model}; {PAIRS} pairs x "
          f"({P} + {C} + {C}) tokens; {'precomputed' if args.precompute else 'live'} reference; "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
          f"{'bf16=True' if args.bf16 else 'float32'} on both sides; median of "
          f"{mine['steps']} steps after 1 warm-up")
    print(f"{'side':>7} {'s/step':>8} {'tokens/s':>9} {'peak RSS MiB':>13}  kernel")
    bound = ">" if theirs.get("unfinished") else ""  # TRL was stopped at the deadline
    sides = [("calign", mine), ("TRL", theirs)] + [("TRL f32", theirs32)] * args.bf16
    for side, r in sides:
        print(f"{side:>7} {describe_seconds(r):>8} {tokens / r['seconds']:9.0f} "
              f"{r['peak_rss_mib']:13.0f}  {r['kernel']}")
    speed = f"{bound}{theirs['seconds'] / mine['seconds']:.2f}x"
    print(f"ratio: calign {speed} TRL's tokens/s, "
          f"{mine['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x its peak RSS"
          f"{' (TRL stopped during its first step: its peak so far)' if bound else ''}")
    if theirs32:
        print(f"ratio to TRL float32: calign {theirs32['seconds'] / mine['seconds']:.2f}x its "
              f"tokens/s, {mine['peak_rss_mib'] / theirs32['peak_rss_mib']:.2f}x its peak RSS")
    # model FLOPs of a step: 6 N per packed token for the policy, 2 N for a live
    # reference, plus attention (4 L d T^2 per sequence forward, 3x for training);
    # what checkpointing recomputes is not counted
    config = dict(MODELS[args.model])
    packed = PAIRS * (P + 2 * C)
    passes = 3 if args.precompute else 4
    attention = 4 * config["n_layer"] * config["n_embd"] * (P + 2 * C) ** 2 * PAIRS
    flops = 2 * passes * mine["params"] * packed + passes * attention
    sgemm_share = 100 * flops / mine["seconds"] / 1e9 / mine["sgemm_gflops"]
    product = "bf16 product" if args.bf16 else "sgemm"
    print(f"calign achieved {flops / mine['seconds'] / 1e9:.0f} GFLOP/s = {sgemm_share:.0f}% of "
          f"its in-run {product} ({mine['sgemm_gflops']:.0f} GFLOP/s at 1024^3)")
    total = sum(mine["phases"].values())
    print("calign step by phase (mean s/step): " + ", ".join(
        f"{k} {v:.3f} ({100 * v / total:.0f}%)" for k, v in mine["phases"].items()))
    label = ", ".join([args.model, f"{P}+{C}+{C}"] + ["precomputed ref"] * args.precompute +
                      ["checkpointing"] * args.gradient_checkpointing + ["bf16"] * args.bf16 +
                      ["native" if args.native_blas else "Haswell kernel"])
    print(f"README row: | {label} | {tokens / mine['seconds']:.0f} | "
          f"{'<' if bound else ''}{tokens / theirs['seconds']:.0f} | {speed} | "
          f"{mine['peak_rss_mib']:.0f} / {theirs['peak_rss_mib']:.0f} MiB "
          f"({mine['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x) | {sgemm_share:.0f}% |")


if __name__ == "__main__":
    main()
