"""The fields of TRL 1.16's configs (and of transformers' TrainingArguments,
which they inherit) that calign takes so a TRL config carries over unchanged,
but that have no meaning here or ask for something calign cannot do.

IGNORED fields are accepted with any value and change nothing: each has a
reason. REFUSED fields are accepted at the values listed and raise ValueError,
naming the field and the reason, at any other (fp16=True, push_to_hub=True,
a deepspeed config, ...). The fields calign implements are declared in
config.py; test_trl_config_fields.py checks that the three together hold every
field of the installed TRL configs at TRL's default.

The dataclass parts built here (`part(...)`) are mixed into the configs, so
each field keeps TRL's name, default and a one-line help text."""

import dataclasses

import numpy as np

from calign import checks

ONE_PROCESS = "one process on the CPU: there is no other device, node or rank"
NO_DATALOADER = "calign reads its prepared examples in the training process; no DataLoader"
NO_PADDING = "calign never pads: every batch is packed without padding"
NO_HUB = "used only with push_to_hub, which calign refuses"
NO_VLLM = "used only with use_vllm, which calign refuses"
NO_COMPUTE_METRICS = "calign's evaluate() returns its own metrics; there is no compute_metrics"

# field: (TRL's default, why calign ignores it)
TRAINING_ARGUMENTS_IGNORED = {  # transformers' TrainingArguments
    "average_tokens_across_devices": (True, ONE_PROCESS),
    "tf32": (None, "a setting of NVIDIA GPUs' matrix units"),
    "activation_checkpointing_kwargs": (None, "arguments of torch's checkpoint function; calign "
                                              "recomputes in C"),
    "gradient_checkpointing_kwargs": (None, "arguments of torch's checkpoint function; calign "
                                            "recomputes in C"),
    "torch_compile": (False, "calign runs no torch code to compile"),
    "torch_compile_backend": (None, "calign runs no torch code to compile"),
    "torch_compile_mode": (None, "calign runs no torch code to compile"),
    "use_liger_kernel": (False, "calign's C kernels already fuse the lm_head and the loss"),
    "liger_kernel_config": (None, "calign's C kernels already fuse the lm_head and the loss"),
    "use_cache": (False, "training runs no KV cache"),
    "torch_empty_cache_steps": (None, "a CUDA cache setting"),
    "auto_find_batch_size": (False, "it retries after a CUDA out-of-memory error"),
    "log_on_each_node": (True, ONE_PROCESS),
    "logging_nan_inf_filter": (True, "calign stops with FloatingPointError before a non-finite "
                                     "loss or gradient is logged"),
    "log_level": ("passive", "a level of transformers' logger; calign prints warnings only"),
    "log_level_replica": ("warning", ONE_PROCESS),
    "project": ("huggingface", "the Trackio project; calign does not report to Trackio"),
    "trackio_space_id": (None, "calign does not report to Trackio"),
    "trackio_bucket_id": (None, "calign does not report to Trackio"),
    "trackio_static_space_id": (None, "calign does not report to Trackio"),
    "prediction_loss_only": (False, NO_COMPUTE_METRICS),
    "eval_do_concat_batches": (True, NO_COMPUTE_METRICS),
    "eval_use_gather_object": (False, ONE_PROCESS),
    "eval_accumulation_steps": (None, "calign keeps no evaluation predictions to move off a "
                                      "device"),
    "include_for_metrics": ([], NO_COMPUTE_METRICS),
    "batch_eval_metrics": (False, NO_COMPUTE_METRICS),
    "save_on_each_node": (False, ONE_PROCESS),
    "hub_token": (None, NO_HUB),
    "hub_private_repo": (None, NO_HUB),
    "hub_model_id": (None, NO_HUB),
    "hub_strategy": ("every_save", NO_HUB),
    "hub_always_push": (False, NO_HUB),
    "hub_revision": (None, NO_HUB),
    "restore_callback_states_from_checkpoint": (False, "calign's trainers take no callbacks"),
    "full_determinism": (False, "calign's training is deterministic already (the same numbers "
                                "for any thread count)"),
    "use_cpu": (False, "calign always runs on the CPU"),
    "accelerator_config": (None, "calign does not run through Accelerate"),
    "dataloader_num_workers": (0, NO_DATALOADER),
    "dataloader_pin_memory": (True, NO_DATALOADER),
    "dataloader_persistent_workers": (False, NO_DATALOADER),
    "dataloader_prefetch_factor": (None, NO_DATALOADER),
    "dataloader_multiprocessing_context": (None, NO_DATALOADER),
    "dataloader_in_order": (True, NO_DATALOADER),
    "remove_unused_columns": (True, "calign reads only the fields it needs from each record"),
    "label_names": (None, "calign's trainers know their own inputs"),
    "length_column_name": ("length", "used only by train_sampling_strategy 'group_by_length', "
                                     "which calign refuses"),
    "ddp_find_unused_parameters": (None, ONE_PROCESS),
    "ddp_bucket_cap_mb": (None, ONE_PROCESS),
    "ddp_broadcast_buffers": (None, ONE_PROCESS),
    "ddp_static_graph": (None, ONE_PROCESS),
    "ddp_backend": (None, ONE_PROCESS),
    "ddp_timeout": (1800, ONE_PROCESS),
    "fsdp_config": (None, "used only with fsdp, which calign refuses"),
    "debug": ("", "transformers' overflow and TPU debug hooks"),
    "skip_memory_metrics": (True, "calign reports no memory metrics"),
    "do_train": (False, "a flag of transformers' example scripts; the trainer does not read it"),
    "do_eval": (False, "a flag of transformers' example scripts; the trainer does not read it"),
    "do_predict": (False, "a flag of transformers' example scripts; the trainer does not read "
                          "it"),
    "local_rank": (-1, ONE_PROCESS),
}
TRL_IGNORED = {
    # every TRL config
    "trust_remote_code": (False, "calign loads the architectures it implements and runs no code "
                                 "from a checkpoint"),
    # TRL's DPO, KTO, SFT, Reward, ORPO, CPO configs (not all of them have each)
    "router_aux_loss_coef": (None, "calign loads no mixture-of-experts model"),
    "dataset_num_proc": (None, "calign prepares the data in the training process"),
    "padding_free": (False, NO_PADDING),
    "pad_to_multiple_of": ("auto", NO_PADDING),
    "pad_token": (None, NO_PADDING),
    "padding_value": (None, NO_PADDING),
    "activation_offloading": (False, "the activations are in CPU memory already"),
    # SFT
    "dataset_kwargs": (None, "calign tells a record's format from its fields"),
    "shuffle_dataset": (False, "calign orders the data by train_sampling_strategy and the seed"),
    "packing_strategy": ("bfd", "used only with packing, which calign refuses"),
    "eval_packing": (None, "used only with packing, which calign refuses"),
    # Online DPO
    "cache_implementation": (None, "calign's sampler has one KV cache of its own"),
    "ds3_gather_for_generation": (True, ONE_PROCESS),
    "vllm_model_impl": ("vllm", NO_VLLM),
    "vllm_structured_outputs_regex": (None, NO_VLLM),
    "vllm_gpu_memory_utilization": (0.55, NO_VLLM),
    "vllm_mode": ("colocate", NO_VLLM),
    "vllm_server_base_url": (None, NO_VLLM),
    "vllm_server_host": ("0.0.0.0", NO_VLLM),
    "vllm_server_port": (8000, NO_VLLM),
    "vllm_server_timeout": (240.0, NO_VLLM),
    "vllm_group_port": (51216, NO_VLLM),
    "vllm_tensor_parallel_size": (1, NO_VLLM),
    "vllm_enable_sleep_mode": (False, NO_VLLM),
    # GRPO, RLOO
    "cast_lm_head_to_fp32": (False, "calign computes the lm_head in float32 already"),
    "vllm_max_model_length": (None, NO_VLLM),
    "vllm_importance_sampling_correction": (True, NO_VLLM),
    "vllm_importance_sampling_mode": ("sequence_mask", NO_VLLM),
    "vllm_importance_sampling_clip_max": (3.0, NO_VLLM),
    "vllm_importance_sampling_clip_min": (None, NO_VLLM),
    "vllm_importance_sampling_cap": (None, NO_VLLM),
    "use_transformers_continuous_batching": (False, "calign samples with its own C sampler"),
    "transformers_continuous_batching_config": (None, "calign samples with its own C sampler"),
    "use_transformers_paged": (False, "calign samples with its own C sampler"),
    "max_tool_calling_iterations": (None, "calign's trainers take no tools"),
    "log_multimodal": (True, "calign trains on text only"),
    "num_completions_to_print": (None, "used only with log_completions, which calign refuses"),
    "log_unique_prompts": (False, "used only with log_completions, which calign refuses"),
    "log_completions_hub_repo": (None, NO_HUB),
    "entropy_coef_min": (0.0, "used only with use_adaptive_entropy, which calign refuses"),
    "entropy_coef_max": (1.0, "used only with use_adaptive_entropy, which calign refuses"),
    "entropy_coef_delta": (0.005, "used only with use_adaptive_entropy, which calign refuses"),
    "entropy_target": (0.2, "used only with use_adaptive_entropy, which calign refuses"),
}
IGNORED = {**TRAINING_ARGUMENTS_IGNORED, **TRL_IGNORED}

NOT_YET = "is not supported yet"
DISTRIBUTED = ("not supported: calign runs data-parallel under mpirun (README: 'Several "
               "processes (MPI)'), not under accelerate")

# field: (TRL's default, the values calign accepts, why another value is refused)
TRAINING_ARGUMENTS_REFUSED = {  # transformers' TrainingArguments
    "optim_args": (None, (None, ""), "calign's optimizers take no extra arguments"),
    "optim_target_modules": (None, (None,), "GaLore/APOLLO-style optimizers are not supported"),
    "label_smoothing_factor": (0.0, (0.0,), f"label smoothing of the token loss {NOT_YET}"),
    "fp16": (False, (False,), "fp16 " + NOT_YET + ": calign computes in float32 (or with "
                              "bf16=True, in bfloat16 products)"),
    "bf16_full_eval": (False, (False,), "a model cast to bfloat16 for evaluation " + NOT_YET
                       + "; with bf16=True evaluation runs in bfloat16 products as training "
                       "does"),
    "fp16_full_eval": (False, (False,), "fp16 " + NOT_YET + ": calign computes in float32"),
    "neftune_noise_alpha": (None, (None,), f"NEFTune {NOT_YET}"),
    "save_only_model": (False, (False,), "a calign checkpoint always holds the optimizer state "
                                         "a resume needs"),
    "enable_jit_checkpoint": (False, (False,), f"checkpointing on SIGTERM {NOT_YET}; checkpoints "
                                               "are written atomically and a start cleans what "
                                               "a kill left"),
    "push_to_hub": (False, (False,), "calign does not upload; push the saved folder yourself"),
    "ignore_data_skip": (False, (False,), "calign's data order is a function of the seed and "
                                          "the step, so a resume always continues the run"),
    "parallelism_config": (None, (None,), DISTRIBUTED),
    "fsdp": (None, (None, "", []), DISTRIBUTED),
    "deepspeed": (None, (None,), DISTRIBUTED),
}
TRL_REFUSED = {
    "disable_dropout": (True, (True,), "calign has no dropout: it always trains as "
                                       "disable_dropout=True does"),
    "generate_during_eval": (False, (False,), f"logging sample generations {NOT_YET}"),
    "is_encoder_decoder": (None, (None, False), "calign trains decoder-only models"),
    "chat_template_path": (None, (None,), f"replacing the tokenizer's chat template {NOT_YET}; "
                                          "save the template in the tokenizer folder"),
    "eos_token": (None, (None,), f"another end token than the tokenizer's {NOT_YET}"),
    "packing": (False, (False,), f"packing examples into max_length rows {NOT_YET} (each batch "
                                 "is packed without padding already)"),
    "assistant_only_loss": (False, (False,), f"a loss on the assistant turns only {NOT_YET}"),
    "use_vllm": (False, (False,), "calign samples with its own C sampler"),
    "reward_weights": (None, (None,), "calign's OnlineDPOTrainer takes one reward model"),
    "generation_kwargs": (None, (None,), "calign's sampler takes the named fields "
                                         "(temperature, top_k, top_p, repetition_penalty)"),
    "min_p": (None, (None,), f"min-p sampling {NOT_YET}"),
    "log_completions": (False, (False,), f"logging a table of completions {NOT_YET}; the "
                                         "trainer's last_rollout holds them"),
    "entropy_coef": (0.0, (0.0,), f"an entropy bonus {NOT_YET}"),
    "use_adaptive_entropy": (False, (False,), f"an entropy bonus {NOT_YET}"),
}
REFUSED = {**TRAINING_ARGUMENTS_REFUSED, **TRL_REFUSED}


def _matches(value, accepted):
    """value is the accepted value (`value in accepted` would take 0 for False)."""
    if isinstance(accepted, float):
        return checks.is_real(value) and value == accepted
    if isinstance(accepted, bool):
        return isinstance(value, (bool, np.bool_)) and bool(value) == accepted
    return type(value) is type(accepted) and value == accepted


def implemented(config_class):
    """The names a config implements although another config ignores or
    refuses them (GRPO's reward_weights, shuffle_dataset, disable_dropout)."""
    return frozenset(getattr(config_class, "implemented_trl_fields", ()))


def check_refused(config):
    """ValueError naming the field, for a REFUSED field of `config` at a value
    calign cannot honour."""
    own = implemented(type(config))
    for f in dataclasses.fields(config):
        if f.name in REFUSED and f.name not in own:
            _, allowed, reason = REFUSED[f.name]
            value = getattr(config, f.name)
            if not any(_matches(value, a) for a in allowed):
                accepted = " or ".join(repr(a) for a in allowed)
                raise ValueError(f"{f.name} must be {accepted} ({reason}), got {value!r}")


def _field(name, default, help_text):
    kind = type(default) if isinstance(default, (bool, int, float, str)) else object
    if isinstance(default, list):
        return name, kind, dataclasses.field(default_factory=list, metadata={"help": help_text})
    return name, kind, dataclasses.field(default=default, metadata={"help": help_text})


def part(class_name, names, defaults=None):
    """A dataclass holding the IGNORED and REFUSED fields `names` at TRL's
    defaults (`defaults` {name: value}: where this config's TRL default differs
    from the table's), to be mixed into a config."""
    specs = []
    defaults = defaults or {}
    for name in names:
        if name in IGNORED:
            default, reason = IGNORED[name]
            default = defaults.get(name, default)
            specs.append(_field(name, default, f"Ignored: {reason}."))
        else:
            default, allowed, reason = REFUSED[name]
            accepted = " or ".join(repr(a) for a in allowed)
            specs.append(_field(name, default, f"Only {accepted}: {reason}."))
    made = dataclasses.make_dataclass(class_name, specs)
    made.__module__ = __name__
    return made
