"""Peak memory and time of loading a ~100M-parameter checkpoint, by dtype.

calign converts a bfloat16 or float16 checkpoint to float32 one tensor at a
time, so loading should need the float32 parameters plus about one tensor.
Each load runs in its own process: its peak RSS (VmHWM, reset just before the
load) minus its RSS then is what loading took, set against the float32 parameters (4 bytes each)
and the largest tensor. calign's gradient buffer is allocated zeroed and not
touched by a load, so it takes no memory yet. transformers' from_pretrained
with dtype=torch.float32 (its upcast of the same file) is the reference.

Run: python benchmarks/bench_checkpoint_load.py [folder for the checkpoints]
"""

import json
import os
import sys
import tempfile
import time

from common import ChildFailed, run_child

# A Llama shape of about 106M parameters, untied (embedding and lm_head are
# the largest tensors: 32000 x 768).
CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=768,
              num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=12,
              intermediate_size=2048, vocab_size=32000, max_position_embeddings=1024,
              tie_word_embeddings=False)
DTYPES = ("bfloat16", "float16", "float32")


def status_mib(field):
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def rss_before_load():
    """The RSS now, with the peak reset to it. (getrusage's ru_maxrss will not
    do: a process started by vfork and exec inherits its parent's peak.)"""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mib("VmRSS")


def child(side, path):
    if side == "calign":
        import calign

        before = rss_before_load()
        start = time.perf_counter()
        model = calign.Model.from_pretrained(path)
        seconds = time.perf_counter() - start
        n_params = model.num_parameters()
    else:
        import torch
        import transformers

        before = rss_before_load()
        start = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        seconds = time.perf_counter() - start
        n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"growth_mib": status_mib("VmHWM") - before, "seconds": seconds,
                      "params": n_params}))


def spawn(*args):
    try:
        return run_child(__file__, ["--child", *args])
    except ChildFailed as failure:
        raise SystemExit(str(failure)[-3000:])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3])
    import calign

    info = calign.build_info()
    print(f"CPU: {info['cpu']}, {info['cores']} cores; threads {info['threads']}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    folder = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="calign-load-")
    model = calign.Model.from_config(CONFIG, seed=0)
    n_params = model.num_parameters()
    largest_mib = CONFIG["vocab_size"] * CONFIG["hidden_size"] * 4 / 2**20
    for dtype in DTYPES:
        if not os.path.isdir(os.path.join(folder, dtype)):
            model.save_pretrained(os.path.join(folder, dtype), dtype=dtype)
    del model
    params_mib = 4 * n_params / 2**20
    print(f"{n_params / 1e6:.1f}M parameters: float32 parameters {params_mib:.0f} MiB, "
          f"largest tensor {largest_mib:.0f} MiB in float32")
    print(f"{'checkpoint':>10} {'side':>12} {'load growth MiB':>16} {'- float32 params':>17} "
          f"{'/ largest tensor':>17} {'seconds':>8}")
    for dtype in DTYPES:
        for side in ("calign", "transformers"):
            r = spawn(side, os.path.join(folder, dtype))
            beyond = r["growth_mib"] - params_mib
            print(f"{dtype:>10} {side:>12} {r['growth_mib']:16.0f} {beyond:17.0f} "
                  f"{beyond / largest_mib:17.2f} {r['seconds']:8.2f}")


if __name__ == "__main__":
    main()
