"""Trainer configurations. Field names and defaults follow TRL 1.16 and
transformers' TrainingArguments, so a TRL user's config carries over unchanged:
every field of TRL's DPOConfig, KTOConfig, ORPOConfig, CPOConfig, RewardConfig,
SFTConfig and OnlineDPOConfig is a field here with TRL's default, implemented,
or accepted and ignored, or refused at the values calign cannot honour
(trl_fields says which and why; test_trl_config_fields.py checks it against
the installed TRL).

Every field is checked when the config is built (calign.checks: an integer
field takes Python and NumPy integers, a float field finite reals, a flag
only True or False), and so is every combination of fields: a setting that
contradicts another, or that no chosen loss uses (it would be ignored without
a word), is refused then, naming the field, not when the trainer is built or
partway through training."""

from dataclasses import dataclass

import numpy as np

from calign import checks, losses
from calign.trainers import trl_fields
from calign.trainers.training_args import (TrainingConfig, check_integers, check_reals,
                                           help_field, unused_unless)

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
# "nll": TRL's; "token_constrained": Qi et al. 2024's token-wise constrained
# objective against a reference (calign.losses.token_constrained_loss).
SFT_LOSS_TYPES = ("nll", "token_constrained")

# TRL's fields of each config that calign ignores or refuses at some values.
DPOPart = trl_fields.part("DPOPart", (
    "router_aux_loss_coef", "disable_dropout", "dataset_num_proc", "padding_free",
    "pad_to_multiple_of", "activation_offloading", "pad_token"))
KTOPart = trl_fields.part("KTOPart", (
    "router_aux_loss_coef", "disable_dropout", "dataset_num_proc", "pad_to_multiple_of",
    "activation_offloading"))
ORPOPart = trl_fields.part("ORPOPart", (
    "disable_dropout", "padding_value", "generate_during_eval", "is_encoder_decoder",
    "dataset_num_proc"))
CPOPart = trl_fields.part("CPOPart", (
    "disable_dropout", "generate_during_eval", "is_encoder_decoder", "dataset_num_proc"))
RewardPart = trl_fields.part("RewardPart", (
    "chat_template_path", "disable_dropout", "dataset_num_proc", "eos_token",
    "pad_to_multiple_of", "activation_offloading", "pad_token"))
SFTPart = trl_fields.part("SFTPart", (
    "router_aux_loss_coef", "chat_template_path", "dataset_kwargs", "dataset_num_proc",
    "eos_token", "shuffle_dataset", "packing", "packing_strategy", "padding_free",
    "pad_to_multiple_of", "eval_packing", "assistant_only_loss", "activation_offloading",
    "pad_token"))
OnlineDPOPart = trl_fields.part("OnlineDPOPart", (
    "generation_kwargs", "min_p", "cache_implementation", "use_vllm", "vllm_model_impl",
    "vllm_structured_outputs_regex", "vllm_gpu_memory_utilization", "vllm_mode",
    "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout",
    "vllm_group_port", "vllm_tensor_parallel_size", "vllm_enable_sleep_mode",
    "ds3_gather_for_generation", "reward_weights"))


@dataclass
class DPOConfig(TrainingConfig, DPOPart):
    """DPO and its variants (TRL's DPOConfig)."""

    learning_rate: float = help_field("Peak learning rate (TRL's DPO default).", default=1e-6)
    beta: float = help_field("KL strength beta of the implicit reward.", default=0.1)
    loss_type: object = help_field(f"One of {losses.DPO_LOSS_TYPES} or 'listwise', or a list "
                                   "of them.", default_factory=lambda: ["sigmoid"])
    loss_weights: list = help_field("Weights of the loss types in a list (default all 1).",
                                    default=None)
    label_smoothing: float = help_field("Label-noise epsilon (robust, exo_pair, aot, "
                                        "aot_unpaired).", default=0.0)
    f_divergence_type: str = help_field(f"One of {losses.F_DIVERGENCE_TYPES}.",
                                        default="reverse_kl")
    f_alpha_divergence_coef: float = help_field("alpha of the alpha-divergence.", default=0.5)
    discopop_tau: float = help_field("Temperature of the discopop loss.", default=0.05)
    use_weighting: bool = help_field("WPO weighting of each pair (Zhou et al. 2024).",
                                     default=False)
    ld_alpha: float = help_field("LD-DPO: weight of completion tokens past the shorter one's "
                                 "length (None: plain sums).", default=None)
    rpo_alpha: float = help_field("RPO: weight of the chosen NLL term added to the loss (None: "
                                  "off).", default=None)
    scpo_alpha: float = help_field("ScPO (loss_type='scpo'): weight alpha of the chosen NLL "
                                   "term divided by the chosen length (Prasad et al. 2024); 1 "
                                   "as in IRPO (Pang et al. 2024), whose loss ScPO weights.",
                                   default=1.0)
    reference_free: bool = help_field("Use a uniform reference (reference log-probs 0).",
                                      default=False)
    precompute_ref_log_probs: bool = help_field(
        "Compute reference log-probs once before training (cached in output_dir).",
        default=False)
    precompute_ref_batch_size: int = help_field(
        "Batch size of that computation (None: the train and eval batch sizes).", default=None)
    sync_ref_model: bool = help_field("TR-DPO: move the reference towards the policy.",
                                      default=False)
    ref_model_mixup_alpha: float = help_field("TR-DPO mixing weight alpha.", default=0.6)
    ref_model_sync_steps: int = help_field("TR-DPO: sync every this many steps.", default=512)

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
        check_reals(self, ("ld_alpha",), 0.0, 1.0, allow_none=True)
        check_reals(self, ("rpo_alpha",), 0.0, allow_none=True)
        check_reals(self, ("ref_model_mixup_alpha",), 0.0, 1.0)
        check_integers(self, 1, "ref_model_sync_steps")
        check_integers(self, 1, "precompute_ref_batch_size", allow_none=True)
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
        unused_unless(self, "label_smoothing", 0.0,
                      pairwise and set(types) & set(LABEL_SMOOTHING_DPO_LOSS_TYPES),
                      f"{named}: it acts on {list(LABEL_SMOOTHING_DPO_LOSS_TYPES)} only")
        unused_unless(self, "f_divergence_type", "reverse_kl",
                      pairwise and set(types) <= set(F_DIVERGENCE_DPO_LOSS_TYPES),
                      f"{named}: an f-divergence generalises "
                      f"{list(F_DIVERGENCE_DPO_LOSS_TYPES)} only")
        unused_unless(self, "f_alpha_divergence_coef", 0.5,
                      self.f_divergence_type == "alpha_divergence",
                      "unless f_divergence_type is 'alpha_divergence'")
        unused_unless(self, "discopop_tau", 0.05, pairwise and "discopop" in types,
                      f"{named}: it is the 'discopop' loss's temperature")
        unused_unless(self, "scpo_alpha", 1.0, pairwise and "scpo" in types,
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
            unused_unless(self, name, default, self.sync_ref_model,
                          "unless sync_ref_model is set (TR-DPO)")

    def _loss_arguments(self, types, beta=None):
        return dict(beta=self.beta if beta is None else beta, loss_type=list(types),
                    loss_weights=self.loss_weights, label_smoothing=self.label_smoothing,
                    f_divergence_type=self.f_divergence_type,
                    f_alpha_divergence_coef=self.f_alpha_divergence_coef,
                    discopop_tau=self.discopop_tau, scpo_alpha=self.scpo_alpha)

    def loss_settings(self, beta=None):
        """The pairwise loss's settings as calign.losses.dpo_settings returns
        them (the fused pair scoring takes them), at `beta` (None: the config's);
        not for loss_type 'listwise'."""
        return losses.dpo_settings(**self._loss_arguments(self.loss_types, beta))

    def beta_of_epoch(self, epoch):
        """The beta of the given (0-based) epoch."""
        return self.beta

    @property
    def loss_types(self):
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


@dataclass
class OnlineDPOConfig(DPOConfig, OnlineDPOPart):
    """DPOConfig plus the sampling settings of TRL's OnlineDPOConfig."""

    learning_rate: float = help_field("Peak learning rate (TRL's online DPO default).",
                                      default=5e-7)
    beta: object = help_field("KL strength beta, or a list: the beta of each epoch, the last "
                              "for the epochs after.", default_factory=lambda: [0.1])
    loss_type: object = help_field("A pairwise DPO loss type (TRL's: 'sigmoid' or 'ipo').",
                                   default="sigmoid")
    max_length: int = help_field("Longest prompt + completion; longer prompts keep their end.",
                                 default=512)
    reward_model_path: str = help_field("Reward model folder, loaded when the trainer is given "
                                        "no reward_model.", default=None)
    max_new_tokens: int = help_field("Tokens to sample per completion.", default=64)
    temperature: float = help_field("Sampling temperature.", default=0.9)
    top_p: float = help_field("Nucleus sampling: the smallest set of tokens of this total "
                              "probability (1: off).", default=1.0)
    top_k: int = help_field("Sample among the k most likely tokens (0: off).", default=0)
    repetition_penalty: float = help_field("CTRL's penalty of the tokens already in the "
                                           "sequence (1: off).", default=1.0)
    missing_eos_penalty: float = help_field("Subtracted from the score of a completion that "
                                            "does not end with EOS (None: off).", default=None)
    remove_unused_columns: bool = help_field(
        f"Ignored: {trl_fields.IGNORED['remove_unused_columns'][1]}.", default=False)

    def __post_init__(self):
        betas = self.beta.tolist() if isinstance(self.beta, np.ndarray) else self.beta
        if isinstance(betas, (list, tuple)):
            checks.require(len(betas) > 0, "beta", self.beta, "a number or a non-empty list")
            betas = [checks.real("beta", b, 0.0, open_low=True) for b in betas]
            self.beta = betas[0]  # DPOConfig checks the loss settings at one beta
        super().__post_init__()
        self.beta = betas if isinstance(betas, list) else self.beta
        for beta in self.beta if isinstance(self.beta, list) else ():
            self.loss_settings(beta)  # each epoch's loss settings are valid
        check_integers(self, 1, "max_new_tokens")
        check_integers(self, 0, "top_k")
        check_reals(self, ("temperature", "repetition_penalty"), 0.0, open_low=True)
        check_reals(self, ("top_p",), 0.0, 1.0, open_low=True)
        check_reals(self, ("missing_eos_penalty",), allow_none=True)
        checks.text("reward_model_path", self.reward_model_path, allow_none=True)
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

    def beta_of_epoch(self, epoch):
        if isinstance(self.beta, list):
            return self.beta[min(epoch, len(self.beta) - 1)]
        return self.beta


@dataclass
class KTOConfig(TrainingConfig, KTOPart):
    """KTO (TRL's KTOConfig)."""

    learning_rate: float = help_field("Peak learning rate (TRL's KTO default).", default=1e-6)
    train_sampling_strategy: str = help_field(
        "'sequential' (TRL's KTO default) or 'random': the data in order or shuffled every "
        "epoch.", default="sequential")
    beta: float = help_field("KL strength beta.", default=0.1)
    loss_type: str = help_field(f"One of {losses.KTO_LOSS_TYPES}.", default="kto")
    desirable_weight: float = help_field("lambda_D: weight of desirable examples.", default=1.0)
    undesirable_weight: float = help_field("lambda_U: weight of undesirable examples.",
                                           default=1.0)
    precompute_ref_log_probs: bool = help_field(
        "Only False: precomputing KTO's reference log-probs is not supported yet.",
        default=False)
    precompute_ref_batch_size: int = help_field("Only None (precompute_ref_log_probs is not "
                                                "supported yet for KTO).", default=None)
    sync_ref_model: bool = help_field("Only False: TR-DPO's moving reference is not supported "
                                      "yet for KTO.", default=False)
    ref_model_mixup_alpha: float = help_field("Only 0.6 (sync_ref_model is not supported yet "
                                              "for KTO).", default=0.6)
    ref_model_sync_steps: int = help_field("Only 512 (sync_ref_model is not supported yet for "
                                           "KTO).", default=512)

    def __post_init__(self):
        super().__post_init__()
        check_reals(self, ("beta", "desirable_weight", "undesirable_weight"), 0.0,
                    open_low=True)
        checks.choice("loss_type", self.loss_type, losses.KTO_LOSS_TYPES)
        checks.require(self.loss_type != "kto" or self.per_device_train_batch_size >= 2,
                       "per_device_train_batch_size", self.per_device_train_batch_size,
                       ">= 2 for loss_type 'kto': the KL estimate pairs each prompt with "
                       "another example's completion")
        for name, default in (("precompute_ref_log_probs", False), ("sync_ref_model", False),
                              ("precompute_ref_batch_size", None),
                              ("ref_model_mixup_alpha", 0.6), ("ref_model_sync_steps", 512)):
            value = getattr(self, name)
            same_kind = isinstance(value, (bool, np.bool_)) == isinstance(default, bool)
            checks.require(same_kind and value == default, name, value,
                           f"{default!r} (not supported yet for KTO)")


@dataclass
class ORPOConfig(TrainingConfig, ORPOPart):
    """ORPO (TRL's ORPOConfig)."""

    learning_rate: float = help_field("Peak learning rate (TRL's ORPO default).", default=1e-6)
    beta: float = help_field("Weight lambda of the odds-ratio term.", default=0.1)

    def __post_init__(self):
        super().__post_init__()
        check_reals(self, ("beta",), 0.0, open_low=True)


@dataclass
class CPOConfig(TrainingConfig, CPOPart):
    """CPO, SimPO and AlphaPO (TRL's CPOConfig)."""

    learning_rate: float = help_field("Peak learning rate (TRL's CPO default).", default=1e-6)
    beta: float = help_field("Temperature beta of the preference term.", default=0.1)
    loss_type: str = help_field(f"One of {losses.CPO_LOSS_TYPES}.", default="sigmoid")
    label_smoothing: float = help_field("Conservative label smoothing (sigmoid, simpo).",
                                        default=0.0)
    cpo_alpha: float = help_field("Weight of the chosen NLL term (0 for pure SimPO).",
                                  default=1.0)
    simpo_gamma: float = help_field("SimPO's target reward margin.", default=0.5)
    alpha: float = help_field("AlphaPO reward shape (0: log-probs).", default=0.0)

    def __post_init__(self):
        super().__post_init__()
        check_reals(self, ("beta",), 0.0, open_low=True)
        checks.choice("loss_type", self.loss_type, losses.CPO_LOSS_TYPES)
        check_reals(self, ("label_smoothing",), 0.0, 0.5)
        check_reals(self, ("cpo_alpha",), 0.0)
        check_reals(self, ("simpo_gamma", "alpha"))
        named = f"with loss_type {self.loss_type!r}"
        unused_unless(self, "label_smoothing", 0.0,
                      self.loss_type in LABEL_SMOOTHING_CPO_LOSS_TYPES,
                      f"{named}: it acts on {list(LABEL_SMOOTHING_CPO_LOSS_TYPES)} only")
        unused_unless(self, "simpo_gamma", 0.5, self.loss_type == "simpo",
                      f"{named}: it is the 'simpo' loss's margin")


@dataclass
class SFTConfig(TrainingConfig, SFTPart):
    """Supervised fine-tuning (TRL's SFTConfig)."""

    learning_rate: float = help_field("Peak learning rate (TRL's SFT default).", default=2e-5)
    completion_only_loss: object = help_field(
        "For prompt/completion records, train on the completion only. None (TRL's default, "
        "'only for prompt/completion data') is the same as True here.", default=None)
    dataset_text_field: str = help_field("The field of a language-modelling record holding its "
                                         "text.", default="text")
    loss_type: str = help_field(
        f"One of {SFT_LOSS_TYPES} ('dft' is not supported yet). 'token_constrained': the "
        "token-wise constrained objective of Qi et al. 2024 against a reference (the trainer's "
        "ref_model, by default a frozen copy of the initial model).", default="nll")
    constrained_betas: list = help_field(
        "loss_type 'token_constrained': beta_t of the t-th trained token of a record (entry "
        "t - 1; the last entry for every later token). Default: the paper's 0.5, then 2 for "
        "tokens 2-5, then 0.1.", default_factory=lambda: list(losses.CONSTRAINED_BETAS))
    precompute_ref_log_probs: bool = help_field(
        "loss_type 'token_constrained': score every record under the reference once before "
        "training (the official code's way) instead of at each step; no reference model is "
        "kept.", default=False)

    def __post_init__(self):
        if self.completion_only_loss is None:
            self.completion_only_loss = True
        checks.require(isinstance(self.completion_only_loss, (bool, np.bool_)),
                       "completion_only_loss", self.completion_only_loss, "True, False or None")
        self.completion_only_loss = bool(self.completion_only_loss)
        super().__post_init__()
        checks.text("dataset_text_field", self.dataset_text_field)
        checks.choice("loss_type", self.loss_type, SFT_LOSS_TYPES)
        constrained = self.loss_type == "token_constrained"
        self.constrained_betas = list(losses.constrained_beta_schedule(self.constrained_betas))
        unused_unless(self, "constrained_betas", list(losses.CONSTRAINED_BETAS), constrained,
                      "unless loss_type is 'token_constrained'")
        self.precompute_ref_log_probs = checks.flag("precompute_ref_log_probs",
                                                    self.precompute_ref_log_probs)
        unused_unless(self, "precompute_ref_log_probs", False, constrained,
                      "unless loss_type is 'token_constrained' (plain SFT has no reference)")


@dataclass
class RewardConfig(TrainingConfig, RewardPart):
    """Reward modelling (TRL's RewardConfig)."""

    learning_rate: float = help_field("Peak learning rate (TRL's reward default).",
                                      default=1e-4)
    center_rewards_coefficient: float = help_field(
        "Weight of the reward-centring term (Eisenstein et al. 2023); None: off.", default=None)

    def __post_init__(self):
        super().__post_init__()
        check_reals(self, ("center_rewards_coefficient",), 0.0, allow_none=True)
