"""LoRA adapters (Hu et al. 2021) in PEFT's format: LoraConfig with PEFT's
names and defaults, adapters computed inside the C engine (the base weights
frozen and without gradients), adapter files PEFT loads and writes.

    model.add_adapter(calign.LoraConfig(r=16, target_modules="all-linear"))
    with model.disable_adapter(): ...          # the base model alone
    model.save_pretrained("out")               # adapter_config.json + adapter_model.safetensors
    model.load_adapter("out")                  # a PEFT adapter, PEFT-trained ones too
    model.merge_and_unload()                   # the updates folded into the weights
"""

from calign.lora.adapters import LoraAdapters, read_adapter_config, read_adapter_tensors
from calign.lora.config import LoraConfig
from calign.lora.reference import AdapterReference
from calign.lora.targets import DEFAULT_TARGETS, select_modules

__all__ = ["AdapterReference", "DEFAULT_TARGETS", "LoraAdapters", "LoraConfig", "read_adapter_config",
           "read_adapter_tensors", "select_modules"]
