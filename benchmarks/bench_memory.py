"""DPO memory against vocabulary size, and precomputed against live reference speed.

1. Peak RSS of calign DPO training (a Llama shape, 4 pairs of 64 + 64 + 64
   tokens) at vocab 32000 and 128000, minus what scales with the parameters
   (weights, gradients, AdamW's two moments and the reference copy: 5 x 4
   bytes per parameter): the rest should not grow with the vocabulary, since
   the logits are computed a bounded chunk at a time.
2. Seconds per step of the 20M-parameter GPT-2 shape with a live reference
   and with precompute_ref_log_probs=True, in the same run.

Each measurement runs in its own process. Run: python benchmarks/bench_memory.py
"""

import json
import os
import statistics
import sys
import tempfile
import time

from common import ChildFailed, peak_rss_mib, run_child

PAIRS, PROMPT, COMPLETION = 4, 64, 64


def records(vocab, n, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{"prompt_input_ids": rng.integers(2, vocab, PROMPT).tolist(),
             "chosen_input_ids": rng.integers(2, vocab, COMPLETION).tolist(),
             "rejected_input_ids": rng.integers(2, vocab, COMPLETION).tolist()}
            for _ in range(n)]


def child(kind, vocab, steps, precompute):
    import calign

    if kind == "llama":
        config = dict(model_type="llama", hidden_size=256, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=688,
                      vocab_size=vocab, max_position_embeddings=512)
    else:
        config = dict(model_type="gpt2", n_layer=6, n_embd=384, n_head=6, vocab_size=vocab,
                      n_positions=512)
    model = calign.Model.from_config(config, seed=0)
    stamps = []

    class Timed(calign.DPOTrainer):
        def _after_optimizer_step(self):
            super()._after_optimizer_step()
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as folder:
        trainer = Timed(model, args=calign.DPOConfig(
            output_dir=folder, per_device_train_batch_size=PAIRS, max_steps=steps,
            save_steps=0, disable_tqdm=True, precompute_ref_log_probs=precompute,
            max_length=None), train_dataset=records(vocab, PAIRS * steps))
        stamps.append(time.perf_counter())
        trainer.train()
    per_step = [b - a for a, b in zip(stamps, stamps[1:])][1:]
    print(json.dumps({"peak_rss_mib": peak_rss_mib(),
                      "params": model.num_parameters(),
                      "seconds": statistics.median(per_step)}))


def spawn(*args):
    try:
        return run_child(__file__, ["--child", *args])
    except ChildFailed as failure:
        raise SystemExit(str(failure)[-3000:])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, vocab, steps, precompute = sys.argv[2:6]
        return child(kind, int(vocab), int(steps), precompute == "True")
    import calign

    info = calign.build_info()
    print(f"CPU: {info['cpu']}, {info['cores']} cores; threads {info['threads']}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    rows = {}
    for vocab in (32000, 128000):
        r = spawn("llama", vocab, 4, False)
        rest = r["peak_rss_mib"] - 5 * 4 * r["params"] / 2**20
        rows[vocab] = rest
        print(f"llama vocab {vocab:>6}: {r['params'] / 1e6:6.1f}M params, peak RSS "
              f"{r['peak_rss_mib']:7.0f} MiB, without parameter-sized state {rest:6.0f} MiB")
    print(f"growth of the rest from 32k to 128k vocab: "
          f"{100 * (rows[128000] / rows[32000] - 1):+.1f}%")
    live = spawn("gpt2", 50257, 6, False)
    pre = spawn("gpt2", 50257, 6, True)
    print(f"gpt2 20M DPO step: live reference {live['seconds']:.3f} s, precomputed "
          f"{pre['seconds']:.3f} s -> {live['seconds'] / pre['seconds']:.2f}x faster")


if __name__ == "__main__":
    main()
