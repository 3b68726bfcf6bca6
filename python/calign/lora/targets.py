"""Which of a model's linear modules a LoraConfig adapts, matched as PEFT
matches them."""

import re

from calign.lora.config import LoraConfig

# PEFT's default targets per model type (peft.utils.constants,
# TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
DEFAULT_TARGETS = {"llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
                   "qwen3": ["q_proj", "v_proj"], "gpt2": ["c_attn"],
                   # PEFT has no entry for Motif (a trust_remote_code model); its
                   # projections are Llama's
                   "motif": ["q_proj", "v_proj"]}
ALL_LINEAR = "all-linear"


def _matches(patterns, name):
    """PEFT's rule: a str is a regular expression the whole name must match;
    a list matches a name equal to an entry or ending in "." + an entry."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def select_modules(config, model_type, modules):
    """The modules of `modules` (the model's LinearModule list) config adapts,
    in model order; ValueError naming target_modules when none (or a named
    module that does not exist) matches."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"peft_config must be a calign.LoraConfig, not {type(config).__name__}")
    targets = config.target_modules
    if targets is None:
        targets = DEFAULT_TARGETS[model_type]
    chosen = []
    for module in modules:
        if targets != ALL_LINEAR and not _matches(targets, module.name):
            continue
        if config.exclude_modules is not None and _matches(config.exclude_modules, module.name):
            continue
        if config.layers_to_transform is not None and \
                module.layer not in config.layers_to_transform:
            continue
        chosen.append(module)
    if not chosen:
        raise ValueError(f"target_modules {targets!r} matches no linear module of this "
                         f"{model_type} model (its modules end in "
                         f"{sorted({m.name.rsplit('.', 1)[-1] for m in modules})})")
    if isinstance(targets, list):
        short = {m.name.rsplit(".", 1)[-1] for m in modules}
        unknown = [t for t in targets
                   if t not in short and not any(_matches([t], m.name) for m in modules)]
        if unknown:
            raise ValueError(f"target_modules names {unknown}, which this {model_type} model "
                             f"does not have (its linear modules end in {sorted(short)})")
    return chosen
