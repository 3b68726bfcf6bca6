"""llm.c's CPU trainer (train_gpt2.c) as a benchmark side: bench_engine --llmc PATH.

PATH is a checkout of https://github.com/karpathy/llm.c. Its train_gpt2 is
built with its own Makefile (its flags: -Ofast, -march=native where the
compiler takes it, OpenMP), then run in a scratch folder holding random GPT-2
124M weights and random tokens written in llm.c's file formats (model header
20240326 version 3, data header 20240520 version 1; no tokenizer file, which
it does without). It trains with B 4, T 64 and AdamW and prints each step's
time; its evaluation and sampling run between steps and are not timed. It is
stopped once enough steps are printed. No llm.c code is copied here."""

import os
import re
import statistics
import subprocess
import tempfile

import numpy as np

# GPT-2 124M as llm.c lays it out: vocabulary padded to a multiple of 128
MAX_T, VOCAB, PADDED_VOCAB, LAYERS, HEADS, CHANNELS = 1024, 50257, 50304, 12, 12, 768
STEP_LINE = re.compile(r"step (\d+): train loss (\S+) \(took ([0-9.]+) ms\)")


def parameter_sizes():
    """The sizes of llm.c's 16 parameter tensors in file order, and whether
    each is a layer norm weight (set to 1)."""
    C, L, maxT, Vp = CHANNELS, LAYERS, MAX_T, PADDED_VOCAB
    return [(Vp * C, False), (maxT * C, False), (L * C, True), (L * C, False),
            (L * 3 * C * C, False), (L * 3 * C, False), (L * C * C, False), (L * C, False),
            (L * C, True), (L * C, False), (L * 4 * C * C, False), (L * 4 * C, False),
            (L * C * 4 * C, False), (L * C, False), (C, True), (C, False)]


def write_checkpoint(path, seed=0):
    rng = np.random.default_rng(seed)
    header = np.zeros(256, np.int32)
    header[:8] = [20240326, 3, MAX_T, VOCAB, LAYERS, HEADS, CHANNELS, PADDED_VOCAB]
    with open(path, "wb") as f:
        f.write(header.tobytes())
        for size, is_norm_weight in parameter_sizes():
            values = np.ones(size, np.float32) if is_norm_weight else \
                rng.normal(0.0, 0.02, size).astype(np.float32)
            f.write(values.tobytes())


def write_tokens(path, n, seed):
    header = np.zeros(256, np.int32)
    header[:3] = [20240520, 1, n]
    tokens = np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.uint16)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def build(checkout):
    """Builds train_gpt2 in the checkout; returns its path and the flags make used."""
    made = subprocess.run(["make", "train_gpt2"], cwd=checkout, capture_output=True, text=True)
    if made.returncode != 0:
        raise RuntimeError(f"make train_gpt2 failed in {checkout}:\n{made.stderr[-2000:]}")
    compile_line = next((line for line in made.stdout.splitlines() if "train_gpt2.c" in line),
                        "(already built)")
    return os.path.join(checkout, "train_gpt2"), compile_line.strip()


def step_seconds(checkout, steps, threads):
    """(median seconds of llm.c's training steps 1..steps (step 0 is its
    warm-up), the compile line, the losses printed)."""
    binary, compile_line = build(checkout)
    with tempfile.TemporaryDirectory() as run_dir:
        write_checkpoint(os.path.join(run_dir, "gpt2_124M.bin"))
        data = os.path.join(run_dir, "dev", "data", "tinyshakespeare")
        os.makedirs(data)
        write_tokens(os.path.join(data, "tiny_shakespeare_train.bin"), 1 << 17, seed=1)
        write_tokens(os.path.join(data, "tiny_shakespeare_val.bin"), 1 << 15, seed=2)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        process = subprocess.Popen([binary], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        seconds, losses, lines = [], [], []
        try:
            for line in process.stdout:
                lines.append(line)
                match = STEP_LINE.match(line)
                if match:
                    losses.append(float(match.group(2)))
                    seconds.append(float(match.group(3)) / 1000)
                    if len(seconds) > steps:
                        break
        finally:
            process.kill()
            process.wait()
    if len(seconds) <= steps:
        raise RuntimeError("llm.c stopped before its steps:\n" + "".join(lines[-20:]))
    return statistics.median(seconds[1:]), compile_line, losses
