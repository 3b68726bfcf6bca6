"""What the benchmarks do the same way: time a step, read peak memory, run
one side in a process of its own (so that its peak RSS is its own)."""

import json
import os
import resource
import statistics
import subprocess
import sys
import time


def median_seconds(step, repeats):
    """Median wall time of `repeats` calls of step, after one untimed warm-up
    call (first-touch allocations, lazy initialisation)."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_features_text(info):
    """calign.build_info()'s CPU features as 'avx2 fma, no avx512f ...'."""
    features = info.get("cpu_features", {})
    have = [k for k, v in features.items() if v]
    lacks = [k for k, v in features.items() if not v]
    return " ".join(have) + (", no " + " ".join(lacks) if lacks else "")


def copy_bandwidth(floats=100_000_000, repeats=5):
    """GB/s (read + write) of NumPy copying a float32 array of `floats` (one
    thread): the memory bandwidth a process gets."""
    import numpy as np

    source = np.ones(floats, np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    start = time.perf_counter()
    for _ in range(repeats):
        np.copyto(target, source)
    return 2 * source.nbytes * repeats / (time.perf_counter() - start) / 1e9


def peak_rss_mib():
    """This process's peak resident memory (VmHWM of its own address space:
    getrusage's ru_maxrss would carry a large parent's peak into a child
    started by vfork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ChildFailed(RuntimeError):
    """A benchmark child exited with an error; the message is its stderr."""


def run_child(script, args, native_blas=False, **env):
    """Runs `python script *args` and returns its last output line, parsed as
    JSON. native_blas unsets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, so that
    OpenBLAS picks its kernel for the CPU; env adds variables."""
    environment = dict(os.environ, **env)
    if native_blas:
        environment.pop("OPENBLAS_CORETYPE", None)
        environment.pop("OPENBLAS_L2_SIZE", None)
    out = subprocess.run([sys.executable, os.path.abspath(script), *map(str, args)],
                         env=environment, capture_output=True, text=True)
    if out.returncode != 0:
        raise ChildFailed(out.stderr.strip() or "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_word_preferences(folder, vocab, n_records, prompt, completion):
    """A word-level tokenizer of `vocab` entries (<pad> = 0, <eos> = 1, w0,
    w1, ...) and data.jsonl with n_records random preference records of
    `prompt` words and completions of `completion` tokens (completion - 1 words
    and the EOS both trainers append), seeded. Returns the records."""
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(vocab - 2)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["<pad>", "<eos>"])
    backend.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<eos>", "pad_token": "<pad>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    rng = np.random.default_rng(0)

    def text(n):
        return " ".join(f"w{i}" for i in rng.integers(0, vocab - 2, n))

    records = [{"prompt": text(prompt), "chosen": " " + text(completion - 1),
                "rejected": " " + text(completion - 1)} for _ in range(n_records)]
    with open(os.path.join(folder, "data.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def _json_objects(text):
    """The lines of text that are JSON objects (a side may print others, such
    as a Python dict of logs)."""
    objects = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            objects.append(value)
    return objects


def run_with_deadline(script, cmd, deadline):
    """The last JSON line of `python script *cmd`, a benchmark side. A side
    still running after `deadline` seconds is stopped and reported with the
    time its first step had taken so far (a lower bound on its step time:
    the side prints {"first_step_began": time.time()} when it starts one) and
    its peak RSS until then; or, when its first step ended ({"step_ended":
    time.time()}), that step's time, marked warmup_only."""
    process = subprocess.Popen([sys.executable, os.path.abspath(script), *map(str, cmd)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        with open(f"/proc/{process.pid}/status") as f:
            peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
        process.kill()
        out, _ = process.communicate()
        marks = _json_objects(out)
        began = [m["first_step_began"] for m in marks if "first_step_began" in m]
        ended = [m["step_ended"] for m in marks if "step_ended" in m]
        if not began:
            raise ChildFailed(f"no step began within {deadline:.0f} s")
        if ended:  # the first (warm-up) step finished: its time, not a bound
            return {"seconds": ended[0] - began[0], "warmup_only": True, "peak_rss_mib": peak,
                    "kernel": "stopped after its first (warm-up) step"}
        return {"seconds": time.time() - began[0], "unfinished": True, "peak_rss_mib": peak,
                "kernel": "stopped during its first step"}
    if process.returncode != 0:
        raise ChildFailed(err.strip() or "failed")
    return json.loads(out.strip().splitlines()[-1])


def trl_clock(stamps):
    """A transformers TrainerCallback appending each step's end time to
    `stamps` (the first entry: when the first step began), and printing the
    marks run_with_deadline reads."""
    import transformers

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not stamps:
                stamps.append(time.perf_counter())
                print(json.dumps({"first_step_began": time.time()}), flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())
            print(json.dumps({"step_ended": time.time()}), flush=True)

    return Clock()


def describe_seconds(result):
    """A side's seconds, ">"-prefixed when it was stopped (a lower bound),
    marked when they are its warm-up step's only."""
    seconds = f"{'>' if result.get('unfinished') else ''}{result['seconds']:.2f}"
    return seconds + (" (its warm-up step)" if result.get("warmup_only") else "")
