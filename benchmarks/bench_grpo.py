"""GRPO steps, calign against TRL 1.16's GRPOTrainer (transformers generation),
same run, each side in its own process.

Workload (issue 17's): 8 prompts of 64 tokens a step, G = 8 completions each
of up to 128 new tokens (random weights: the EOS is rare, most completions
run to the end), a cheap Python reward (the share of even-numbered words),
TRL's defaults otherwise (loss "dapo", beta 0: no reference model,
temperature 1, no top-k/top-p). Models: a GPT-2 124M shape (12 layers, hidden
768, vocabulary 50257) and a Llama 135M class (SmolLM-135M's shape: 30
layers, hidden 576, 9 heads / 3 kv heads, intermediate 1536, vocabulary
49152, tied), random weights saved as published (GPT-2 float32, SmolLM
bfloat16). Sides:

  calign        float32 compute; the C sampler (prompt prefilled once for its
                G samples, its log-probs kept) and the fused GRPO kernel
  trl-fp32      TRL with the model in float32, bf16=False
  trl-default   TRL as a user runs it on a CPU: the model as published and
                TRL's default bf16=True (autocast where the CPU has it)

Tokens/s counts generated plus trained tokens: the sampled completion tokens,
plus every row's prompt + completion tokens the update trains on, over the
step's wall time. One warm-up step is excluded; the median of the timed steps
is reported. A side still running after --deadline seconds is stopped and
reported as a bound (">"). calign's step is split into sampling, scoring
(rewards) and update (forward, fused loss, backward, optimizer).

Run: python benchmarks/bench_grpo.py [--models gpt2 llama] [--steps 1]
         [--sides calign trl-fp32 trl-default] [--deadline 1800]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from common import (ChildFailed, describe_seconds, peak_rss_mib, run_with_deadline,
                    trl_clock, write_word_preferences)

PROMPTS, G, PROMPT_TOKENS, NEW_TOKENS = 8, 8, 64, 128
SHAPES = {
    "gpt2": ("GPT2Config", dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                n_positions=1024), "float32"),
    "llama": ("LlamaConfig", dict(num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                                  num_key_value_heads=3, intermediate_size=1536,
                                  vocab_size=49152, tie_word_embeddings=True,
                                  max_position_embeddings=2048), "bfloat16"),
}


def build(folder, name):
    import torch
    import transformers

    config_class, shape, dtype = SHAPES[name]
    write_word_preferences(folder, shape["vocab_size"], PROMPTS, PROMPT_TOKENS, 2)
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                                 **shape)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.to(getattr(torch, dtype)).save_pretrained(folder)


def even_words(completions, **kwargs):
    """The reward: the share of the completion's words with an even number."""
    return [sum(int(w[1:]) % 2 == 0 for w in c.split() if w[1:].isdigit()) / max(1, len(c.split()))
            for c in completions]


def settings(steps):
    return dict(learning_rate=1e-6, per_device_train_batch_size=PROMPTS * G, num_generations=G,
                max_completion_length=NEW_TOKENS, max_steps=steps, logging_steps=1,
                gradient_checkpointing=False, seed=0)


def prompts(folder):
    return [{"prompt": json.loads(line)["prompt"]}
            for line in open(os.path.join(folder, "data.jsonl"))]


def tokens_of(rows):
    """Generated + trained tokens of a step's rows [(prompt length, completion length)]."""
    return sum(c for _, c in rows) + sum(p + c for p, c in rows)


def run_calign(args, folder, steps):
    import calign
    from calign.trainers import rollouts

    calign.set_num_threads(args.threads)
    clocks, stamps, step_tokens = {"sampling": 0.0, "scoring": 0.0}, [], []
    sample = rollouts.sample

    def timed_sample(*a, **k):
        start = time.perf_counter()
        rollout = sample(*a, **k)
        clocks["sampling"] += time.perf_counter() - start
        step_tokens.append(tokens_of([(len(e.prompt_ids), len(c)) for e, c in
                                      zip(rollout.examples, rollout.completion_ids)]))
        return rollout

    rollouts.sample = timed_sample

    def timed_reward(completions, **kwargs):
        start = time.perf_counter()
        out = even_words(completions)
        clocks["scoring"] += time.perf_counter() - start
        return out

    timed_reward.__name__ = "even_words"

    class Timed(calign.GRPOTrainer):
        def _after_optimizer_step(self):
            super()._after_optimizer_step()
            stamps.append(time.perf_counter())
            if len(stamps) == 2:  # the warm-up step is over
                clocks.update(sampling=0.0, scoring=0.0)

    trainer = Timed(folder, reward_funcs=timed_reward, args=calign.GRPOConfig(
        output_dir=os.path.join(folder, "calign"), disable_tqdm=True, save_steps=0,
        **settings(steps)), train_dataset=prompts(folder))
    stamps.append(time.perf_counter())
    trainer.train()
    timed = len(stamps) - 2
    step = (stamps[-1] - stamps[1]) / timed
    phases = {k: v / timed for k, v in clocks.items()}
    phases["update"] = step - sum(phases.values())
    info = calign.build_info()
    return stamps, step_tokens, f"calign, OpenBLAS {info['blas_core']}, float32", phases


def run_trl(args, folder, steps):
    import datasets
    import torch
    import transformers
    import trl

    torch.set_num_threads(args.threads)
    stamps, step_tokens = [], []

    default = args.side == "trl-default"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, **({} if default else {"dtype": torch.float32}))
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(folder, "tokenizer.json"), eos_token="<eos>",
        pad_token="<pad>")
    config = trl.GRPOConfig(output_dir=os.path.join(folder, "trl"), report_to="none",
                            use_cpu=True, save_strategy="no", disable_tqdm=True,
                            **settings(steps), **({} if default else {"bf16": False}))

    class Counted(trl.GRPOTrainer):
        def _generate(self, prompts):
            out = super()._generate(prompts)
            step_tokens.append(tokens_of([(len(p), len(c)) for p, c in zip(out[0], out[1])]))
            return out

    trainer = Counted(model=model, reward_funcs=even_words, args=config,
                      train_dataset=datasets.Dataset.from_list(prompts(folder)),
                      processing_class=tokenizer, callbacks=[trl_clock(stamps)])
    trainer.train()
    return stamps, step_tokens, (f"torch {torch.__version__} "
                                 f"({torch.backends.cpu.get_cpu_capability()}), {model.dtype}, "
                                 f"bf16={config.bf16}"), None


def child(args):
    run = run_calign if args.side == "calign" else run_trl
    stamps, step_tokens, kernel, phases = run(args, args.folder, args.steps + 1)
    seconds = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # first step: warm-up
    rates = [t / s for t, s in zip(step_tokens[1:], seconds)]
    print(json.dumps({"seconds": statistics.median(seconds), "steps": len(seconds),
                      "tokens_per_second": statistics.median(rates),
                      "generated_per_step": step_tokens[1:], "peak_rss_mib": peak_rss_mib(),
                      "kernel": kernel, "phases": phases}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), default=["gpt2", "llama"])
    parser.add_argument("--sides", nargs="+", choices=["calign", "trl-fp32", "trl-default"],
                        default=["calign", "trl-fp32", "trl-default"])
    parser.add_argument("--deadline", type=float, default=1800,
                        help="seconds a side may run; one stopped then is reported as a bound")
    parser.add_argument("--child", dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)

    import calign

    info = calign.build_info()
    print(f"GRPO, {PROMPTS} prompts x G={G}, prompts {PROMPT_TOKENS} tokens, up to {NEW_TOKENS} "
          f"new tokens; {args.threads} threads; calign OpenBLAS {info['blas_core']} "
          f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    results = {}
    for name in args.models:
        with tempfile.TemporaryDirectory() as folder:
            build(folder, name)
            for side in args.sides:
                cmd = ["--child", side, "--folder", folder, "--steps", args.steps,
                       "--threads", args.threads]
                try:
                    r = results[name, side] = run_with_deadline(__file__, cmd, args.deadline)
                except ChildFailed as failure:
                    print(f"{name} {side}: failed: {str(failure)[-400:]}", file=sys.stderr)
                    continue
                rate = f"{r['tokens_per_second']:.0f} tok/s" if "tokens_per_second" in r else \
                    "tok/s unknown"
                print(f"{name:>5} {side:>11}: {describe_seconds(r)} s/step, {rate}, peak RSS "
                      f"{r['peak_rss_mib']:.0f} MiB ({r['kernel']})", flush=True)
                if r.get("phases"):
                    print("      step split: " + ", ".join(
                        f"{k} {v:.2f} s" for k, v in r["phases"].items()), flush=True)
    print("\nratios (calign / TRL): tokens/s higher is better, RSS lower is better")
    for name in args.models:
        ours = results.get((name, "calign"))
        for side in ("trl-fp32", "trl-default"):
            theirs = results.get((name, side))
            if not ours or not theirs:
                continue
            ratio = theirs["seconds"] / ours["seconds"]
            if "tokens_per_second" in theirs:
                speed = f"{ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}x"
            elif theirs.get("warmup_only"):
                speed = f"~{ratio:.2f}x (step times; TRL's warm-up step only)"
            else:  # stopped during its first step
                speed = f">{ratio:.2f}x (step times; TRL's first step unfinished)"
            memory = ("n/a (its peak before it was stopped)" if theirs.get("unfinished") else
                      f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x")
            print(f"{name:>5} vs {side:>11}: tokens/s {speed}, peak RSS {memory}")


if __name__ == "__main__":
    main()
