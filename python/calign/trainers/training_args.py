"""TrainingConfig: the settings every trainer shares, named and defaulted as
transformers' TrainingArguments (as TRL 1.16's configs inherit them).

Every field of TrainingArguments is here: the ones calign implements below,
the ones it accepts and ignores or refuses at some values in trl_fields.
Each field is checked when the config is built, and so is every combination
of fields: a setting another one makes unused (eval_steps without step-wise
evaluation, ...) is refused then, naming the field."""

import json
import os
from dataclasses import dataclass, field, fields

import numpy as np

from calign import checks
from calign.data.truncation import TRUNCATION_MODES, Truncation
from calign.trainers import reporting, trl_fields

LR_SCHEDULER_TYPES = ("linear", "cosine", "constant", "constant_with_warmup")
# The keyword arguments each schedule takes (transformers' get_scheduler names).
LR_SCHEDULER_KWARGS = {"cosine": ("num_cycles",)}
# adamw_torch_fused is the same update as adamw_torch, in one CUDA kernel.
ADAMW_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")
OPTIMIZERS = ADAMW_OPTIMIZERS + ("sgd",)
INTERVAL_STRATEGIES = ("no", "steps", "epoch")
SAVE_STRATEGIES = INTERVAL_STRATEGIES + ("best",)
SAMPLING_STRATEGIES = ("random", "sequential")
TOKENS_SEEN = ("no", "all", "non_padding")

# model_init_kwargs keys (transformers' from_pretrained arguments) that change
# nothing here, with the reason.
MODEL_INIT_IGNORED = {
    "attn_implementation": "calign's attention is its own C kernel",
    "device_map": "calign runs on the CPU",
    "low_cpu_mem_usage": "calign reads one tensor at a time already",
    "use_cache": "training runs no KV cache",
    "trust_remote_code": "calign runs no code from a checkpoint",
    "revision": "calign loads local folders, which hold one revision",
    "use_kernels": "calign's kernels are its own",
}
# The dtypes a model may be loaded in: weights are converted to float32 (None
# and "auto" keep transformers' meaning only for the file; calign computes in float32).
MODEL_INIT_DTYPES = (None, "auto", "float32", "torch.float32")
MODEL_INIT_REFUSED = {
    "quantization_config": "quantized training is not supported",
    "load_in_8bit": "quantized training is not supported",
    "load_in_4bit": "quantized training is not supported",
}


def help_field(text, **kwargs):
    """A dataclass field with its one-line help text."""
    return field(metadata={"help": text}, **kwargs)


def check_integers(config, low, *names, allow_none=False):
    """Checks integer fields, storing them as Python ints."""
    for name in names:
        setattr(config, name, checks.integer(name, getattr(config, name), low,
                                             allow_none=allow_none))


def check_reals(config, names, low=None, high=None, **options):
    """Checks real-number fields, storing them as Python floats."""
    for name in names:
        setattr(config, name, checks.real(name, getattr(config, name), low, high, **options))


def unused_unless(config, name, default, used, reason):
    """A field left at its default unless `used` (the setting acts only then)."""
    value = getattr(config, name)
    checks.require(used or value == default, name, value, f"{default!r} {reason}")


def steps_or_fraction(name, value, low=1, allow_none=False):
    """transformers' *_steps fields: an integer >= low, or a real in (0, 1) that
    is that fraction of the run's steps (rounded up)."""
    if allow_none and value is None:
        return None
    if checks.is_real(value) and not checks.is_int(value) and 0 < value < 1:
        return float(value)
    return checks.integer(name, value, low, what=f"an integer >= {low} or a fraction in (0, 1)")


def steps_of(value, total_steps):
    """The step count of a steps_or_fraction value in a run of total_steps."""
    return int(np.ceil(value * total_steps)) if isinstance(value, float) else value


def dict_field(name, value):
    """None, a mapping, or a JSON object in a string (transformers' dict fields)."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            checks.require(False, name, value, "a JSON object")
    checks.require(value is None or isinstance(value, dict), name, value,
                   "None or a mapping")
    return None if value is None else dict(value)


def check_model_init_kwargs(kwargs):
    """Refuses the from_pretrained arguments that would ask for something calign
    cannot do, naming the key; returns the mapping."""
    kwargs = dict_field("model_init_kwargs", kwargs)
    for key, value in (kwargs or {}).items():
        name = f"model_init_kwargs[{key!r}]"
        if key in ("dtype", "torch_dtype"):
            checks.require(value in MODEL_INIT_DTYPES or str(value) == "torch.float32", name,
                           value, "None, 'auto' or 'float32' (calign keeps float32 weights; "
                           "bf16=True gives bfloat16 products)")
        elif key in MODEL_INIT_REFUSED:
            checks.require(value in (None, False), name, value,
                           f"None or False ({MODEL_INIT_REFUSED[key]})")
        else:
            checks.require(key in MODEL_INIT_IGNORED, name, value,
                           "a key calign knows: dtype, torch_dtype, "
                           + ", ".join(MODEL_INIT_IGNORED) + " (ignored here), or "
                           + ", ".join(MODEL_INIT_REFUSED) + " at None/False")
    return kwargs


TrainingArgumentsPart = trl_fields.part(
    "TrainingArgumentsPart", tuple(trl_fields.TRAINING_ARGUMENTS_IGNORED)
    + tuple(trl_fields.TRAINING_ARGUMENTS_REFUSED) + ("trust_remote_code",))


@dataclass
class TrainingConfig(TrainingArgumentsPart):
    """Settings every trainer shares (transformers' TrainingArguments names)."""

    output_dir: str = help_field("Folder for checkpoints, metrics.jsonl and the final model "
                                 "(None: 'trainer_output').", default=None)
    learning_rate: float = help_field("Peak learning rate of the optimizer.", default=5e-5)
    per_device_train_batch_size: int = help_field("Examples per micro-batch in training.",
                                                  default=8)
    per_device_eval_batch_size: int = help_field("Examples per batch in evaluation.", default=8)
    gradient_accumulation_steps: int = help_field(
        "Micro-batches whose gradients are summed before one optimizer step.", default=1)
    num_train_epochs: float = help_field("Passes over the training data, fractions too (when "
                                         "max_steps <= 0).", default=3.0)
    max_steps: int = help_field("Optimizer steps to take; > 0 overrides num_train_epochs.",
                                default=-1)
    lr_scheduler_type: str = help_field(f"One of {LR_SCHEDULER_TYPES}.", default="linear")
    lr_scheduler_kwargs: object = help_field(
        "Arguments of the schedule: {'num_cycles': c} for 'cosine' (default 0.5).", default=None)
    warmup_steps: float = help_field("Linear warm-up steps, or a fraction in (0, 1) of the "
                                     "steps; > 0 overrides warmup_ratio.", default=0)
    warmup_ratio: float = help_field("Fraction of the steps with a linear warm-up (calign's; "
                                     "transformers 5 folds it into warmup_steps).", default=0.0)
    weight_decay: float = help_field("Decoupled weight decay (AdamW) or L2 (SGD).", default=0.0)
    max_grad_norm: float = help_field("Clip the global gradient norm to this; 0 disables.",
                                      default=1.0)
    optim: str = help_field(f"One of {OPTIMIZERS} (the two AdamW names are one update).",
                            default="adamw_torch_fused")
    adam_beta1: float = help_field("AdamW beta1.", default=0.9)
    adam_beta2: float = help_field("AdamW beta2.", default=0.999)
    adam_epsilon: float = help_field("AdamW epsilon.", default=1e-8)
    seed: int = help_field("Seed of the data order (unless data_seed) and of initialisations.",
                           default=42)
    data_seed: int = help_field("Seed of the data order (None: seed).", default=None)
    train_sampling_strategy: str = help_field(
        f"One of {SAMPLING_STRATEGIES}: the data shuffled every epoch (seeded) or in order.",
        default="random")
    shuffle: bool = help_field("calign's older name: True is train_sampling_strategy 'random', "
                               "False 'sequential' (None: as that field says).", default=None)
    dataloader_drop_last: bool = help_field("Drop the last micro-batch of an epoch when it is "
                                            "smaller than the others.", default=False)
    logging_strategy: str = help_field(f"One of {INTERVAL_STRATEGIES}: when the training "
                                       "metrics are logged (and at the end).", default="steps")
    logging_steps: float = help_field("Log every this many steps (a fraction in (0, 1): of the "
                                      "run's steps).", default=10)
    logging_first_step: bool = help_field("Log the first step too.", default=False)
    include_num_input_tokens_seen: object = help_field(
        f"One of {TOKENS_SEEN} or a flag: log num_input_tokens_seen (no padding here, so "
        "'all' and 'non_padding' count the same).", default="no")
    report_to: object = help_field(
        f"Where the logs go besides metrics.jsonl: 'none', one of {reporting.INTEGRATIONS}, a "
        "list, or 'all'/None (those installed).", default="none")
    run_name: str = help_field("The run's name in wandb.", default=None)
    disable_tqdm: bool = help_field("No progress bar (None: shown).", default=None)
    eval_strategy: str = help_field(f"One of {INTERVAL_STRATEGIES}: when eval_dataset is "
                                    "evaluated (and at the end).", default="no")
    eval_steps: float = help_field("Evaluate every this many steps (None: logging_steps; a "
                                   "fraction in (0, 1): of the run's steps).", default=None)
    eval_delay: float = help_field("Steps (or epochs, by eval_strategy) before the first "
                                   "evaluation.", default=0)
    eval_on_start: bool = help_field("Evaluate once before the first step.", default=False)
    save_strategy: str = help_field(f"One of {SAVE_STRATEGIES}: when a checkpoint is written "
                                    "('best': at each new best metric).", default="steps")
    save_steps: float = help_field("Checkpoint every this many steps and at the end (0: never; "
                                   "a fraction in (0, 1): of the run's steps).", default=500)
    save_total_limit: int = help_field("Keep at most this many checkpoints, the best one "
                                       "always (None: all).", default=None)
    load_best_model_at_end: bool = help_field("Load the best checkpoint's weights when training "
                                              "ends.", default=False)
    metric_for_best_model: str = help_field(
        "Eval metric that picks the best checkpoint ('eval_' may be left off; None: 'loss' "
        "with load_best_model_at_end).", default=None)
    greater_is_better: bool = help_field("A higher metric_for_best_model is better (None: unless "
                                         "its name ends in 'loss').", default=None)
    resume_from_checkpoint: object = help_field("Checkpoint folder to resume from, or True for "
                                                "output_dir's latest.", default=None)
    model_init_kwargs: object = help_field(
        "from_pretrained arguments when the model is a folder: dtype float32/auto; "
        f"{', '.join(MODEL_INIT_IGNORED)} ignored.", default=None)
    max_length: int = help_field("Longest sequence (prompt + completion) in tokens; None: no "
                                 "limit.", default=1024)
    max_prompt_length: int = help_field("Longest prompt; longer prompts keep their end.",
                                        default=None)
    max_completion_length: int = help_field("Longest completion; longer ones keep their start.",
                                            default=None)
    truncation_mode: str = help_field(f"One of {TRUNCATION_MODES}: which end of a too-long "
                                      "sequence is kept.", default="keep_start")
    ema_decay: float = help_field(
        "Keep an exponential moving average of the trained weights, ema <- decay ema + (1 - "
        "decay) weights after every step (InstructGPT's PPO policy: 0.992), saved in each "
        "checkpoint (ema.safetensors, and ema/ as a model folder) and at the end "
        "(output_dir/ema); None: off.", default=None)
    eval_use_ema: bool = help_field("Evaluate with the EMA weights (needs ema_decay).",
                                    default=False)
    checkpoint_averaging_steps: int = help_field(
        "Every this many steps, after that step's checkpoint is written, replace the weights "
        "by the mean of the last checkpoint_averaging_window checkpoints and train on (Motif "
        "2.6B's averaging; a multiple of save_steps); 0: off.", default=0)
    checkpoint_averaging_window: int = help_field(
        "How many of the latest checkpoints checkpoint_averaging_steps averages (fewer while "
        "fewer exist).", default=6)
    activation_checkpointing: bool = help_field(
        "transformers 5's name of gradient_checkpointing (None: that field).", default=None)
    gradient_checkpointing: bool = help_field(
        "Keep only each layer's input in the forward and recompute its activations in the "
        "backward: less memory, about one more forward pass of compute, the same numbers. "
        "TRL defaults to True; calign to False, as its activations are already small.",
        default=False)
    bf16: bool = help_field(
        "Mixed precision as torch's CPU autocast runs TRL's bf16=True: every matrix product "
        "(linear layers, attention, lm_head; forward and backward) of every model the trainer "
        "runs takes bfloat16 operands and accumulates in float32, while weights, gradients and "
        "optimizer state stay float32 (Model.bf16_products). None or False: float32 "
        "throughout (TRL's None means True; calign's means float32).", default=None)

    def __post_init__(self):
        trl_fields.check_refused(self)
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        checks.require(isinstance(self.output_dir, (str, os.PathLike)) and
                       os.fspath(self.output_dir), "output_dir", self.output_dir,
                       "a non-empty path")
        self.output_dir = os.path.expanduser(os.fspath(self.output_dir))
        check_integers(self, 1, "per_device_train_batch_size", "per_device_eval_batch_size",
                       "gradient_accumulation_steps")
        check_integers(self, None, "max_steps")
        # the data order is drawn from numpy.random.default_rng([seed, epoch])
        check_integers(self, 0, "seed")
        check_integers(self, 0, "data_seed", allow_none=True)
        check_integers(self, 1, "save_total_limit", allow_none=True)
        check_reals(self, ("learning_rate", "weight_decay", "max_grad_norm"), 0.0)
        check_reals(self, ("num_train_epochs", "adam_epsilon"), 0.0, open_low=True)
        check_reals(self, ("warmup_ratio",), 0.0, 1.0)
        check_reals(self, ("adam_beta1", "adam_beta2"), 0.0, 1.0, open_high=True)
        self.warmup_steps = steps_or_fraction("warmup_steps", self.warmup_steps, 0)
        checks.choice("lr_scheduler_type", self.lr_scheduler_type, LR_SCHEDULER_TYPES)
        self._check_scheduler_kwargs()
        checks.choice("optim", self.optim, OPTIMIZERS)
        truncation = Truncation.of(self)
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            setattr(self, name, getattr(truncation, name))
        for name in ("disable_tqdm", "activation_checkpointing", "shuffle", "greater_is_better"):
            if getattr(self, name) is not None:
                setattr(self, name, checks.flag(name, getattr(self, name)))
        for f in fields(self):  # every flag, the subclasses' too (a string "False" is truthy)
            if f.type in (bool, "bool") and getattr(self, f.name) is not None \
                    and f.name not in trl_fields.IGNORED:
                setattr(self, f.name, checks.flag(f.name, getattr(self, f.name)))
        self.disable_tqdm = bool(self.disable_tqdm)
        if self.activation_checkpointing is not None:  # the new name wins, as in transformers
            self.gradient_checkpointing = self.activation_checkpointing
        self.activation_checkpointing = self.gradient_checkpointing
        self._check_data_order()
        self._check_logging()
        self._check_evaluation_and_saving()
        self._check_weight_averages()
        self.model_init_kwargs = check_model_init_kwargs(self.model_init_kwargs)
        checks.require(self.resume_from_checkpoint is None or isinstance(
            self.resume_from_checkpoint, (bool, np.bool_, str, os.PathLike)),
            "resume_from_checkpoint", self.resume_from_checkpoint,
            "None, True (the latest checkpoint in output_dir) or a checkpoint folder")

    def _check_scheduler_kwargs(self):
        kwargs = dict_field("lr_scheduler_kwargs", self.lr_scheduler_kwargs) or {}
        known = LR_SCHEDULER_KWARGS.get(self.lr_scheduler_type, ())
        for key, value in kwargs.items():
            name = f"lr_scheduler_kwargs[{key!r}]"
            checks.require(key in known, name, value,
                           f"a key of {list(known)} (those the {self.lr_scheduler_type!r} "
                           "schedule takes)")
            kwargs[key] = checks.real(name, value, 0.0, open_low=True)
        self.lr_scheduler_kwargs = kwargs or None

    def _check_data_order(self):
        if self.train_sampling_strategy == "group_by_length":
            checks.require(False, "train_sampling_strategy", self.train_sampling_strategy,
                           f"one of {SAMPLING_STRATEGIES} ('group_by_length' is not supported "
                           "yet)")
        checks.choice("train_sampling_strategy", self.train_sampling_strategy,
                      SAMPLING_STRATEGIES)
        if self.shuffle is not None:  # calign's older flag, when given, says it
            self.train_sampling_strategy = "random" if self.shuffle else "sequential"
        self.shuffle = self.train_sampling_strategy == "random"

    def _check_logging(self):
        checks.choice("logging_strategy", self.logging_strategy, INTERVAL_STRATEGIES)
        self.logging_steps = steps_or_fraction("logging_steps", self.logging_steps)
        unused_unless(self, "logging_steps", 10, self.logging_strategy == "steps",
                      "unless logging_strategy is 'steps'")
        tokens = self.include_num_input_tokens_seen
        if isinstance(tokens, (bool, np.bool_)):
            tokens = "all" if tokens else "no"
        checks.choice("include_num_input_tokens_seen", tokens, TOKENS_SEEN)
        self.include_num_input_tokens_seen = tokens
        self.report_to = reporting.resolve_report_to(self.report_to)
        checks.text("run_name", self.run_name, allow_none=True)

    def _check_weight_averages(self):
        if self.ema_decay is not None:
            self.ema_decay = checks.real("ema_decay", self.ema_decay, 0.0, 1.0, open_high=True)
        self.eval_use_ema = checks.flag("eval_use_ema", self.eval_use_ema)
        checks.require(not self.eval_use_ema or self.ema_decay is not None, "eval_use_ema", True,
                       "False unless ema_decay is set (there is no average to evaluate)")
        check_integers(self, 0, "checkpoint_averaging_steps")
        check_integers(self, 1, "checkpoint_averaging_window")
        averaging = self.checkpoint_averaging_steps > 0
        unused_unless(self, "checkpoint_averaging_window", 6, averaging,
                      "unless checkpoint_averaging_steps is set")
        if not averaging:
            return
        steps = self.save_steps
        checks.require(self.save_strategy == "steps" and checks.is_int(steps) and steps > 0 and
                       self.checkpoint_averaging_steps % steps == 0,
                       "checkpoint_averaging_steps", self.checkpoint_averaging_steps,
                       f"a multiple of save_steps ({steps!r}, a step count with save_strategy "
                       "'steps'): the average reads the checkpoints written")
        limit = self.save_total_limit
        checks.require(limit is None or limit >= self.checkpoint_averaging_window,
                       "save_total_limit", limit, f"None or at least checkpoint_averaging_window "
                       f"({self.checkpoint_averaging_window}): the averaged checkpoints must be "
                       "kept")

    def _check_evaluation_and_saving(self):
        checks.choice("eval_strategy", self.eval_strategy, INTERVAL_STRATEGIES)
        checks.choice("save_strategy", self.save_strategy, SAVE_STRATEGIES)
        evaluates = self.eval_strategy != "no"
        unused_unless(self, "eval_steps", None, self.eval_strategy == "steps",
                      "unless eval_strategy is 'steps' (evaluation is off by default, as in "
                      "transformers)")
        self.eval_steps = steps_or_fraction("eval_steps", self.eval_steps, allow_none=True)
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps  # transformers' fallback
        check_reals(self, ("eval_delay",), 0.0)
        unused_unless(self, "eval_delay", 0.0, evaluates, "unless eval_strategy is set")
        self.save_steps = steps_or_fraction("save_steps", self.save_steps, 0)
        unused_unless(self, "save_steps", 500, self.save_strategy == "steps",
                      "unless save_strategy is 'steps'")
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "loss"
        checks.text("metric_for_best_model", self.metric_for_best_model, allow_none=True)
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        unused_unless(self, "greater_is_better", None, self.metric_for_best_model is not None,
                      "unless metric_for_best_model is set")
        if self.save_strategy == "best":
            checks.require(self.metric_for_best_model is not None, "metric_for_best_model",
                           None, "set with save_strategy 'best' (the metric that picks it)")
            checks.require(evaluates, "save_strategy", "best",
                           "another strategy when eval_strategy is 'no' (there is no metric)")
        if self.metric_for_best_model is not None:
            checks.require(evaluates, "metric_for_best_model", self.metric_for_best_model,
                           "None when eval_strategy is 'no' (it is an evaluation metric)")
        if self.load_best_model_at_end:
            self._check_best_model_saves()

    def _check_best_model_saves(self):
        """transformers' rules: the best checkpoint must be one that is written."""
        if self.save_strategy == "best":
            return
        checks.require(self.save_strategy == self.eval_strategy, "load_best_model_at_end", True,
                       f"False unless save_strategy ({self.save_strategy!r}) is eval_strategy "
                       f"({self.eval_strategy!r}) or 'best' (the best evaluation must have a "
                       "checkpoint)")
        if self.save_strategy == "steps":
            save, evaluate = self.save_steps, self.eval_steps
            same_kind = isinstance(save, float) == isinstance(evaluate, float)
            multiple = same_kind and save != 0 and round(save * 1e6) % round(evaluate * 1e6) == 0
            checks.require(multiple, "save_steps", save,
                           f"a multiple of eval_steps ({evaluate}) with load_best_model_at_end, "
                           "both step counts or both fractions")

    @classmethod
    def field_help(cls):
        """{field name: help text}, for documentation and the command line."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
