"""The training loop every trainer shares: data order, gradient accumulation,
optimizer and schedule, clipping, logging, evaluation, checkpoints, resume.

A trainer subclass says how to turn its records into examples and how to run
one micro-batch (`_micro_step`), which calls the C engine and the C losses.
Python only prepares batches and keeps the books.
"""

import dataclasses
import json
import math
import os
import warnings

import numpy as np

from calign import checks, distributed
from calign.model import Model
from calign.model.loading import load_model
from calign.model.preference_batch import check_fits
from calign.optim import SGD, AdamW, clip_grad_norm
from calign.optim import grad_norm as joint_grad_norm
from calign.tokenizer import Tokenizer
from calign.trainers import checkpoints, reporting
from calign.trainers.schedules import learning_rate
from calign.trainers.training_args import steps_of
from calign.trainers.weight_averages import WeightAverages


class TrainerState:
    """What transformers' TrainerState holds that calign uses, the best
    checkpoint's bookkeeping among it."""

    def __init__(self):
        self.global_step = 0
        self.epoch = 0.0
        self.log_history = []
        self.num_tokens = 0
        self.best_metric = None
        self.best_global_step = None
        self.best_model_checkpoint = None

    def to_dict(self):
        return {"global_step": self.global_step, "epoch": self.epoch,
                "log_history": self.log_history, "num_tokens": self.num_tokens,
                "best_metric": self.best_metric, "best_global_step": self.best_global_step,
                "best_model_checkpoint": self.best_model_checkpoint}

    def load(self, d):
        self.global_step = int(d["global_step"])
        self.epoch = float(d["epoch"])
        self.log_history = list(d["log_history"])
        self.num_tokens = int(d.get("num_tokens", 0))
        self.best_metric = d.get("best_metric")
        self.best_global_step = d.get("best_global_step")
        self.best_model_checkpoint = d.get("best_model_checkpoint")


def accumulate(sums, counts, metrics):
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
    # TRL's counterpart sets dropout to 0 after adding adapters (disable_dropout=True)
    disables_dropout = True

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, peft_config=None):
        if args is None:
            args = self.config_class()
        if not isinstance(args, self.config_class):
            raise TypeError(f"args must be a {self.config_class.__name__}, not "
                            f"{type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        self.args = args
        self.world = distributed.world()
        checks.require(args.model_init_kwargs is None or not isinstance(model, Model),
                       "model_init_kwargs", args.model_init_kwargs,
                       "None when the model is given loaded (they apply to loading a folder)")
        needs_eval = "eval_on_start" if args.eval_on_start else (
            "eval_strategy" if args.eval_strategy != "no" else None)
        checks.require(eval_dataset is not None or needs_eval is None, needs_eval,
                       getattr(args, needs_eval or "eval_strategy"),
                       f"{'False' if args.eval_on_start else repr('no')} when there is no "
                       "eval_dataset")
        self.processing_class = _load_tokenizer(processing_class, model)
        self.model = self._in_precision(self._load_model(model))
        # LoRA (TRL's peft_config): adapters on the model, the base frozen; a model
        # that comes with adapters trains them, from where they are
        self.continues_adapter = self.model.adapters is not None
        if peft_config is not None:
            checks.require(not self.continues_adapter, "peft_config", peft_config,
                           "None when the model already has adapters (they are what trains)")
            self.model.add_adapter(peft_config, seed=args.seed)
        if self.model.adapters is not None and not self.disables_dropout:
            dropout = self.model.adapters.config.lora_dropout
            checks.require(dropout == 0.0, "lora_dropout", dropout,
                           f"0 for {type(self).__name__}: TRL's trains with the adapters' dropout, "
                           "which calign does not implement (its preference and reward trainers "
                           "switch it off, as TRL's disable_dropout=True does)")
        self.model.gradient_checkpointing = args.gradient_checkpointing
        self.train_examples = self._examples(train_dataset, "train_dataset")
        self.eval_examples = (self._examples(eval_dataset, "eval_dataset")
                              if eval_dataset is not None else None)
        if args.dataloader_drop_last and len(self.train_examples) < \
                args.per_device_train_batch_size:
            raise ValueError(f"train_dataset has {len(self.train_examples)} examples, fewer "
                             f"than per_device_train_batch_size "
                             f"({args.per_device_train_batch_size}): with dataloader_drop_last "
                             "no batch is left")
        self.state = TrainerState()
        self.optimizer = self._make_optimizer()
        self.averages = WeightAverages(args, self.model)
        self.reporters = None
        self.callbacks = []

    def _in_precision(self, model):
        """`model` set to compute as the config asks (bf16: bfloat16 products);
        every model a trainer runs goes through here."""
        if isinstance(model, Model):
            model.bf16_products = self.args.bf16 is True
        return model

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

    def _eval_batch_size(self):
        """Examples per evaluation batch."""
        return self.args.per_device_eval_batch_size

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

    def _default_reference(self):
        """The reference when none is given: a frozen copy of the policy (with
        bf16, its block weights kept in bfloat16, unless TR-DPO moves it);
        for a LoRA run the policy's own weights with its adapters off (or, when
        it continues an adapter, frozen where they start), with no copy of the
        base, as TRL does with PEFT."""
        from calign.lora import AdapterReference
        from calign.model.frozen_reference import BF16Reference

        if self.model.adapters is not None:
            frozen = self.model.adapters.params if self.continues_adapter else None
            return AdapterReference(self.model, frozen)
        if self.args.bf16 is True and not getattr(self.args, "sync_ref_model", False):
            return BF16Reference(self.model)
        reference = Model(self.model.config)
        reference.params[...] = self.model.params
        return self._in_precision(reference)

    def _load_reference(self, ref_model):
        """The reference model given (a Model or a folder), checked against the
        data already prepared as the policy was."""
        reference = self._in_precision(load_model(ref_model, "ref_model"))
        for examples, name in ((self.train_examples, "train_dataset"),
                               (self.eval_examples, "eval_dataset")):
            if examples and reference is not self.model:
                check_fits(reference, examples, name, "ref_model")
        return reference

    # ---- optimizer and data order ----------------------------------------------

    def _make_optimizer(self, model=None):
        """The config's optimizer of `model` (default the policy)."""
        a, model = self.args, model or self.model
        if a.optim == "sgd":
            return SGD(model, lr=a.learning_rate, weight_decay=a.weight_decay)
        return AdamW(model, lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2),
                     eps=a.adam_epsilon, weight_decay=a.weight_decay)

    def _micro_batches_per_epoch(self):
        a = self.args
        n, bs = len(self.train_examples), a.per_device_train_batch_size
        return n // bs if a.dataloader_drop_last else math.ceil(n / bs)

    def _micro_batches_per_window(self):
        """per_device batches in one optimizer step over all ranks (accelerate's
        global batch: per_device_train_batch_size x ranks x accumulation)."""
        return self.args.gradient_accumulation_steps * self.world.size

    def _windows_per_epoch(self):
        return math.ceil(self._micro_batches_per_epoch() / self._micro_batches_per_window())

    def total_steps(self):
        if self.args.max_steps > 0:
            return self.args.max_steps
        return max(1, math.ceil(self.args.num_train_epochs * self._windows_per_epoch()))

    def _window(self, step):
        """The micro-batches (lists of examples) of optimizer step `step` over
        all ranks; the order is a function of (data_seed or seed, epoch) only,
        so resuming replays it, with any number of ranks that keeps the global
        batch."""
        a = self.args
        per_epoch = self._windows_per_epoch()
        epoch, position = divmod(step, per_epoch)
        n = len(self.train_examples)
        seed = a.seed if a.data_seed is None else a.data_seed
        order = (np.random.default_rng([seed, epoch]).permutation(n)
                 if a.train_sampling_strategy == "random" else np.arange(n))
        bs, accum = a.per_device_train_batch_size, self._micro_batches_per_window()
        used = self._micro_batches_per_epoch() * bs if a.dataloader_drop_last else n
        start = position * accum * bs
        stop = min(used, start + accum * bs)
        chosen = [self.train_examples[i] for i in order[start:stop]]
        return [chosen[i:i + bs] for i in range(0, len(chosen), bs)]

    # ---- the loop ------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None):
        """Trains for max_steps (or num_train_epochs); returns the state.

        resume_from_checkpoint (default: the config's) is a checkpoint folder,
        or True for the latest in output_dir. First cleans what an interrupted
        save left in output_dir. After a resume, metrics.jsonl is rewritten to
        the resumed checkpoint's log_history, so the steps run again are logged
        once, as in an uninterrupted run."""
        a = self.args
        if resume_from_checkpoint is None:
            resume_from_checkpoint = a.resume_from_checkpoint
        with self.world.abort_on_error():
            return self._train(resume_from_checkpoint)

    def _train(self, resume_from_checkpoint):
        a, main = self.args, self.world.is_main
        if main:
            checkpoints.clean_interrupted(a.output_dir)
        self.world.barrier()  # every rank sees output_dir cleaned before it looks
        resume = checkpoints.resolve_resume(a.output_dir, resume_from_checkpoint)
        if resume:
            self._load_checkpoint(resume)
            if main:
                self._rewrite_metrics()
        total = self.total_steps()
        progress = None
        self.reporters = reporting.Reporters(a, dataclasses.asdict(a)) \
            if a.report_to and main else None
        try:
            if not a.disable_tqdm and main:
                from tqdm.auto import tqdm
                progress = tqdm(total=total, initial=self.state.global_step, desc="train",
                                dynamic_ncols=True)
            if a.eval_on_start:
                self.evaluate()
            self._run_callbacks("on_train_begin")
            self._train_steps(total, progress)
        finally:  # the bar's last frame before any traceback; the integrations closed
            if progress is not None:
                progress.close()
            if self.reporters is not None:
                self.reporters.close()
                self.reporters = None
        self._finish_best_model()
        return self.state

    def _train_steps(self, total, progress):
        a = self.args
        logging_every = steps_of(a.logging_steps, total)
        per_epoch = self._windows_per_epoch()
        sums, counts = {}, {}
        while self.state.global_step < total:
            step = self.state.global_step
            lr = learning_rate(a, step, total)
            grad_norm = self._training_step(step, lr, sums, counts)
            self.state.global_step += 1
            self._after_optimizer_step()
            self.averages.after_step()
            self.state.epoch = self.state.global_step / per_epoch
            self._run_callbacks("on_step_end")
            if progress is not None:
                progress.update(1)
            done = self.state.global_step
            epoch_end = done % per_epoch == 0 or done == total
            log = (done == 1 and a.logging_first_step) or a.logging_strategy != "no" and (
                done == total or (a.logging_strategy == "epoch" and epoch_end) or
                (a.logging_strategy == "steps" and done % logging_every == 0))
            if log:
                sums, counts = self.world.merge_metric_sums(sums, counts)
                entry = {k: v / counts[k] for k, v in sums.items()}
                entry.update(grad_norm=grad_norm, learning_rate=lr)
                self._log(entry, progress)
                sums, counts = {}, {}
            self._evaluate_and_save(total, epoch_end)
            self.averages.average_if_due(self.state.global_step)

    def add_callback(self, callback):
        """callback.on_train_begin(trainer) and .on_step_end(trainer) (either
        optional) run before the first step and after each optimizer step;
        a dict of numbers they return is logged (e.g. calign.probes)."""
        self.callbacks.append(callback)

    def _run_callbacks(self, event):
        logs = {}
        for callback in self.callbacks:
            logs.update(getattr(callback, event, lambda trainer: None)(self) or {})
        if logs:
            self._log(logs, None)

    def _training_step(self, step, lr, sums, counts):
        """Optimizer step `step` at learning rate lr: this rank's share of its
        window's micro-batches, their metrics added to sums/counts. The
        normaliser is the whole window's, so the gradients summed over ranks
        are those of one process running every micro-batch. Returns the
        gradient norm."""
        micro_batches = self._window(step)
        normaliser = self._window_size([e for mb in micro_batches for e in mb])
        self.model.zero_grad()
        tokens = 0
        for examples in self.world.share(micro_batches):
            metrics, micro_tokens = self._micro_step(examples, normaliser, train=True)
            tokens += micro_tokens
            accumulate(sums, counts, metrics)
        self.state.num_tokens += self.world.sum(tokens)
        self.world.sum_in_place(self.model.train_grads)
        grad_norm = self._clip_gradients(step, [self.model])
        self.optimizer.step(lr=lr)
        return grad_norm

    def _clip_gradients(self, step, models):
        """Clips the models' gradients jointly to max_grad_norm (0: no clipping);
        returns their norm, raising FloatingPointError when it is not finite."""
        a = self.args
        grad_norm = (clip_grad_norm(models, a.max_grad_norm) if a.max_grad_norm > 0
                     else joint_grad_norm(models))
        if not math.isfinite(grad_norm):  # clip_grad_norm raises too; this covers no clipping
            raise FloatingPointError(f"step {step}: the gradient norm is {grad_norm}; "
                                     "stopping before the parameters become NaN")
        return grad_norm

    def _evaluate_and_save(self, total, epoch_end):
        """transformers' schedule: evaluate, then save, at the strategy's steps
        or epoch ends; the last step evaluates and saves under 'steps' too."""
        a = self.args
        done, last = self.state.global_step, self.state.global_step == total
        if a.eval_strategy == "steps":
            evaluate = (done % steps_of(a.eval_steps, total) == 0 or last) and \
                a.eval_delay <= done
        else:
            evaluate = a.eval_strategy == "epoch" and epoch_end and \
                a.eval_delay <= self.state.epoch
        new_best = False
        if evaluate:
            new_best = self._update_best(self.evaluate())
        save_every = steps_of(a.save_steps, total)
        if a.save_strategy == "steps":
            save = save_every > 0 and (done % save_every == 0 or last)
        else:
            save = (a.save_strategy == "epoch" and epoch_end) or \
                (a.save_strategy == "best" and new_best)
        if save:
            self._save_checkpoint()

    # ---- the best checkpoint (transformers' bookkeeping) -----------------------------

    def _update_best(self, metrics):
        """Records a new best metric_for_best_model; True if this evaluation is it."""
        a = self.args
        if a.metric_for_best_model is None:
            return False
        name = a.metric_for_best_model
        name = name if name.startswith("eval_") else f"eval_{name}"
        if name not in metrics:
            raise KeyError(f"metric_for_best_model is {a.metric_for_best_model!r}, but the "
                           f"evaluation gives no {name!r}; it gives {sorted(metrics)}")
        value, best = metrics[name], self.state.best_metric
        if best is not None and not (value > best if a.greater_is_better else value < best):
            return False
        self.state.best_metric = value
        self.state.best_global_step = self.state.global_step
        return True

    def _finish_best_model(self):
        """load_best_model_at_end, and save_total_limit 1 keeping the best only."""
        a, best = self.args, self.state.best_model_checkpoint
        if best is None:
            return
        if a.load_best_model_at_end:
            self._restore_weights(best)
        if a.save_total_limit == 1 and self.world.is_main:
            for step, path in checkpoints.list_checkpoints(a.output_dir):
                if not os.path.samefile(path, best):
                    checkpoints.delete_folder(path, step)

    def evaluate(self, eval_dataset=None):
        """Metrics of the eval set (no update), prefixed with eval_ and logged."""
        examples = (self._examples(eval_dataset, "eval_dataset")
                    if eval_dataset is not None else self.eval_examples)
        if not examples:
            raise ValueError("no eval_dataset to evaluate on")
        bs = self._eval_batch_size()
        sums, counts = {}, {}
        with self.averages.evaluation():  # the ranks share the batches
            for i in self.world.share(range(0, len(examples), bs)):
                batch = examples[i:i + bs]
                metrics, _ = self._micro_step(batch, self._window_size(batch), train=False)
                accumulate(sums, counts, metrics)
        sums, counts = self.world.merge_metric_sums(sums, counts)
        result = {f"eval_{k}": v / counts[k] for k, v in sums.items()}
        self._log(result, None)
        return result

    def _log(self, entry, progress):
        entry = dict(entry, epoch=round(self.state.epoch, 4), step=self.state.global_step,
                     num_tokens=self.state.num_tokens)
        if self.args.include_num_input_tokens_seen != "no":  # no padding: all tokens count
            entry["num_input_tokens_seen"] = self.state.num_tokens
        self.state.log_history.append(entry)  # on every rank: the state stays one
        if not self.world.is_main:
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.reporters is not None:
            self.reporters.log(entry, self.state.global_step)
        if progress is not None and "loss" in entry:
            progress.set_postfix(loss=f"{entry['loss']:.4f}")

    # ---- saving and resuming --------------------------------------------------------

    def save_model(self, path=None):
        """Writes the model (and tokenizer) to `path` (default output_dir)."""
        path = path or self.args.output_dir
        if self.world.is_main:  # rank 0 writes; the others wait until it has
            self.model.save_pretrained(path)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(path)
            self.averages.save_final(path)
        self.world.barrier()

    def _extra_state(self):
        """More JSON-able state a trainer must carry across a resume."""
        return {}

    def _load_extra_state(self, state, path):
        pass

    def _save_checkpoint(self):
        a, step = self.args, self.state.global_step
        if self.state.best_global_step is not None:
            # transformers' rule: the best step's checkpoint, if it was written (or is now)
            best = os.path.join(a.output_dir, f"checkpoint-{self.state.best_global_step}")
            if self.state.best_global_step == step or checkpoints.is_complete(best):
                self.state.best_model_checkpoint = best
        state = self.state.to_dict()
        state["trainer"] = self._extra_state()
        if self.world.is_main:  # the ranks hold the same weights and state
            checkpoints.write_checkpoint(a.output_dir, step, self.model, self.processing_class,
                                         self.optimizer, state, write_extra=self._write_extra_files)
            checkpoints.prune_checkpoints(a.output_dir, a.save_total_limit,
                                          keep=self.state.best_model_checkpoint)
        self.world.barrier()  # no rank runs ahead of (or reads) a checkpoint being written

    def _rewrite_metrics(self):
        """metrics.jsonl := state.log_history, one JSON line per entry (atomically)."""
        os.makedirs(self.args.output_dir, exist_ok=True)
        checkpoints.write_text_atomically(
            os.path.join(self.args.output_dir, "metrics.jsonl"),
            "".join(json.dumps(entry) + "\n" for entry in self.state.log_history))

    def _save_extra_files(self, folder):
        """Hook: a trainer's own files in a checkpoint being written."""

    def _write_extra_files(self, folder):
        self._save_extra_files(folder)
        self.averages.save(folder)

    def _restore_weights(self, path):
        """The trained weights of a checkpoint into the model: its parameters,
        or with LoRA its adapters (the base is frozen and not in it)."""
        if self.model.adapters is not None:
            from calign.lora import read_adapter_tensors

            read_adapter_tensors(path, self.model.adapters)
            return
        saved = type(self.model).from_pretrained(path)
        if saved.params.size != self.model.params.size:
            raise ValueError(f"checkpoint {path!r} does not match the model being trained")
        self.model.params[...] = saved.params

    def _load_checkpoint(self, path):
        self._restore_weights(path)
        self.optimizer.load(os.path.join(path, "optimizer.safetensors"))
        state = checkpoints.read_trainer_state(path)
        self.state.load(state)
        best = self.state.best_model_checkpoint
        if best is not None and not checkpoints.is_complete(best):
            warnings.warn(f"the best checkpoint {best} recorded in {path} is gone: the best "
                          "model is tracked afresh", stacklevel=3)
            self.state.best_model_checkpoint = None
        self._load_extra_state(state.get("trainer", {}), path)
        self.averages.load(path, self.state.global_step)
