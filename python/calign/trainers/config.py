"""Trainer configurations. Field names and defaults follow TRL 1.16 and
transformers' TrainingArguments, so a TRL user's settings carry over; every
field is checked when the config is built, and the message names it."""

from dataclasses import dataclass, field, fields

import numpy as np

from calign.checks import is_finite_real
from calign.losses import CPO_LOSS_TYPES, DPO_LOSS_TYPES, F_DIVERGENCE_TYPES, KTO_LOSS_TYPES

LR_SCHEDULER_TYPES = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_torch", "sgd")
TRUNCATION_MODES = ("keep_start", "keep_end")


def _help(text, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def _check(condition, name, value, requirement):
    if not condition:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


@dataclass
class TrainingConfig:
    """Settings every trainer shares (transformers' TrainingArguments names)."""

    output_dir: str = _help("Folder for checkpoints, metrics.jsonl and the final model.",
                            default="trainer_output")
    learning_rate: float = _help("Peak learning rate of the optimizer.", default=5e-5)
    per_device_train_batch_size: int = _help("Examples per micro-batch in training.", default=8)
    per_device_eval_batch_size: int = _help("Examples per batch in evaluation.", default=8)
    gradient_accumulation_steps: int = _help(
        "Micro-batches whose gradients are summed before one optimizer step.", default=1)
    num_train_epochs: float = _help("Passes over the training data (when max_steps <= 0).",
                                    default=3.0)
    max_steps: int = _help("Optimizer steps to take; > 0 overrides num_train_epochs.", default=-1)
    lr_scheduler_type: str = _help(f"One of {LR_SCHEDULER_TYPES}.", default="linear")
    warmup_ratio: float = _help("Fraction of the steps with a linear warm-up.", default=0.0)
    warmup_steps: int = _help("Warm-up steps; > 0 overrides warmup_ratio.", default=0)
    weight_decay: float = _help("Decoupled weight decay (AdamW) or L2 (SGD).", default=0.0)
    max_grad_norm: float = _help("Clip the global gradient norm to this; 0 disables.",
                                 default=1.0)
    optim: str = _help(f"One of {OPTIMIZERS}.", default="adamw_torch")
    adam_beta1: float = _help("AdamW beta1.", default=0.9)
    adam_beta2: float = _help("AdamW beta2.", default=0.999)
    adam_epsilon: float = _help("AdamW epsilon.", default=1e-8)
    seed: int = _help("Seed of the data order and of initialisations.", default=42)
    logging_steps: int = _help("Log every this many optimizer steps.", default=10)
    eval_steps: int = _help("Evaluate every this many steps (None: only at the end).",
                            default=None)
    save_steps: int = _help("Write a checkpoint every this many steps (0: never).", default=500)
    save_total_limit: int = _help("Keep at most this many checkpoints (None: all).", default=None)
    max_length: int = _help("Longest sequence (prompt + completion) in tokens; None: no limit.",
                            default=1024)
    max_prompt_length: int = _help("Longest prompt; longer prompts keep their end.", default=None)
    max_completion_length: int = _help("Longest completion; longer ones keep their start.",
                                       default=None)
    truncation_mode: str = _help(f"One of {TRUNCATION_MODES}: which end of a too-long sequence "
                                 "is kept.", default="keep_start")
    gradient_checkpointing: bool = _help(
        "Keep only each layer's input in the forward and recompute its activations in the "
        "backward: less memory, about one more forward pass of compute, the same numbers. "
        "TRL defaults to True; calign to False, as its activations are already small.",
        default=False)
    shuffle: bool = _help("Shuffle the training data every epoch (seeded).", default=True)
    disable_tqdm: bool = _help("No progress bar.", default=False)

    def __post_init__(self):
        _check(isinstance(self.output_dir, str) and self.output_dir, "output_dir",
               self.output_dir, "a non-empty path")
        _check(is_finite_real(self.learning_rate) and self.learning_rate >= 0, "learning_rate",
               self.learning_rate, "a number >= 0")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "logging_steps"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
                   value, "an integer >= 1")
        _check(is_finite_real(self.num_train_epochs) and self.num_train_epochs > 0,
               "num_train_epochs", self.num_train_epochs, "a number > 0")
        _check(isinstance(self.max_steps, int), "max_steps", self.max_steps, "an integer")
        _check(self.lr_scheduler_type in LR_SCHEDULER_TYPES, "lr_scheduler_type",
               self.lr_scheduler_type, f"one of {list(LR_SCHEDULER_TYPES)}")
        _check(is_finite_real(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1, "warmup_ratio",
               self.warmup_ratio, "in [0, 1]")
        _check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps",
               self.warmup_steps, "an integer >= 0")
        _check(is_finite_real(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
               self.weight_decay, "a number >= 0")
        _check(is_finite_real(self.max_grad_norm) and self.max_grad_norm >= 0, "max_grad_norm",
               self.max_grad_norm, "a number >= 0")
        _check(self.optim in OPTIMIZERS, "optim", self.optim, f"one of {list(OPTIMIZERS)}")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            _check(is_finite_real(value) and 0 <= value < 1, name, value, "in [0, 1)")
        _check(is_finite_real(self.adam_epsilon) and self.adam_epsilon > 0, "adam_epsilon",
               self.adam_epsilon, "a number > 0")
        _check(isinstance(self.seed, int), "seed", self.seed, "an integer")
        for name in ("eval_steps", "save_total_limit"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and value >= 1), name, value,
                   "None or an integer >= 1")
        _check(isinstance(self.save_steps, int) and self.save_steps >= 0, "save_steps",
               self.save_steps, "an integer >= 0")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and value >= 2), name, value,
                   "None or an integer >= 2")
        for f in fields(self):  # every flag, the subclasses' too (a string "False" is truthy)
            if f.type in (bool, "bool"):
                value = getattr(self, f.name)
                _check(isinstance(value, (bool, np.bool_)), f.name, value, "True or False")
                setattr(self, f.name, bool(value))
        _check(self.truncation_mode in TRUNCATION_MODES, "truncation_mode",
               self.truncation_mode, f"one of {list(TRUNCATION_MODES)}")

    @classmethod
    def field_help(cls):
        """{field name: help text}, for documentation and the command line."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


@dataclass
class DPOConfig(TrainingConfig):
    """DPO and its variants (TRL's DPOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's DPO default).", default=1e-6)
    beta: float = _help("KL strength beta of the implicit reward.", default=0.1)
    loss_type: object = _help(f"One of {DPO_LOSS_TYPES} or 'listwise', or a list of them.",
                              default="sigmoid")
    loss_weights: list = _help("Weights of the loss types in a list (default all 1).",
                               default=None)
    label_smoothing: float = _help("Label-noise epsilon (robust, exo_pair, aot).", default=0.0)
    f_divergence_type: str = _help(f"One of {F_DIVERGENCE_TYPES}.", default="reverse_kl")
    f_alpha_divergence_coef: float = _help("alpha of the alpha-divergence.", default=1.0)
    discopop_tau: float = _help("Temperature of the discopop loss.", default=0.05)
    use_weighting: bool = _help("WPO weighting of each pair (Zhou et al. 2024).", default=False)
    ld_alpha: float = _help("LD-DPO: weight of completion tokens past the shorter one's length "
                            "(None: plain sums).", default=None)
    rpo_alpha: float = _help("RPO: weight of the chosen NLL term added to the loss (None: off).",
                             default=None)
    scpo_alpha: float = _help("ScPO (loss_type='scpo'): weight alpha of the chosen NLL term "
                              "divided by the chosen length (Prasad et al. 2024); 1 as in "
                              "IRPO (Pang et al. 2024), whose loss ScPO weights.", default=1.0)
    reference_free: bool = _help("Use a uniform reference (reference log-probs 0).",
                                 default=False)
    precompute_ref_log_probs: bool = _help(
        "Compute reference log-probs once before training (cached in output_dir).",
        default=False)
    sync_ref_model: bool = _help("TR-DPO: move the reference towards the policy.",
                                 default=False)
    ref_model_mixup_alpha: float = _help("TR-DPO mixing weight alpha.", default=0.6)
    ref_model_sync_steps: int = _help("TR-DPO: sync every this many steps.", default=512)

    def __post_init__(self):
        super().__post_init__()
        _check(is_finite_real(self.beta) and self.beta > 0, "beta", self.beta, "a number > 0")
        if isinstance(self.loss_type, np.ndarray):
            self.loss_type = [str(t) for t in self.loss_type]
        types = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        _check(isinstance(types, (list, tuple)) and len(types) > 0, "loss_type", self.loss_type,
               "a loss name or a non-empty list of them")
        for t in types:
            _check(t in DPO_LOSS_TYPES + ("listwise",), "loss_type", t,
                   f"one of {list(DPO_LOSS_TYPES) + ['listwise']}")
        _check("listwise" not in types or len(types) == 1, "loss_type", self.loss_type,
               "'listwise' alone (it does not combine with pairwise losses)")
        if self.loss_weights is not None:
            _check(isinstance(self.loss_weights, (list, tuple, np.ndarray)) and
                   len(self.loss_weights) == len(types), "loss_weights", self.loss_weights,
                   f"a list of {len(types)} numbers (one per loss_type)")
            for w in self.loss_weights:
                _check(is_finite_real(w), "loss_weights", self.loss_weights,
                       f"a list of {len(types)} finite numbers")
            self.loss_weights = [float(w) for w in self.loss_weights]
        _check(is_finite_real(self.label_smoothing) and 0 <= self.label_smoothing <= 1,
               "label_smoothing", self.label_smoothing, "in [0, 1]")
        _check(self.f_divergence_type in F_DIVERGENCE_TYPES, "f_divergence_type",
               self.f_divergence_type, f"one of {list(F_DIVERGENCE_TYPES)}")
        _check(self.ld_alpha is None or (is_finite_real(self.ld_alpha) and 0 <= self.ld_alpha <= 1),
               "ld_alpha", self.ld_alpha, "None or in [0, 1]")
        _check(self.rpo_alpha is None or (is_finite_real(self.rpo_alpha) and self.rpo_alpha >= 0),
               "rpo_alpha", self.rpo_alpha, "None or a number >= 0")
        _check(is_finite_real(self.scpo_alpha) and self.scpo_alpha >= 0, "scpo_alpha",
               self.scpo_alpha, "a number >= 0")
        _check(is_finite_real(self.ref_model_mixup_alpha) and 0 <= self.ref_model_mixup_alpha <= 1,
               "ref_model_mixup_alpha", self.ref_model_mixup_alpha, "in [0, 1]")
        _check(isinstance(self.ref_model_sync_steps, int) and self.ref_model_sync_steps >= 1,
               "ref_model_sync_steps", self.ref_model_sync_steps, "an integer >= 1")
        _check(not (self.sync_ref_model and self.precompute_ref_log_probs), "sync_ref_model",
               self.sync_ref_model, "False when precompute_ref_log_probs is set (a moving "
               "reference cannot be precomputed)")

    @property
    def loss_types(self):
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


@dataclass
class KTOConfig(TrainingConfig):
    """KTO (TRL's KTOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's KTO default).", default=1e-6)
    beta: float = _help("KL strength beta.", default=0.1)
    loss_type: str = _help(f"One of {KTO_LOSS_TYPES}.", default="kto")
    desirable_weight: float = _help("lambda_D: weight of desirable examples.", default=1.0)
    undesirable_weight: float = _help("lambda_U: weight of undesirable examples.", default=1.0)

    def __post_init__(self):
        super().__post_init__()
        _check(is_finite_real(self.beta) and self.beta > 0, "beta", self.beta, "a number > 0")
        _check(self.loss_type in KTO_LOSS_TYPES, "loss_type", self.loss_type,
               f"one of {list(KTO_LOSS_TYPES)}")
        for name in ("desirable_weight", "undesirable_weight"):
            value = getattr(self, name)
            _check(is_finite_real(value) and value > 0, name, value, "a number > 0")


@dataclass
class ORPOConfig(TrainingConfig):
    """ORPO (TRL's ORPOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's ORPO default).", default=1e-6)
    beta: float = _help("Weight lambda of the odds-ratio term.", default=0.1)

    def __post_init__(self):
        super().__post_init__()
        _check(is_finite_real(self.beta) and self.beta > 0, "beta", self.beta, "a number > 0")


@dataclass
class CPOConfig(TrainingConfig):
    """CPO, SimPO and AlphaPO (TRL's CPOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's CPO default).", default=1e-6)
    beta: float = _help("Temperature beta of the preference term.", default=0.1)
    loss_type: str = _help(f"One of {CPO_LOSS_TYPES}.", default="sigmoid")
    label_smoothing: float = _help("Conservative label smoothing.", default=0.0)
    cpo_alpha: float = _help("Weight of the chosen NLL term (0 for pure SimPO).", default=1.0)
    simpo_gamma: float = _help("SimPO's target reward margin.", default=0.5)
    alpha: float = _help("AlphaPO reward shape (0: log-probs).", default=0.0)

    def __post_init__(self):
        super().__post_init__()
        _check(is_finite_real(self.beta) and self.beta > 0, "beta", self.beta, "a number > 0")
        _check(self.loss_type in CPO_LOSS_TYPES, "loss_type", self.loss_type,
               f"one of {list(CPO_LOSS_TYPES)}")
        _check(is_finite_real(self.label_smoothing) and 0 <= self.label_smoothing <= 0.5,
               "label_smoothing", self.label_smoothing, "in [0, 0.5]")
        _check(is_finite_real(self.cpo_alpha) and self.cpo_alpha >= 0, "cpo_alpha", self.cpo_alpha,
               "a number >= 0")


@dataclass
class SFTConfig(TrainingConfig):
    """Supervised fine-tuning (TRL's SFTConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's SFT default).", default=2e-5)
    completion_only_loss: object = _help(
        "For prompt/completion records, train on the completion only. None (TRL's default, "
        "'only for prompt/completion data') is the same as True here.", default=True)

    def __post_init__(self):
        if self.completion_only_loss is None:
            self.completion_only_loss = True
        _check(isinstance(self.completion_only_loss, (bool, np.bool_)), "completion_only_loss",
               self.completion_only_loss, "True, False or None")
        self.completion_only_loss = bool(self.completion_only_loss)
        super().__post_init__()


@dataclass
class RewardConfig(TrainingConfig):
    """Reward modelling (TRL's RewardConfig)."""

    center_rewards_coefficient: float = _help(
        "Weight of the reward-centring term (Eisenstein et al. 2023); None: off.", default=None)

    def __post_init__(self):
        super().__post_init__()
        value = self.center_rewards_coefficient
        _check(value is None or (is_finite_real(value) and value >= 0), "center_rewards_coefficient",
               value, "None or a number >= 0")
