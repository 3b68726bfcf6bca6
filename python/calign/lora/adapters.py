"""A model's LoRA adapters: one float32 vector holding every A and B, their
gradients in a second, and PEFT's file format both ways."""

import json
import os
import tempfile

import numpy as np

from calign.files import read_json_object
from calign.lora.config import LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's key prefix: the PeftModel wraps the model


class LoraAdapters:
    """The adapters of `modules` (LinearModules) under `config`: `params` and
    `grads` are contiguous float32 vectors; A of module i is
    params[a_offset: a_offset + r * in_dim] as [r, in_dim], B follows it as
    [out_dim, r] (PEFT's lora_A.weight and lora_B.weight)."""

    def __init__(self, config, modules, seed=0):
        self.config = config
        self.modules = list(modules)
        r = config.r
        self.a_offsets, self.b_offsets = [], []
        offset = 0
        for m in self.modules:
            self.a_offsets.append(offset)
            offset += r * m.in_dim
            self.b_offsets.append(offset)
            offset += m.out_dim * r
        self.params = np.zeros(offset, np.float32)
        self.grads = np.zeros(offset, np.float32)
        rng = np.random.default_rng(seed)
        for name, tensor in self.state_dict().items():
            # PEFT's init: A Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in),
            # 1/sqrt(fan_in)); B zero (True) or Kaiming-uniform too (False)
            if name.endswith("lora_A.weight") or not config.init_lora_weights:
                bound = 1.0 / np.sqrt(tensor.shape[1])
                tensor[...] = rng.uniform(-bound, bound, tensor.shape)

    def engine_table(self):
        """The keyword arguments of _C.model_set_adapters for these adapters."""
        ms = self.modules
        return dict(layer=[m.layer for m in ms], site=[m.site for m in ms],
                    out_offset=[m.out_offset for m in ms], out_dim=[m.out_dim for m in ms],
                    in_dim=[m.in_dim for m in ms], r=[self.config.r] * len(ms),
                    a_offset=self.a_offsets, b_offset=self.b_offsets,
                    scale=[self.config.scale] * len(ms), n_floats=self.params.size)

    def _views(self, buffer):
        views = {}
        r = self.config.r
        for m, a, b in zip(self.modules, self.a_offsets, self.b_offsets, strict=True):
            views[f"{PREFIX}{m.name}.lora_A.weight"] = buffer[a:a + r * m.in_dim].reshape(
                r, m.in_dim)
            views[f"{PREFIX}{m.name}.lora_B.weight"] = buffer[b:b + m.out_dim * r].reshape(
                m.out_dim, r)
        return views

    def state_dict(self):
        """{PEFT key: float32 view into params}."""
        return self._views(self.params)

    def grads_dict(self):
        return self._views(self.grads)

    def delta(self, module_index):
        """The module's weight update scale * B A, [out_dim, in_dim]."""
        r, m = self.config.r, self.modules[module_index]
        a = self.params[self.a_offsets[module_index]:][:r * m.in_dim].reshape(r, m.in_dim)
        b = self.params[self.b_offsets[module_index]:][:m.out_dim * r].reshape(m.out_dim, r)
        return self.config.scale * (b.astype(np.float64) @ a.astype(np.float64))

    # ---- PEFT's files ---------------------------------------------------------

    def save(self, path, model_type):
        """adapter_config.json and adapter_model.safetensors in `path`, as PEFT
        writes them (peft.PeftModel.from_pretrained(base, path) loads them);
        both written under temporary names and renamed."""
        from safetensors.numpy import save_file

        os.makedirs(path, exist_ok=True)
        c = self.config
        config = {
            "peft_type": "LORA", "task_type": c.task_type or "CAUSAL_LM", "r": c.r,
            "lora_alpha": c.lora_alpha, "lora_dropout": c.lora_dropout, "bias": c.bias,
            "target_modules": sorted(m.name for m in self.modules),
            "fan_in_fan_out": model_type == "gpt2", "use_rslora": c.use_rslora,
            "init_lora_weights": c.init_lora_weights, "use_dora": False,
            "modules_to_save": None, "layers_to_transform": c.layers_to_transform,
            "inference_mode": c.inference_mode,
            "base_model_name_or_path": c.base_model_name_or_path,
        }
        tensors = {name: np.ascontiguousarray(view) for name, view in self.state_dict().items()}
        fd, weights_tmp = tempfile.mkstemp(suffix=".safetensors", dir=path)
        os.close(fd)
        fd, config_tmp = tempfile.mkstemp(suffix=".json", dir=path)
        os.close(fd)
        try:
            save_file(tensors, weights_tmp, metadata={"format": "pt"})
            with open(config_tmp, "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
            for tmp in (weights_tmp, config_tmp):
                os.chmod(tmp, 0o644)
            os.replace(weights_tmp, os.path.join(path, WEIGHTS_NAME))
            os.replace(config_tmp, os.path.join(path, CONFIG_NAME))
        finally:
            for tmp in (weights_tmp, config_tmp):
                if os.path.exists(tmp):
                    os.remove(tmp)


def read_adapter_config(path):
    """The LoraConfig of a PEFT adapter folder; ValueError naming the file for
    anything that is not a LoRA adapter calign can run."""
    file = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {os.fspath(path)!r}: not a PEFT adapter")
    saved = read_json_object(file)
    if saved.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{file}: peft_type {saved.get('peft_type')!r} is not LORA")
    fields = LoraConfig.__dataclass_fields__
    known = {k: v for k, v in saved.items() if k in fields and k != "fan_in_fan_out"}
    for key, default in (("use_dora", False), ("modules_to_save", None)):
        known.setdefault(key, default)
    try:
        return LoraConfig(**known)
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from None


def read_adapter_tensors(path, adapters):
    """Copies adapter_model.safetensors of `path` into `adapters`, which must
    have exactly its tensors (names and shapes), in any dtype a checkpoint may
    have (float32, bfloat16, float16, float64), refusing NaN and infinity, as
    Model.from_pretrained reads weights; ValueError naming the file and the
    tensor otherwise."""
    from calign.model.checkpoint import CheckpointTensors, check_tensors, copy_into

    file = os.path.join(path, WEIGHTS_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {os.fspath(path)!r}")
    views = adapters.state_dict()
    try:
        tensors = CheckpointTensors([file])
        check_tensors(tensors, {name: view.shape for name, view in views.items()})
        copy_into(views, tensors)
    except ValueError as error:
        raise ValueError(f"{file} does not fit this model's adapters: {error}") from None
