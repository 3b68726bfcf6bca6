"""Trainer configurations. Field names and defaults follow TRL 1.16 and
transformers' TrainingArguments, so a TRL user's settings carry over.

Every field is checked when the config is built (calign.checks: an integer
field takes Python and NumPy integers, a float field finite reals, a flag
only True or False), and so is every combination of fields: a setting that
contradicts another, or that no chosen loss uses (it would be ignored without
a word), is refused then, naming the field, not when the trainer is built or
partway through training."""

from dataclasses import dataclass, field, fields

import numpy as np

from calign import checks, losses
from calign.data.truncation import TRUNCATION_MODES, Truncation

LR_SCHEDULER_TYPES = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_torch", "sgd")

# The DPO loss types each optional loss setting acts on; another value than
# the default with none of them chosen would change nothing.
LABEL_SMOOTHING_DPO_LOSS_TYPES = ("robust", "exo_pair", "aot", "aot_unpaired")
# The loss types an f-divergence generalises (TRL's list, plus calign's scpo,
# which adds a term to sigmoid's): the others read the log-ratios directly.
F_DIVERGENCE_DPO_LOSS_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust",
                               "discopop", "sft", "scpo")
# The loss types that sort the pairs of a batch: a per-pair weight (WPO's or a
# record's) would land on another pair (TRL refuses use_weighting with them).
SORTING_DPO_LOSS_TYPES = ("aot", "aot_unpaired")
# The CPO loss types label_smoothing acts on (TRL ignores it for hinge and ipo).
LABEL_SMOOTHING_CPO_LOSS_TYPES = ("sigmoid", "simpo")


def _help(text, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def _integers(config, low, *names, allow_none=False):
    """Checks integer fields, storing them as Python ints."""
    for name in names:
        setattr(config, name, checks.integer(name, getattr(config, name), low,
                                             allow_none=allow_none))


def _reals(config, names, low=None, high=None, **options):
    """Checks real-number fields, storing them as Python floats."""
    for name in names:
        setattr(config, name, checks.real(name, getattr(config, name), low, high, **options))


def _unused_unless(config, name, default, used, reason):
    """A field left at its default unless `used` (the setting acts only then)."""
    value = getattr(config, name)
    checks.require(used or value == default, name, value, f"{default!r} {reason}")


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
        checks.require(isinstance(self.output_dir, str) and self.output_dir, "output_dir",
                       self.output_dir, "a non-empty path")
        _integers(self, 1, "per_device_train_batch_size", "per_device_eval_batch_size",
                  "gradient_accumulation_steps", "logging_steps")
        _integers(self, None, "max_steps")
        _integers(self, 0, "warmup_steps", "save_steps")
        # the data order is drawn from numpy.random.default_rng([seed, epoch])
        _integers(self, 0, "seed")
        _integers(self, 1, "eval_steps", "save_total_limit", allow_none=True)
        _reals(self, ("learning_rate", "weight_decay", "max_grad_norm"), 0.0)
        _reals(self, ("num_train_epochs", "adam_epsilon"), 0.0, open_low=True)
        _reals(self, ("warmup_ratio",), 0.0, 1.0)
        _reals(self, ("adam_beta1", "adam_beta2"), 0.0, 1.0, open_high=True)
        checks.choice("lr_scheduler_type", self.lr_scheduler_type, LR_SCHEDULER_TYPES)
        checks.choice("optim", self.optim, OPTIMIZERS)
        truncation = Truncation.of(self)
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            setattr(self, name, getattr(truncation, name))
        for f in fields(self):  # every flag, the subclasses' too (a string "False" is truthy)
            if f.type in (bool, "bool"):
                setattr(self, f.name, checks.flag(f.name, getattr(self, f.name)))

    @classmethod
    def field_help(cls):
        """{field name: help text}, for documentation and the command line."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


@dataclass
class DPOConfig(TrainingConfig):
    """DPO and its variants (TRL's DPOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's DPO default).", default=1e-6)
    beta: float = _help("KL strength beta of the implicit reward.", default=0.1)
    loss_type: object = _help(f"One of {losses.DPO_LOSS_TYPES} or 'listwise', or a list of "
                              "them.", default="sigmoid")
    loss_weights: list = _help("Weights of the loss types in a list (default all 1).",
                               default=None)
    label_smoothing: float = _help("Label-noise epsilon (robust, exo_pair, aot, aot_unpaired).",
                                   default=0.0)
    f_divergence_type: str = _help(f"One of {losses.F_DIVERGENCE_TYPES}.", default="reverse_kl")
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
        if isinstance(self.loss_type, np.ndarray):
            self.loss_type = self.loss_type.tolist()
        types = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        checks.require(isinstance(types, (list, tuple)) and len(types) > 0, "loss_type",
                       self.loss_type, "a loss name or a non-empty list of them")
        for t in types:
            checks.choice("loss_type", t, losses.DPO_LOSS_TYPES + ("listwise",))
        listwise = "listwise" in types
        checks.require(not listwise or len(types) == 1, "loss_type", self.loss_type,
                       "'listwise' alone (it does not combine with pairwise losses)")
        if isinstance(self.loss_weights, np.ndarray):
            self.loss_weights = self.loss_weights.tolist()
        checks.require(not (listwise and self.loss_weights is not None), "loss_weights",
                       self.loss_weights, "None for loss_type 'listwise' (one loss, no weights)")
        _reals(self, ("ld_alpha",), 0.0, 1.0, allow_none=True)
        _reals(self, ("rpo_alpha",), 0.0, allow_none=True)
        _reals(self, ("ref_model_mixup_alpha",), 0.0, 1.0)
        _integers(self, 1, "ref_model_sync_steps")
        # The loss library checks each loss setting and its combinations with the
        # loss types (e.g. label_smoothing in [0, 0.5) for 'robust'), raising
        # ValueError naming the field: the rules live there, once. A listwise
        # run's settings are checked as values there (as for plain sigmoid) and
        # must keep their defaults (below): listwise uses beta alone.
        losses.dpo_settings(**self._loss_arguments(types if not listwise else ["sigmoid"]))
        for name in ("beta", "label_smoothing", "f_alpha_divergence_coef", "discopop_tau",
                     "scpo_alpha"):
            setattr(self, name, float(getattr(self, name)))
        if self.loss_weights is not None:
            self.loss_weights = [float(w) for w in self.loss_weights]
        self._check_combinations(types)

    def _check_combinations(self, types):
        """The settings that contradict each other or that no chosen loss uses."""
        named = f"with loss_type {self.loss_type!r}"
        pairwise = "listwise" not in types
        _unused_unless(self, "label_smoothing", 0.0,
                       pairwise and set(types) & set(LABEL_SMOOTHING_DPO_LOSS_TYPES),
                       f"{named}: it acts on {list(LABEL_SMOOTHING_DPO_LOSS_TYPES)} only")
        _unused_unless(self, "f_divergence_type", "reverse_kl",
                       pairwise and set(types) <= set(F_DIVERGENCE_DPO_LOSS_TYPES),
                       f"{named}: an f-divergence generalises "
                       f"{list(F_DIVERGENCE_DPO_LOSS_TYPES)} only")
        _unused_unless(self, "f_alpha_divergence_coef", 1.0,
                       self.f_divergence_type == "alpha_divergence",
                       "unless f_divergence_type is 'alpha_divergence'")
        _unused_unless(self, "discopop_tau", 0.05, pairwise and "discopop" in types,
                       f"{named}: it is the 'discopop' loss's temperature")
        _unused_unless(self, "scpo_alpha", 1.0, pairwise and "scpo" in types,
                       f"{named}: it weighs the 'scpo' loss's NLL term")
        checks.require(pairwise or self.rpo_alpha is None, "rpo_alpha", self.rpo_alpha,
                       "None for loss_type 'listwise' (RPO adds an NLL term to pairwise losses)")
        checks.require(pairwise or not self.use_weighting, "use_weighting", self.use_weighting,
                       "False for loss_type 'listwise' (WPO weighs pairs)")
        sorting = [t for t in types if t in SORTING_DPO_LOSS_TYPES]
        if self.use_weighting and sorting:
            checks.require(False, "use_weighting", self.use_weighting,
                           f"False {named}: {sorting[0]!r} sorts the pairs of a batch, so a "
                           "pair's weight would land on another pair")
        # The NLL terms (RPO's, 'sft''s, 'scpo''s) are over the chosen tokens as
        # they are (TRL's), but LD-DPO would weigh the tokens of their log-prob sums.
        nll = [f"loss_type {t!r}" for t in types if t in losses.CHOSEN_LENGTH_DPO_LOSS_TYPES]
        nll += ["rpo_alpha"] if self.rpo_alpha is not None else []
        if self.ld_alpha is not None and nll:
            checks.require(False, "ld_alpha", self.ld_alpha,
                           f"None with {nll[0]}: its NLL term is over the chosen tokens "
                           "unweighted, which LD-DPO would weigh")
        checks.require(not (self.precompute_ref_log_probs and self.reference_free),
                       "precompute_ref_log_probs", self.precompute_ref_log_probs,
                       "False when reference_free is set (there is no reference to compute)")
        checks.require(not (self.sync_ref_model and self.precompute_ref_log_probs),
                       "sync_ref_model", self.sync_ref_model, "False when "
                       "precompute_ref_log_probs is set (a moving reference cannot be "
                       "precomputed)")
        checks.require(not (self.sync_ref_model and self.reference_free), "sync_ref_model",
                       self.sync_ref_model, "False when reference_free is set (there is no "
                       "reference to move)")
        for name, default in (("ref_model_mixup_alpha", 0.6), ("ref_model_sync_steps", 512)):
            _unused_unless(self, name, default, self.sync_ref_model,
                           "unless sync_ref_model is set (TR-DPO)")

    def _loss_arguments(self, types):
        return dict(beta=self.beta, loss_type=list(types), loss_weights=self.loss_weights,
                    label_smoothing=self.label_smoothing,
                    f_divergence_type=self.f_divergence_type,
                    f_alpha_divergence_coef=self.f_alpha_divergence_coef,
                    discopop_tau=self.discopop_tau, scpo_alpha=self.scpo_alpha)

    def loss_settings(self):
        """The pairwise loss's settings as calign.losses.dpo_settings returns
        them (the fused pair scoring takes them); not for loss_type 'listwise'."""
        return losses.dpo_settings(**self._loss_arguments(self.loss_types))

    @property
    def loss_types(self):
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


@dataclass
class OnlineDPOConfig(DPOConfig):
    """DPOConfig plus the sampling settings of TRL's OnlineDPOConfig."""

    max_new_tokens: int = _help("Tokens to sample per completion.", default=64)
    temperature: float = _help("Sampling temperature.", default=0.9)
    missing_eos_penalty: float = _help("Subtracted from the score of a completion that does "
                                       "not end with EOS (None: off).", default=None)

    def __post_init__(self):
        super().__post_init__()
        _integers(self, 1, "max_new_tokens")
        _reals(self, ("temperature",), 0.0, open_low=True)
        _reals(self, ("missing_eos_penalty",), allow_none=True)
        checks.require(not self.precompute_ref_log_probs, "precompute_ref_log_probs",
                       self.precompute_ref_log_probs,
                       "False (the completions do not exist before)")
        checks.require(self.loss_types != ["listwise"], "loss_type", self.loss_type,
                       "a pairwise loss (online DPO samples a pair per prompt)")
        checks.require(self.max_completion_length is None, "max_completion_length",
                       self.max_completion_length,
                       "None (max_new_tokens bounds the sampled completions)")
        checks.require(self.max_length is None or self.max_new_tokens < self.max_length,
                       "max_new_tokens", self.max_new_tokens,
                       f"below max_length ({self.max_length}), which bounds prompt + "
                       "completion")


@dataclass
class KTOConfig(TrainingConfig):
    """KTO (TRL's KTOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's KTO default).", default=1e-6)
    beta: float = _help("KL strength beta.", default=0.1)
    loss_type: str = _help(f"One of {losses.KTO_LOSS_TYPES}.", default="kto")
    desirable_weight: float = _help("lambda_D: weight of desirable examples.", default=1.0)
    undesirable_weight: float = _help("lambda_U: weight of undesirable examples.", default=1.0)

    def __post_init__(self):
        super().__post_init__()
        _reals(self, ("beta", "desirable_weight", "undesirable_weight"), 0.0, open_low=True)
        checks.choice("loss_type", self.loss_type, losses.KTO_LOSS_TYPES)
        checks.require(self.loss_type != "kto" or self.per_device_train_batch_size >= 2,
                       "per_device_train_batch_size", self.per_device_train_batch_size,
                       ">= 2 for loss_type 'kto': the KL estimate pairs each prompt with "
                       "another example's completion")


@dataclass
class ORPOConfig(TrainingConfig):
    """ORPO (TRL's ORPOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's ORPO default).", default=1e-6)
    beta: float = _help("Weight lambda of the odds-ratio term.", default=0.1)

    def __post_init__(self):
        super().__post_init__()
        _reals(self, ("beta",), 0.0, open_low=True)


@dataclass
class CPOConfig(TrainingConfig):
    """CPO, SimPO and AlphaPO (TRL's CPOConfig)."""

    learning_rate: float = _help("Peak learning rate (TRL's CPO default).", default=1e-6)
    beta: float = _help("Temperature beta of the preference term.", default=0.1)
    loss_type: str = _help(f"One of {losses.CPO_LOSS_TYPES}.", default="sigmoid")
    label_smoothing: float = _help("Conservative label smoothing (sigmoid, simpo).",
                                   default=0.0)
    cpo_alpha: float = _help("Weight of the chosen NLL term (0 for pure SimPO).", default=1.0)
    simpo_gamma: float = _help("SimPO's target reward margin.", default=0.5)
    alpha: float = _help("AlphaPO reward shape (0: log-probs).", default=0.0)

    def __post_init__(self):
        super().__post_init__()
        _reals(self, ("beta",), 0.0, open_low=True)
        checks.choice("loss_type", self.loss_type, losses.CPO_LOSS_TYPES)
        _reals(self, ("label_smoothing",), 0.0, 0.5)
        _reals(self, ("cpo_alpha",), 0.0)
        _reals(self, ("simpo_gamma", "alpha"))
        named = f"with loss_type {self.loss_type!r}"
        _unused_unless(self, "label_smoothing", 0.0,
                       self.loss_type in LABEL_SMOOTHING_CPO_LOSS_TYPES,
                       f"{named}: it acts on {list(LABEL_SMOOTHING_CPO_LOSS_TYPES)} only")
        _unused_unless(self, "simpo_gamma", 0.5, self.loss_type == "simpo",
                       f"{named}: it is the 'simpo' loss's margin")


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
        checks.require(isinstance(self.completion_only_loss, (bool, np.bool_)),
                       "completion_only_loss", self.completion_only_loss, "True, False or None")
        self.completion_only_loss = bool(self.completion_only_loss)
        super().__post_init__()


@dataclass
class RewardConfig(TrainingConfig):
    """Reward modelling (TRL's RewardConfig)."""

    center_rewards_coefficient: float = _help(
        "Weight of the reward-centring term (Eisenstein et al. 2023); None: off.", default=None)

    def __post_init__(self):
        super().__post_init__()
        _reals(self, ("center_rewards_coefficient",), 0.0, allow_none=True)
