"""Configurations of the online RL trainers, GRPOConfig and RLOOConfig: every
field of TRL 1.16's, with TRL's names and defaults, implemented, ignored or
refused (trl_fields) as for the other configs.

A generation batch is `generation_batch_size` completions: that many / G
prompts, each sampled `num_generations` (G) times. It is split into
`steps_per_generation` micro-batches of per_device_train_batch_size
completions, used `num_iterations` times before the next batch is sampled;
gradient_accumulation_steps micro-batches make an optimizer step (TRL's
scheme, whose defaults sample once per optimizer step)."""

from dataclasses import dataclass

from calign import checks, distributed, losses
from calign.trainers import trl_fields
from calign.trainers.training_args import (TrainingConfig, check_integers, check_reals,
                                           dict_field, help_field, unused_unless)

ONLINE_RL_FIELDS = (
    "router_aux_loss_coef", "ds3_gather_for_generation", "pad_to_multiple_of", "min_p",
    "generation_kwargs", "cache_implementation", "use_vllm", "vllm_mode", "vllm_model_impl",
    "vllm_enable_sleep_mode", "vllm_structured_outputs_regex", "vllm_server_base_url",
    "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port",
    "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_tensor_parallel_size",
    "log_completions", "log_multimodal", "num_completions_to_print", "log_unique_prompts",
    "use_transformers_continuous_batching", "transformers_continuous_batching_config",
    "use_transformers_paged")
OnlineRLPart = trl_fields.part("OnlineRLPart", ONLINE_RL_FIELDS,
                               defaults={"vllm_gpu_memory_utilization": 0.3})
GRPOPart = trl_fields.part("GRPOPart", (
    "cast_lm_head_to_fp32", "entropy_coef", "use_adaptive_entropy", "entropy_coef_min",
    "entropy_coef_max", "entropy_coef_delta", "entropy_target", "max_tool_calling_iterations",
    "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min",
    "vllm_importance_sampling_cap", "log_completions_hub_repo"))


@dataclass
class OnlineRLConfig(TrainingConfig, OnlineRLPart):
    """What GRPOConfig and RLOOConfig share: the rollout and the batch scheme."""

    # a field another TRL config ignores or refuses, implemented here
    implemented_trl_fields = ("shuffle_dataset", "disable_dropout", "reward_weights")

    learning_rate: float = help_field("Peak learning rate (TRL's online RL default).",
                                      default=1e-6)
    remove_unused_columns: bool = help_field(
        f"Ignored: {trl_fields.IGNORED['remove_unused_columns'][1]}.", default=False)
    max_length: int = help_field(
        "calign's: longest prompt + completion (None: the model's positions); longer prompts "
        "keep their end, leaving max_completion_length.", default=None)
    max_completion_length: int = help_field("Tokens to sample per completion at most.",
                                            default=512)
    model_init_kwargs: object = help_field(
        "from_pretrained arguments when the model is a folder (see TrainingConfig).",
        default=None)
    disable_dropout: bool = help_field(
        "calign has no dropout and trains as True does; with False (TRL's default, which "
        "keeps the adapters' dropout) LoRA adapters with lora_dropout > 0 are refused.",
        default=False)
    num_generations: int = help_field("Completions sampled per prompt (G >= 2).", default=8)
    num_generations_eval: int = help_field("Completions per prompt in evaluation (None: "
                                           "num_generations).", default=None)
    shuffle_dataset: bool = help_field("Shuffle the prompts every epoch (seeded).", default=True)
    generation_batch_size: int = help_field(
        "Completions per generation batch (None: per_device_train_batch_size * "
        "steps_per_generation).", default=None)
    steps_per_generation: int = help_field(
        "Micro-batches per generation batch (None: gradient_accumulation_steps).", default=None)
    temperature: float = help_field("Sampling temperature (the log-probs are of the tempered "
                                    "policy, as TRL's).", default=1.0)
    top_p: float = help_field("Nucleus sampling (1: off).", default=1.0)
    top_k: int = help_field("Sample among the k most likely tokens (0: off).", default=0)
    repetition_penalty: float = help_field("CTRL's penalty of tokens already in the sequence "
                                           "(1: off).", default=1.0)
    chat_template_kwargs: object = help_field(
        "Extra variables for the chat template of conversational prompts.", default=None)
    num_iterations: int = help_field("Updates per generation batch (mu in the GRPO paper).",
                                     default=1)
    epsilon: float = help_field("Lower clip range of the ratio.", default=0.2)
    epsilon_high: float = help_field("Upper clip range (None: epsilon).", default=None)
    reward_weights: object = help_field("Weight of each reward function (None: all 1).",
                                        default=None)
    mask_truncated_completions: bool = help_field(
        "Leave completions that hit max_completion_length without EOS out of the loss.",
        default=False)
    sync_ref_model: bool = help_field("Move the reference towards the policy (TR-DPO).",
                                      default=False)
    ref_model_mixup_alpha: float = help_field("Mixing weight of sync_ref_model.", default=0.6)
    ref_model_sync_steps: int = help_field("sync_ref_model every this many steps.",
                                           default=512)

    def __post_init__(self):
        super().__post_init__()
        checks.require(self.max_prompt_length is None, "max_prompt_length",
                       self.max_prompt_length, "None (TRL's online trainers have no such "
                       "field; max_length bounds prompt + completion)")
        check_integers(self, 1, "max_completion_length")
        checks.require(self.max_length is None or self.max_completion_length < self.max_length,
                       "max_completion_length", self.max_completion_length,
                       f"below max_length ({self.max_length}), which bounds prompt + completion")
        check_integers(self, 2, "num_generations")
        check_integers(self, 1, "num_generations_eval", "generation_batch_size",
                       "steps_per_generation", allow_none=True)
        check_integers(self, 1, "num_iterations", "ref_model_sync_steps")
        check_integers(self, 0, "top_k")
        check_reals(self, ("temperature", "repetition_penalty"), 0.0, open_low=True)
        check_reals(self, ("top_p",), 0.0, 1.0, open_low=True)
        check_reals(self, ("epsilon",), 0.0)
        check_reals(self, ("epsilon_high",), 0.0, allow_none=True)
        check_reals(self, ("ref_model_mixup_alpha",), 0.0, 1.0)
        self.chat_template_kwargs = dict_field("chat_template_kwargs", self.chat_template_kwargs)
        for name in ("ref_model_mixup_alpha", "ref_model_sync_steps"):
            unused_unless(self, name, {"ref_model_mixup_alpha": 0.6,
                                       "ref_model_sync_steps": 512}[name],
                          self.sync_ref_model, "unless sync_ref_model")
        if self.reward_weights is not None:
            checks.require(isinstance(self.reward_weights, (list, tuple)) and
                           len(self.reward_weights) > 0, "reward_weights", self.reward_weights,
                           "None or a non-empty list of numbers, one per reward function")
            self.reward_weights = [checks.real(f"reward_weights[{i}]", w)
                                   for i, w in enumerate(self.reward_weights)]
        self._batch_scheme()

    def _batch_scheme(self):
        """TRL's rule: generation_batch_size and steps_per_generation, one from
        the other (both None: steps_per_generation = gradient_accumulation_steps),
        a step being per_device_train_batch_size rows on each of the ranks an
        MPI launcher started (1 without one)."""
        per_step = self.per_device_train_batch_size * distributed.launched_ranks()
        if self.generation_batch_size is None and self.steps_per_generation is None:
            self.steps_per_generation = self.gradient_accumulation_steps
            self.generation_batch_size = per_step * self.steps_per_generation
        elif self.steps_per_generation is None:
            checks.require(self.generation_batch_size % per_step == 0, "generation_batch_size",
                           self.generation_batch_size,
                           f"a multiple of per_device_train_batch_size x ranks ({per_step})")
            self.steps_per_generation = self.generation_batch_size // per_step
        elif self.generation_batch_size is None:
            self.generation_batch_size = per_step * self.steps_per_generation
        else:
            raise ValueError(f"generation_batch_size ({self.generation_batch_size}) and "
                             f"steps_per_generation ({self.steps_per_generation}) cannot both be "
                             "given: one follows from the other")
        checks.require(self.generation_batch_size % self.num_generations == 0,
                       "generation_batch_size", self.generation_batch_size,
                       f"a multiple of num_generations ({self.num_generations}): a generation "
                       "batch holds whole groups")
        G_eval = self.num_generations_eval or self.num_generations
        if self.eval_strategy != "no" or self.eval_on_start:
            checks.require(self.per_device_eval_batch_size % G_eval == 0,
                           "per_device_eval_batch_size", self.per_device_eval_batch_size,
                           f"a multiple of the evaluation's num_generations ({G_eval})")

    @property
    def eval_generations(self):
        return self.num_generations_eval or self.num_generations


@dataclass
class GRPOConfig(OnlineRLConfig, GRPOPart):
    """GRPO (Shao et al. 2024) and the loss types TRL 1.16's GRPOConfig has."""

    beta: float = help_field("Weight of the k3 KL to the reference (0: no reference kept).",
                             default=0.0)
    loss_type: str = help_field(f"One of {losses.GRPO_LOSS_TYPES}.", default="dapo")
    importance_sampling_level: str = help_field(
        "'token' (a ratio per token) or 'sequence' (GSPO).", default="token")
    delta: float = help_field("Upper bound of the unclipped ratio (INTELLECT-2; None: off).",
                              default=None)
    sapo_temperature_neg: float = help_field("SAPO's gate temperature for A < 0.",
                                             default=1.05)
    sapo_temperature_pos: float = help_field("SAPO's gate temperature for A > 0.",
                                             default=1.0)
    vespo_k_pos: float = help_field("VESPO's k for A >= 0.", default=2.0)
    vespo_lambda_pos: float = help_field("VESPO's lambda for A >= 0.", default=3.0)
    vespo_k_neg: float = help_field("VESPO's k for A < 0.", default=3.0)
    vespo_lambda_neg: float = help_field("VESPO's lambda for A < 0.", default=2.0)
    multi_objective_aggregation: str = help_field(
        f"One of {losses.MULTI_OBJECTIVE_AGGREGATIONS}: how several reward functions combine.",
        default="sum_then_normalize")
    scale_rewards: object = help_field(
        f"One of {losses.SCALE_REWARDS_KINDS} (True: 'group', False: 'none'): the std the "
        "advantages are divided by.", default="group")
    top_entropy_quantile: float = help_field(
        "Train on the tokens whose entropy is in this top fraction of the micro-batch's "
        "(1: all).", default=1.0)
    off_policy_mask_threshold: float = help_field(
        "Drop a completion with A < 0 whose mean old - new log-ratio exceeds this (None: off).",
        default=None)
    use_bias_correction_kl: bool = help_field("Multiply the KL term by the importance ratio "
                                              "(DeepSeek-V3.2).", default=True)

    def __post_init__(self):
        super().__post_init__()
        self.loss_type = checks.choice("loss_type", self.loss_type, losses.GRPO_LOSS_TYPES)
        checks.choice("importance_sampling_level", self.importance_sampling_level,
                      losses.IMPORTANCE_SAMPLING_LEVELS)
        self.scale_rewards = losses.scale_rewards_kind(self.scale_rewards)
        checks.choice("multi_objective_aggregation", self.multi_objective_aggregation,
                      losses.MULTI_OBJECTIVE_AGGREGATIONS)
        check_reals(self, ("beta",))
        check_reals(self, ("delta", "off_policy_mask_threshold"), 0.0, open_low=True,
                    allow_none=True)
        check_reals(self, ("sapo_temperature_neg", "sapo_temperature_pos", "vespo_k_pos",
                           "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"), 0.0,
                    open_low=True)
        check_reals(self, ("top_entropy_quantile",), 0.0, 1.0, open_low=True)
        checks.require(self.beta != 0.0 or not self.sync_ref_model, "sync_ref_model",
                       self.sync_ref_model, "False when beta is 0 (there is no reference)")


@dataclass
class RLOOConfig(OnlineRLConfig):
    """RLOO (Ahmadian et al. 2024) as TRL 1.16's RLOOConfig."""

    num_generations: int = help_field("Completions sampled per prompt (k >= 2).", default=2)
    beta: float = help_field("Weight of the KL to the reference, in the reward (0: no "
                             "reference kept).", default=0.05)
    normalize_advantages: bool = help_field("Standardise the advantages over the batch.",
                                            default=False)
    reward_clip_range: object = help_field("(low, high) the rewards are clamped to (None: off).",
                                           default=None)

    def __post_init__(self):
        super().__post_init__()
        check_reals(self, ("beta",))
        self.reward_clip_range = losses.reward_clip(self.reward_clip_range)
        checks.require(self.beta != 0.0 or not self.sync_ref_model, "sync_ref_model",
                       self.sync_ref_model, "False when beta is 0 (there is no reference)")


@dataclass
class PPOConfig(TrainingConfig):
    """PPO for RLHF (Ouyang et al. 2022, InstructGPT), named as TRL's PPOConfig
    (trl.experimental.ppo, v1.9; TRL 1.16 ships none), plus InstructGPT's
    pretraining mix (ptx_coef).

    An update samples per_device_train_batch_size * gradient_accumulation_steps
    * num_mini_batches (* MPI ranks) prompts, one completion each, then takes
    num_ppo_epochs passes over them in num_mini_batches optimizer steps. A
    step of the trainer (max_steps, logging_steps, ...) is an update, as TRL
    counts."""

    learning_rate: float = help_field("Peak learning rate (TRL's PPO default).", default=3e-6)
    remove_unused_columns: bool = help_field(
        f"Ignored: {trl_fields.IGNORED['remove_unused_columns'][1]}.", default=False)
    max_length: int = help_field(
        "calign's: longest prompt + completion (None: the model's positions); longer prompts "
        "keep their end, leaving response_length.", default=None)
    reward_model_path: str = help_field("Reward model folder, loaded when the trainer is given "
                                        "no reward_model.", default=None)
    num_ppo_epochs: int = help_field("Passes over each update's completions.", default=4)
    num_mini_batches: int = help_field("Optimizer steps per pass over an update's completions.",
                                       default=1)
    total_episodes: int = help_field("Completions to train on (None: num_train_epochs * the "
                                     "prompts); max_steps > 0 overrides.", default=None)
    local_rollout_forward_batch_size: int = help_field(
        "Completions per forward pass of the rollout's reference, value and reward models.",
        default=64)
    response_length: int = help_field("Tokens to sample per completion at most.", default=53)
    stop_token: str = help_field("'eos' to stop a completion at the tokenizer's EOS (None: "
                                 "stop_token_id, or no stop).", default=None)
    stop_token_id: int = help_field("Token that ends a completion (None: stop_token).",
                                    default=None)
    temperature: float = help_field("Sampling temperature (the log-probs are of the tempered "
                                    "policy, as TRL's).", default=0.7)
    missing_eos_penalty: float = help_field("Subtracted from the score of a completion without "
                                            "the stop token (None: off).", default=None)
    whiten_rewards: bool = help_field("Standardise the per-token rewards (not their mean).",
                                      default=False)
    kl_coef: float = help_field("beta: the per-token KL penalty's weight in the reward.",
                                default=0.05)
    kl_estimator: str = help_field(f"One of {losses.KL_ESTIMATORS}.", default="k1")
    cliprange: float = help_field("Clip range of the policy ratio.", default=0.2)
    vf_coef: float = help_field("Weight of the value loss.", default=0.1)
    cliprange_value: float = help_field("Clip range of the value change.", default=0.2)
    gamma: float = help_field("Discount of GAE (InstructGPT: 1).", default=1.0)
    lam: float = help_field("lambda of GAE.", default=0.95)
    ptx_coef: float = help_field("gamma of InstructGPT's PPO-ptx: weight of the pretraining "
                                 "log-likelihood (0: plain PPO; the paper's 27.8).", default=0.0)
    ptx_batch_size: int = help_field("Pretraining sequences per micro-batch with ptx_coef "
                                     "(None: per_device_train_batch_size).", default=None)

    def __post_init__(self):
        super().__post_init__()
        checks.require(self.max_prompt_length is None, "max_prompt_length",
                       self.max_prompt_length, "None (max_length bounds prompt + completion)")
        checks.require(self.max_completion_length is None, "max_completion_length",
                       self.max_completion_length, "None (response_length bounds a completion)")
        check_integers(self, 1, "num_ppo_epochs", "num_mini_batches",
                       "local_rollout_forward_batch_size", "response_length")
        check_integers(self, 1, "total_episodes", "ptx_batch_size", allow_none=True)
        check_integers(self, 0, "stop_token_id", allow_none=True)
        checks.require(self.stop_token in (None, "eos"), "stop_token", self.stop_token,
                       "None or 'eos'")
        checks.require(self.stop_token is None or self.stop_token_id is None, "stop_token_id",
                       self.stop_token_id, "None when stop_token is given")
        checks.require(self.max_length is None or self.response_length < self.max_length,
                       "response_length", self.response_length,
                       f"below max_length ({self.max_length}), which bounds prompt + completion")
        check_reals(self, ("temperature",), 0.0, open_low=True)
        check_reals(self, ("missing_eos_penalty",), allow_none=True)
        check_reals(self, ("kl_coef", "cliprange", "vf_coef", "cliprange_value", "ptx_coef"), 0.0)
        check_reals(self, ("gamma", "lam"), 0.0, 1.0)
        checks.choice("kl_estimator", self.kl_estimator, losses.KL_ESTIMATORS)
        checks.text("reward_model_path", self.reward_model_path, allow_none=True)
        unused_unless(self, "ptx_batch_size", None, self.ptx_coef > 0, "unless ptx_coef > 0")

    @property
    def mini_batch_size(self):
        """Completions per optimizer step, on all the ranks an MPI launcher
        started (TRL's: per device x accumulation x processes)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * \
            distributed.launched_ranks()

    @property
    def batch_size(self):
        """Completions (prompts) per update."""
        return self.mini_batch_size * self.num_mini_batches
