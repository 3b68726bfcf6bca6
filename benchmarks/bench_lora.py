"""DPO on a Qwen2.5-0.5B-shaped checkpoint published in bf16: full fine-tune and
LoRA, calign against TRL 1.16 (+ PEFT), same run.

Workload (issue 15's): 24 layers, hidden 896, 14 heads / 2 kv heads,
intermediate 4864, vocabulary 151936, tied embeddings; random weights saved
in bfloat16 as published; 4 pairs a step of chat-length rows (prompt 128 +
chosen 128 + rejected 128 tokens by default); live reference (LoRA: the base
with the adapters off, on both sides); LoRA r 16, alpha 32, all linear
layers. Both sides get the same text records and word-level tokenizer, the
same threads, gradient checkpointing off, and run in their own processes (peak
RSS is each process's). Sides:

  calign           float32 compute (the bf16 weights converted on load)
  calign-bf16      bf16=True: bfloat16 products, and (full fine-tune) a
                   reference whose block weights are kept in bfloat16
  trl-fp32         TRL with the model loaded in float32 and bf16=False
  trl-default      TRL as a user runs it on a CPU: the model loaded as
                   published (bfloat16, transformers 5's dtype="auto") and
                   TRL's default bf16=True (autocast where the CPU has it)

One warm-up step is excluded; the median of the timed steps is reported. A
side still running after --deadline seconds is stopped and reported as a bound
(">"): the time its first step had taken when stopped. That happens to TRL's
default on a CPU without native bf16 products (AVX2 only), where torch's
bf16 matrix product runs about 100x slower than its float32 one.

Run: python benchmarks/bench_lora.py [--steps 2] [--modes full lora]
         [--sides calign calign-bf16 trl-fp32 trl-default] [--prompt 128] [--completion 128]
         [--deadline 1800]
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from common import (ChildFailed, describe_seconds, peak_rss_mib, run_with_deadline,
                    trl_clock, write_word_preferences)

SHAPE = dict(num_hidden_layers=24, hidden_size=896, num_attention_heads=14,
             num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
             tie_word_embeddings=True, max_position_embeddings=32768)
PAIRS = 4
LORA = dict(r=16, lora_alpha=32, target_modules="all-linear")


def build(folder, n_records, prompt, completion):
    import torch
    import transformers

    write_word_preferences(folder, SHAPE["vocab_size"], n_records, prompt, completion)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(pad_token_id=0, eos_token_id=1, bos_token_id=1, **SHAPE)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.to(torch.bfloat16).save_pretrained(folder)  # as published


def settings(args, steps):
    return dict(learning_rate=1e-5, per_device_train_batch_size=PAIRS, max_steps=steps,
                logging_steps=1, beta=0.1, max_length=args.prompt + args.completion,
                gradient_checkpointing=False)


def check_lengths(side, prompt, chosen, rejected, args):
    """Both sides must train on the rows the benchmark claims (a tokenizer
    that splits the words otherwise would make the comparison meaningless)."""
    if (prompt, chosen, rejected) != (args.prompt, args.completion, args.completion):
        raise SystemExit(f"{side} tokenized a record to {prompt} + {chosen} + {rejected} tokens, "
                         f"not {args.prompt} + {args.completion} + {args.completion}")


def run_calign(args, folder, steps):
    import calign

    calign.set_num_threads(args.threads)
    stamps = []

    class Timed(calign.DPOTrainer):
        def _after_optimizer_step(self):
            super()._after_optimizer_step()
            stamps.append(time.perf_counter())
            if len(stamps) == 2:  # the warm-up step is over: start the per-phase clocks
                calign._C.profile(enable=True, reset=True)

    peft_config = calign.LoraConfig(**LORA) if args.mode == "lora" else None
    trainer = Timed(folder, args=calign.DPOConfig(
        output_dir=os.path.join(folder, "calign"), disable_tqdm=True, save_steps=0,
        bf16=args.side == "calign-bf16", **settings(args, steps)),
        train_dataset=os.path.join(folder, "data.jsonl"),
        peft_config=peft_config)
    first = trainer.train_examples[0]
    check_lengths("calign", len(first.prompt_ids), *map(len, first.completions), args=args)
    stamps.append(time.perf_counter())
    trainer.train()
    phases = calign._C.profile(enable=False, reset=True)
    info = calign.build_info()
    precision = "bf16 products" if args.side == "calign-bf16" else "float32"
    return stamps, f"calign, OpenBLAS {info['blas_core']}, {precision}", phases


def run_trl(args, folder, steps):
    import datasets
    import peft
    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    stamps = []

    default = args.side == "trl-default"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, **({} if default else {"dtype": torch.float32}))
    extra = {} if default else {"bf16": False}  # TRL's own default: bf16=True
    records = [json.loads(line) for line in open(os.path.join(folder, "data.jsonl"))]
    config = trl.DPOConfig(output_dir=os.path.join(folder, "trl"), report_to="none",
                           use_cpu=True, save_strategy="no", disable_tqdm=True,
                           **settings(args, steps), **extra)
    # the tokenizer's own class: AutoTokenizer would take Qwen2Tokenizer from the
    # model's config and replace the word-level pre-tokenizer with Qwen's
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(folder, "tokenizer.json"), eos_token="<eos>", pad_token="<pad>")
    trainer = trl.DPOTrainer(
        model=model, args=config, train_dataset=datasets.Dataset.from_list(records),
        processing_class=tokenizer, callbacks=[trl_clock(stamps)],
        peft_config=peft.LoraConfig(**LORA) if args.mode == "lora" else None)
    first = trainer.train_dataset[0]
    check_lengths("TRL", *(len(first[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")),
                  args=args)
    trainer.train()
    return stamps, (f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
                    f"{model.dtype}, bf16={config.bf16}"), None


def torch_gemm_rates(threads):
    """torch's GFLOP/s for one of the model's products (tokens x hidden x
    intermediate) in float32 and bfloat16: why TRL's default is slow or fast here."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 896), torch.randn(896, 4864)
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        start = time.perf_counter()
        for _ in range(3):
            x @ y
        rates[str(dtype).replace("torch.", "")] = 3 * 2 * 1024 * 896 * 4864 / (
            time.perf_counter() - start) / 1e9
    return rates


def child(args):
    if args.side == "gemm":
        return print(json.dumps(torch_gemm_rates(args.threads)))
    run = run_calign if args.side.startswith("calign") else run_trl
    stamps, kernel, phases = run(args, args.folder, args.steps + 1)
    step_seconds = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # first step: warm-up
    if phases is not None:  # per step, and what the clocks did not cover
        phases = {k: v / len(step_seconds) for k, v in phases.items()}
        phases["other"] = sum(step_seconds) / len(step_seconds) - sum(phases.values())
    print(json.dumps({"seconds": statistics.median(step_seconds), "steps": len(step_seconds),
                      "peak_rss_mib": peak_rss_mib(), "kernel": kernel, "phases": phases}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--sides", nargs="+",
                        choices=["calign", "calign-bf16", "trl-fp32", "trl-default"],
                        default=["calign", "trl-fp32", "trl-default"])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--completion", type=int, default=128)
    parser.add_argument("--deadline", type=float, default=1800,
                        help="seconds a side may run; one stopped then is reported as a bound "
                             "(TRL's bf16 autocast on a CPU without native bf16 products)")
    parser.add_argument("--child", dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    import calign

    info = calign.build_info()
    P, C = args.prompt, args.completion
    tokens = PAIRS * 2 * (P + C)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        build(folder, PAIRS * (args.steps + 1), P, C)
        for mode in args.modes:
            for side in args.sides:
                cmd = ["--child", side, "--mode", mode, "--folder", folder, "--steps",
                       args.steps, "--threads", args.threads, "--prompt", P, "--completion", C]
                try:
                    r = results[mode, side] = run_with_deadline(__file__, cmd, args.deadline)
                except ChildFailed as failure:  # e.g. out of memory: say so, run the others
                    print(f"{mode} {side} failed:\n{str(failure)[-2000:]}", flush=True)
                    continue
                print(f"{mode:>4} {side:>11}: {describe_seconds(r)} s/step, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB ({r['kernel']})", flush=True)
    if any(side.startswith("trl") for side in args.sides):
        rates = run_with_deadline(__file__, ["--child", "gemm", "--threads", args.threads], 600)
        print("torch GFLOP/s, 1024 x 896 x 4864 product: " + ", ".join(
            f"{dtype} {rate:.1f}" for dtype, rate in rates.items()))
    print(f"\nCPU: {info['cpu']}, {info['cores']} cores; threads: {args.threads}; Qwen2.5-0.5B "
          f"shape, bf16 checkpoint; {PAIRS} pairs x ({P} + {C} + {C}) tokens; live reference; "
          f"gradient checkpointing off; median of {args.steps} steps after 1 warm-up")
    print(f"{'mode':>4} {'side':>11} {'s/step':>8} {'tokens/s':>9} {'peak RSS MiB':>13} "
          f"{'calign speed':>13} {'calign RSS':>11}")
    for (mode, side), r in results.items():
        mine = results.get((mode, "calign"))
        bound = ">" if r.get("unfinished") else ""  # a side stopped at the deadline
        speed = f"{bound}{r['seconds'] / mine['seconds']:.2f}x" if mine and side != "calign" else ""
        rss = f"{mine['peak_rss_mib'] / r['peak_rss_mib']:.2f}x" if mine and side != "calign" \
            else ""
        rate = f"{'<' if bound else ''}{tokens / r['seconds']:.1f}"
        print(f"{mode:>4} {side:>11} {describe_seconds(r):>8} {rate:>9} "
              f"{r['peak_rss_mib']:13.0f} {speed:>13} {rss:>11}")
    for (mode, side), r in results.items():
        if r.get("phases"):
            total = sum(r["phases"].values())
            print(f"calign {mode} step by phase (mean s/step): " + ", ".join(
                f"{k} {v:.2f} ({100 * v / total:.0f}%)" for k, v in r["phases"].items()))


if __name__ == "__main__":
    main()
