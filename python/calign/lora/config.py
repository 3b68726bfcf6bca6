"""LoraConfig: PEFT's LoraConfig fields and defaults, checked when built."""

from dataclasses import dataclass, field

from calign import checks


@dataclass
class LoraConfig:
    """LoRA (Hu et al. 2021) settings with PEFT's names and defaults.

    r: the rank of each update B A.
    lora_alpha: the update is scaled by lora_alpha / r (lora_alpha / sqrt(r)
        with use_rslora, Kalajdzievski 2023).
    target_modules: module names (a list: a name matches itself or any module
        ending in "." + it, as PEFT), a regular expression (a str: full
        match), "all-linear" (every linear of the layers, not lm_head), or
        None for PEFT's default of the model type (q_proj and v_proj for
        Llama and Qwen, c_attn for GPT-2).
    init_lora_weights: True (PEFT's default: A Kaiming-uniform, B zero, so the
        adapted model starts equal to the base) or False (both random).
    lora_dropout: recorded (adapter_config.json keeps it) but never applied:
        calign has no dropout. TRL's preference and reward trainers train as
        if it were 0 too (their disable_dropout=True, the default and
        calign's only value, zeroes the adapters' dropout as well), and
        inference never uses it; SFTTrainer, whose TRL counterpart keeps it,
        refuses a value above 0.
    bias, use_dora, modules_to_save and the rest of PEFT's options calign
    does not implement are refused unless at their default.
    """

    r: int = field(default=8, metadata={"help": "Rank of the update B A."})
    lora_alpha: float = field(default=8, metadata={"help": "Scale numerator: alpha / r."})
    target_modules: object = field(default=None, metadata={
        "help": "Module names, a regex, 'all-linear', or None (PEFT's per-model default)."})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the adapter's input: recorded, never applied (see above)."})
    bias: str = field(default="none", metadata={"help": "'none' only (no bias is trained)."})
    fan_in_fan_out: bool = field(default=False, metadata={
        "help": "Conv1D weights (GPT-2); set for GPT-2 whatever is given, as PEFT does."})
    use_rslora: bool = field(default=False, metadata={"help": "Scale by alpha / sqrt(r)."})
    init_lora_weights: bool = field(default=True, metadata={
        "help": "True: B starts at zero (the adapted model equals the base)."})
    use_dora: bool = field(default=False, metadata={"help": "DoRA: not implemented (False)."})
    modules_to_save: list = field(default=None, metadata={
        "help": "Fully trained extra modules: not implemented (None)."})
    layers_to_transform: list = field(default=None, metadata={
        "help": "Only these layer indices get adapters (None: all)."})
    exclude_modules: object = field(default=None, metadata={
        "help": "Module names or a regex never adapted."})
    task_type: str = field(default=None, metadata={"help": "PEFT's task type; CAUSAL_LM."})
    inference_mode: bool = field(default=False, metadata={"help": "Recorded, as PEFT."})
    base_model_name_or_path: str = field(default=None, metadata={
        "help": "Recorded in adapter_config.json, as PEFT."})

    def __post_init__(self):
        self.r = checks.integer("r", self.r, 1, 2**16)
        self.lora_alpha = checks.real("lora_alpha", self.lora_alpha, 0.0, open_low=True)
        self.lora_dropout = checks.real("lora_dropout", self.lora_dropout, 0.0, 1.0)
        checks.require(self.bias == "none", "bias", self.bias, "'none' (calign trains no bias)")
        for name in ("fan_in_fan_out", "use_rslora", "init_lora_weights", "use_dora",
                     "inference_mode"):
            setattr(self, name, checks.flag(name, getattr(self, name)))
        checks.require(not self.use_dora, "use_dora", self.use_dora, "False (DoRA is not "
                       "implemented)")
        checks.require(not self.modules_to_save, "modules_to_save", self.modules_to_save,
                       "None (only LoRA adapters train)")
        t = self.target_modules
        checks.require(t is None or isinstance(t, str) or (
            isinstance(t, (list, tuple, set)) and t and all(isinstance(n, str) for n in t)),
            "target_modules", t, "module names, a regex, 'all-linear' or None")
        if isinstance(t, (tuple, set)):
            self.target_modules = sorted(t)
        e = self.exclude_modules
        checks.require(e is None or isinstance(e, str) or (
            isinstance(e, (list, tuple, set)) and all(isinstance(n, str) for n in e)),
            "exclude_modules", e, "module names, a regex or None")
        if self.layers_to_transform is not None:
            layers = self.layers_to_transform
            if checks.is_int(layers):
                layers = [layers]
            checks.require(isinstance(layers, (list, tuple)) and layers, "layers_to_transform",
                           self.layers_to_transform, "a layer index, a list of them, or None")
            self.layers_to_transform = [checks.integer("layers_to_transform", n, 0)
                                        for n in layers]

    @property
    def scale(self):
        """The factor of the update: lora_alpha / r, or / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (self.r ** 0.5 if self.use_rslora else self.r)
