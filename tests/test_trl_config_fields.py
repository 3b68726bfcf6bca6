"""Every field of TRL 1.16's configs (and of the transformers TrainingArguments
they inherit) is a field of the matching calign config, at TRL's default:
implemented, accepted and ignored, or refused at the values calign cannot
honour, naming the field. A field a new TRL adds fails here."""

import dataclasses
import os

import numpy as np
import pytest

import calign
from calign.trainers import trl_fields

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl = pytest.importorskip("trl")

# calign config -> (module, TRL class name)
TRL_CONFIGS = {
    calign.DPOConfig: ("trl", "DPOConfig"),
    calign.KTOConfig: ("trl", "KTOConfig"),
    calign.ORPOConfig: ("trl.experimental.orpo", "ORPOConfig"),
    calign.CPOConfig: ("trl.experimental.cpo", "CPOConfig"),
    calign.RewardConfig: ("trl", "RewardConfig"),
    calign.SFTConfig: ("trl", "SFTConfig"),
    calign.OnlineDPOConfig: ("trl.experimental.online_dpo", "OnlineDPOConfig"),
    calign.GRPOConfig: ("trl", "GRPOConfig"),
    calign.RLOOConfig: ("trl", "RLOOConfig"),
}
# calign's own fields (TRL 1.16 / transformers 5 dropped or never had them)
CALIGN_ONLY = {"max_prompt_length", "max_completion_length", "truncation_mode", "shuffle",
               "warmup_ratio",
               # weight averages (InstructGPT's EMA, Motif's checkpoint averaging)
               "ema_decay", "eval_use_ema", "checkpoint_averaging_steps",
               "checkpoint_averaging_window"}
CALIGN_ONLY_DPO = {"reference_free", "rpo_alpha", "scpo_alpha"}
# TRL 1.16's online RL configs have no max_length: calign's bounds prompt + completion
CALIGN_ONLY_RL = {"max_length"}
# Qi et al. 2024's token-wise constrained SFT (loss_type "token_constrained")
CALIGN_ONLY_SFT = {"constrained_betas", "precompute_ref_log_probs"}
# calign's default differs from TRL's on purpose: calign's activations are small,
# so recomputing them (TRL's True) would only cost time; True is accepted.
DELIBERATE_DEFAULTS = {"gradient_checkpointing": False}


def trl_class(config_class):
    module, name = TRL_CONFIGS[config_class]
    import importlib

    return getattr(importlib.import_module(module), name)


def defaults(config_class):
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize("config_class", list(TRL_CONFIGS), ids=lambda c: c.__name__)
def test_every_trl_field_is_a_field_with_trls_default(config_class):
    theirs, ours = defaults(trl_class(config_class)), defaults(config_class)
    assert sorted(set(theirs) - set(ours)) == []
    extra = set(ours) - set(theirs) - CALIGN_ONLY
    if issubclass(config_class, calign.DPOConfig):
        extra -= CALIGN_ONLY_DPO
    if config_class is calign.OnlineDPOConfig:  # calign's online DPO is DPO's loss too
        extra -= set(defaults(calign.DPOConfig))
    if config_class in (calign.GRPOConfig, calign.RLOOConfig):
        extra -= CALIGN_ONLY_RL
    if config_class is calign.SFTConfig:
        extra -= CALIGN_ONLY_SFT
    assert sorted(extra) == []
    differing = {name: (ours[name], theirs[name]) for name in theirs
                 if ours[name] != theirs[name] or type(ours[name]) is not type(theirs[name])}
    assert differing == {name: (value, theirs[name]) for name, value in
                         DELIBERATE_DEFAULTS.items()}


@pytest.mark.parametrize("config_class", list(TRL_CONFIGS), ids=lambda c: c.__name__)
def test_a_config_built_from_every_trl_field_at_its_default(config_class, tmp_path):
    values = defaults(trl_class(config_class))
    values["output_dir"] = str(tmp_path)
    config = config_class(**values)
    assert config.output_dir == str(tmp_path)
    assert config.bf16 is None and config.report_to == [] and config.optim == "adamw_torch_fused"
    assert config.gradient_checkpointing is True  # TRL's value was given
    for f in dataclasses.fields(config_class):
        assert f.metadata.get("help"), f.name  # every field says what it is


def test_every_field_of_the_tables_is_a_trl_field():
    """No stale entry: each ignored or refused field is in some TRL config."""
    names = set()
    for config_class in TRL_CONFIGS:
        names |= set(defaults(trl_class(config_class)))
    assert sorted(set(trl_fields.IGNORED) - names) == []
    assert sorted(set(trl_fields.REFUSED) - names) == []


def test_ignored_fields_take_any_value_and_say_so():
    for config_class in TRL_CONFIGS:
        helps = config_class.field_help()
        ignored = {n: "x-ignored" for n in helps if n in trl_fields.IGNORED
                   and n not in trl_fields.implemented(config_class)}
        config = config_class(**ignored)
        for name in ignored:
            assert getattr(config, name) == "x-ignored"
            assert helps[name].startswith("Ignored: "), name


def a_refused_value(name, default):
    special = {"bf16": True, "fsdp": "full_shard", "deepspeed": "ds_config.json",
               "label_smoothing_factor": 0.1, "min_p": 0.05, "neftune_noise_alpha": 5.0,
               "generation_kwargs": {"do_sample": True}, "reward_weights": [1.0, 0.5],
               "is_encoder_decoder": True, "optim_args": "foo=1"}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return not default
    return "something"


REFUSALS = [(config_class, name) for config_class in TRL_CONFIGS
            for name in sorted(config_class.field_help())
            if name in trl_fields.REFUSED and name not in trl_fields.implemented(config_class)]


@pytest.mark.parametrize("config_class,name", REFUSALS,
                         ids=[f"{c.__name__}-{n}" for c, n in REFUSALS])
def test_refused_values_raise_naming_the_field_and_why(config_class, name):
    default, _, reason = trl_fields.REFUSED[name]
    value = a_refused_value(name, default)
    with pytest.raises(ValueError, match=f"^{name} must be .*\\(") as error:
        config_class(**{name: value})
    assert reason in str(error.value)


def test_bf16_default_is_float32_and_true_turns_bf16_products_on():
    assert calign.DPOConfig().bf16 is None  # TRL's default: float32 here, never an error
    calign.DPOConfig(bf16=False, fp16=np.False_)
    assert calign.DPOConfig(bf16=np.True_).bf16 is True
    with pytest.raises(ValueError, match="^bf16 must be True or False, got 'true'"):
        calign.DPOConfig(bf16="true")
    with pytest.raises(ValueError, match="^fp16 must be False .*not supported yet"):
        calign.SFTConfig(fp16=True)
