"""The training loop every trainer shares: data order, gradient accumulation,
optimizer and schedule, clipping, logging, evaluation, checkpoints, resume.

A trainer subclass says how to turn its records into examples and how to run
one micro-batch (`_micro_step`), which calls the C engine and the C losses.
Python only prepares batches and keeps the books.
"""

import json
import math
import os

import numpy as np

from calign import _C
from calign.model.loading import load_model
from calign.model.preference_batch import check_fits
from calign.optim import SGD, AdamW, clip_grad_norm
from calign.tokenizer import Tokenizer
from calign.trainers import checkpoints
from calign.trainers.schedules import learning_rate


class TrainerState:
    """What transformers' TrainerState holds that calign uses."""

    def __init__(self):
        self.global_step = 0
        self.epoch = 0.0
        self.log_history = []
        self.num_tokens = 0

    def to_dict(self):
        return {"global_step": self.global_step, "epoch": self.epoch,
                "log_history": self.log_history, "num_tokens": self.num_tokens}

    def load(self, d):
        self.global_step = int(d["global_step"])
        self.epoch = float(d["epoch"])
        self.log_history = list(d["log_history"])
        self.num_tokens = int(d.get("num_tokens", 0))


def _accumulate(sums, counts, metrics):
    """Running sums of micro-batch metrics; a metric absent from a micro-batch
    (say, no desirable example in KTO) is not counted for it."""
    for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v
        counts[k] = counts.get(k, 0) + 1


def _load_tokenizer(processing_class, model_source):
    if processing_class is None:
        if isinstance(model_source, (str, os.PathLike)) and os.path.isfile(
                os.path.join(model_source, "tokenizer.json")):
            return Tokenizer.from_pretrained(os.fspath(model_source))
        return None
    if isinstance(processing_class, Tokenizer):
        return processing_class
    if isinstance(processing_class, (str, os.PathLike)):
        return Tokenizer.from_pretrained(os.fspath(processing_class))
    raise TypeError("processing_class must be a calign.Tokenizer, a folder with "
                    f"tokenizer.json, or None, not {type(processing_class).__name__}")


class BaseTrainer:
    """Subclasses set config_class and implement _prepare_examples,
    _window_size and _micro_step."""

    config_class = None

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None):
        if args is None:
            args = self.config_class()
        if not isinstance(args, self.config_class):
            raise TypeError(f"args must be a {self.config_class.__name__}, not "
                            f"{type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        self.args = args
        self.processing_class = _load_tokenizer(processing_class, model)
        self.model = self._load_model(model)
        self.model.gradient_checkpointing = args.gradient_checkpointing
        self.train_examples = self._examples(train_dataset, "train_dataset")
        self.eval_examples = (self._examples(eval_dataset, "eval_dataset")
                              if eval_dataset is not None else None)
        self.state = TrainerState()
        self.optimizer = self._make_optimizer()

    # ---- to be provided by each trainer ----------------------------------------

    def _load_model(self, model):
        return load_model(model)

    def _prepare_examples(self, source, name):
        """The examples (calign.data's) of a dataset, tokenized and truncated."""
        raise NotImplementedError

    def _window_size(self, examples):
        """The normaliser of a gradient-accumulation window: the loss of a window
        is sum(per-unit losses) / this, whatever the micro-batch split."""
        return len(examples)

    def _micro_step(self, examples, normaliser, train):
        """Runs one micro-batch; with train, adds d(loss sum / normaliser) to the
        model's gradient buffer. Returns (metrics dict, tokens processed)."""
        raise NotImplementedError

    def _after_optimizer_step(self):
        """Hook for trainers that update state after each step (TR-DPO); runs
        with state.global_step already counting the step."""

    # ---- the data against the models ---------------------------------------------

    def _examples(self, source, name):
        """The prepared examples of a dataset, each checked to fit the models."""
        examples = self._prepare_examples(source, name)
        self._check_fits(examples, name)
        return examples

    def _check_fits(self, examples, name):
        """Raises, naming the record, if an example does not fit the model (its
        positions, its vocabulary): when the data is prepared, not when its
        batch comes up. A reference model other than the policy (ref_model) is
        checked too."""
        check_fits(self.model, examples, name)
        reference = getattr(self, "ref_model", None)
        if reference is not None and reference is not self.model:
            check_fits(reference, examples, name, "ref_model")

    def _load_reference(self, ref_model):
        """The reference model given (a Model or a folder), checked against the
        data already prepared as the policy was."""
        reference = load_model(ref_model, "ref_model")
        for examples, name in ((self.train_examples, "train_dataset"),
                               (self.eval_examples, "eval_dataset")):
            if examples and reference is not self.model:
                check_fits(reference, examples, name, "ref_model")
        return reference

    # ---- optimizer and data order ----------------------------------------------

    def _make_optimizer(self):
        a = self.args
        if a.optim == "sgd":
            return SGD(self.model, lr=a.learning_rate, weight_decay=a.weight_decay)
        return AdamW(self.model, lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2),
                     eps=a.adam_epsilon, weight_decay=a.weight_decay)

    def _windows_per_epoch(self):
        a = self.args
        micro = math.ceil(len(self.train_examples) / a.per_device_train_batch_size)
        return math.ceil(micro / a.gradient_accumulation_steps)

    def total_steps(self):
        if self.args.max_steps > 0:
            return self.args.max_steps
        return max(1, math.ceil(self.args.num_train_epochs * self._windows_per_epoch()))

    def _window(self, step):
        """The micro-batches (lists of examples) of optimizer step `step`; the
        order is a function of (seed, epoch) only, so resuming replays it."""
        a = self.args
        per_epoch = self._windows_per_epoch()
        epoch, position = divmod(step, per_epoch)
        n = len(self.train_examples)
        order = (np.random.default_rng([a.seed, epoch]).permutation(n) if a.shuffle
                 else np.arange(n))
        bs, accum = a.per_device_train_batch_size, a.gradient_accumulation_steps
        start = position * accum * bs
        stop = min(n, start + accum * bs)
        chosen = [self.train_examples[i] for i in order[start:stop]]
        return [chosen[i:i + bs] for i in range(0, len(chosen), bs)]

    # ---- the loop ------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None):
        """Trains for max_steps (or num_train_epochs); returns the state.

        First cleans what an interrupted save left in output_dir. After a resume,
        metrics.jsonl is rewritten to the resumed checkpoint's log_history, so the
        steps run again are logged once, as in an uninterrupted run."""
        a = self.args
        checkpoints.clean_interrupted(a.output_dir)
        resume = checkpoints.resolve_resume(a.output_dir, resume_from_checkpoint)
        if resume:
            self._load_checkpoint(resume)
            self._rewrite_metrics()
        total = self.total_steps()
        progress = None
        if not a.disable_tqdm:
            from tqdm.auto import tqdm
            progress = tqdm(total=total, initial=self.state.global_step, desc="train",
                            dynamic_ncols=True)
        sums, counts = {}, {}
        while self.state.global_step < total:
            step = self.state.global_step
            micro_batches = self._window(step)
            normaliser = self._window_size([e for mb in micro_batches for e in mb])
            self.model.zero_grad()
            for examples in micro_batches:
                metrics, tokens = self._micro_step(examples, normaliser, train=True)
                self.state.num_tokens += tokens
                _accumulate(sums, counts, metrics)
            grad_norm = (clip_grad_norm(self.model, a.max_grad_norm) if a.max_grad_norm > 0
                         else _C.grad_norm(self.model.grad_buffer))
            if not math.isfinite(grad_norm):  # clip_grad_norm raises too; this covers no clipping
                raise FloatingPointError(f"step {step}: the gradient norm is {grad_norm}; "
                                         "stopping before the parameters become NaN")
            lr = learning_rate(a, step, total)
            self.optimizer.step(lr=lr)
            self.state.global_step += 1
            self._after_optimizer_step()
            self.state.epoch = self.state.global_step / self._windows_per_epoch()
            if progress is not None:
                progress.update(1)
            if self.state.global_step % a.logging_steps == 0 or self.state.global_step == total:
                entry = {k: v / counts[k] for k, v in sums.items()}
                entry.update(grad_norm=grad_norm, learning_rate=lr)
                self._log(entry, progress)
                sums, counts = {}, {}
            if a.eval_steps and self.eval_examples and self.state.global_step % a.eval_steps == 0:
                self.evaluate()
            if a.save_steps and self.state.global_step % a.save_steps == 0:
                self._save_checkpoint()
        if progress is not None:
            progress.close()
        return self.state

    def evaluate(self, eval_dataset=None):
        """Metrics of the eval set (no update), prefixed with eval_ and logged."""
        examples = (self._examples(eval_dataset, "eval_dataset")
                    if eval_dataset is not None else self.eval_examples)
        if not examples:
            raise ValueError("no eval_dataset to evaluate on")
        bs = self.args.per_device_eval_batch_size
        sums, counts = {}, {}
        for i in range(0, len(examples), bs):
            batch = examples[i:i + bs]
            metrics, _ = self._micro_step(batch, self._window_size(batch), train=False)
            _accumulate(sums, counts, metrics)
        result = {f"eval_{k}": v / counts[k] for k, v in sums.items()}
        self._log(result, None)
        return result

    def _log(self, entry, progress):
        entry = dict(entry, epoch=round(self.state.epoch, 4), step=self.state.global_step,
                     num_tokens=self.state.num_tokens)
        self.state.log_history.append(entry)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
        if progress is not None and "loss" in entry:
            progress.set_postfix(loss=f"{entry['loss']:.4f}")

    # ---- saving and resuming --------------------------------------------------------

    def save_model(self, path=None):
        """Writes the model (and tokenizer) to `path` (default output_dir)."""
        path = path or self.args.output_dir
        self.model.save_pretrained(path)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(path)

    def _extra_state(self):
        """More JSON-able state a trainer must carry across a resume."""
        return {}

    def _load_extra_state(self, state, path):
        pass

    def _save_checkpoint(self):
        state = self.state.to_dict()
        state["trainer"] = self._extra_state()
        checkpoints.write_checkpoint(self.args.output_dir, self.state.global_step, self.model,
                                     self.processing_class, self.optimizer, state,
                                     write_extra=self._save_extra_files)
        checkpoints.prune_checkpoints(self.args.output_dir, self.args.save_total_limit)

    def _rewrite_metrics(self):
        """metrics.jsonl := state.log_history, one JSON line per entry (atomically)."""
        os.makedirs(self.args.output_dir, exist_ok=True)
        checkpoints.write_text_atomically(
            os.path.join(self.args.output_dir, "metrics.jsonl"),
            "".join(json.dumps(entry) + "\n" for entry in self.state.log_history))

    def _save_extra_files(self, folder):
        """Hook: a trainer's own files in a checkpoint being written."""

    def _load_checkpoint(self, path):
        saved = type(self.model).from_pretrained(path)
        if saved.params.size != self.model.params.size:
            raise ValueError(f"checkpoint {path!r} does not match the model being trained")
        self.model.params[...] = saved.params
        self.optimizer.load(os.path.join(path, "optimizer.safetensors"))
        state = checkpoints.read_trainer_state(path)
        self.state.load(state)
        self._load_extra_state(state.get("trainer", {}), path)
