"""Averages of the weights during training: an exponential moving average
kept beside the optimizer state (ema_decay; InstructGPT's PPO policy used
0.992), and Motif 2.6B's averaging of the latest checkpoints
(checkpoint_averaging_steps / checkpoint_averaging_window; its report gives
"the last 6 checkpoints", the schedule is a setting here).

A checkpoint holds the weights trained up to its step; the average replaces
them right after it is written, so a resume from it averages the same files
again and continues bit for bit."""

import contextlib
import os

from calign import checks, merge
from calign.optim import EMA
from calign.trainers import checkpoints

EMA_STATE = "ema.safetensors"
EMA_FOLDER = "ema"


class WeightAverages:
    """What a trainer's weight-averaging settings ask for, at the points of
    its loop that call in: after_step, save, load, evaluation, average_if_due."""

    def __init__(self, args, model):
        self.args, self.model = args, model
        self.ema = EMA(model, args.ema_decay) if args.ema_decay is not None else None
        checks.require(args.checkpoint_averaging_steps == 0 or model.adapters is None,
                       "checkpoint_averaging_steps", args.checkpoint_averaging_steps,
                       "0 for a LoRA run (checkpoint averaging averages whole models)")

    def after_step(self):
        if self.ema is not None:
            self.ema.update()

    def save(self, folder):
        """The EMA's exact state and, beside it, the averaged model as a folder."""
        if self.ema is not None:
            self.ema.save(os.path.join(folder, EMA_STATE))
            self.ema.save_pretrained(os.path.join(folder, EMA_FOLDER), dtype="float32")

    def save_final(self, output_dir):
        if self.ema is not None:
            self.ema.save_pretrained(os.path.join(output_dir, EMA_FOLDER))

    def load(self, folder, step):
        """Resuming from the checkpoint `folder` of `step`."""
        if self.ema is not None:
            path = os.path.join(folder, EMA_STATE)
            if not os.path.isfile(path):
                raise ValueError(f"checkpoint {folder!r} has no {EMA_STATE}: it was written "
                                 "without ema_decay")
            self.ema.load(path)
        self.average_if_due(step)

    def evaluation(self):
        """A context in which the model evaluates: with the EMA's weights when asked."""
        return self.ema.applied() if self.args.eval_use_ema else contextlib.nullcontext()

    def average_if_due(self, step):
        """At a multiple of checkpoint_averaging_steps, the weights become the
        mean of the checkpoints written at or before `step` (the latest
        checkpoint_averaging_window of them), streamed into the model."""
        every = self.args.checkpoint_averaging_steps
        if every == 0 or step % every != 0:
            return
        written = [(s, path) for s, path in checkpoints.list_checkpoints(self.args.output_dir)
                   if s <= step]
        if not written or written[-1][0] != step:
            raise ValueError(f"checkpoint_averaging_steps: no checkpoint of step {step} in "
                             f"{self.args.output_dir!r} to average")
        paths = [path for _, path in written[-self.args.checkpoint_averaging_window:]]
        sources = merge.CheckpointSources(paths)
        for name, view in self.model.state_dict().items():
            merge.mean_tensor(sources, name, out=view)
