"""Optimizers over a calign.Model's contiguous parameter and gradient vectors.

The updates run in C with torch's semantics: `AdamW` is torch.optim.AdamW,
`SGD` is torch.optim.SGD, `clip_grad_norm` is torch.nn.utils.clip_grad_norm_.
State is saved and loaded as safetensors.
"""

import contextlib
import os
import tempfile

import numpy as np

from calign import _C, checks


def _save_state(path, tensors, metadata):
    from safetensors.numpy import save_file

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".optimizer-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_state(path, kind, n_params):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot read optimizer state {path!r}: {exc}") from None
    if metadata.get("optimizer") != kind:
        raise ValueError(f"{path!r} holds {metadata.get('optimizer')!r} state, not {kind!r}")
    for name, tensor in tensors.items():
        if tensor.shape != (n_params,) or tensor.dtype != np.float32:
            raise ValueError(f"optimizer state {name!r} in {path!r} does not fit this model "
                             f"({tensor.shape} {tensor.dtype}, expected ({n_params},) float32)")
    return tensors, metadata


class AdamW:
    """torch.optim.AdamW on what the model trains (model.train_params: every
    parameter, or with LoRA the adapters' alone), decoupled weight decay."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.model = model
        self.lr = checks.real("lr", lr, 0.0)
        checks.require(isinstance(betas, (tuple, list)) and len(betas) == 2, "betas", betas,
                       "two numbers in [0, 1)")
        self.betas = tuple(checks.real("betas", b, 0.0, 1.0, open_high=True) for b in betas)
        self.eps = checks.real("eps", eps, 0.0, open_low=True)
        self.weight_decay = checks.real("weight_decay", weight_decay, 0.0)
        self.exp_avg = np.zeros_like(model.train_params)
        self.exp_avg_sq = np.zeros_like(model.train_params)
        self.step_count = 0

    def step(self, lr=None):
        """One update from the gradients in model.grads(); lr overrides self.lr once."""
        self.step_count += 1
        _C.adamw_step(self.model.train_params, self.model.train_grads, self.exp_avg, self.exp_avg_sq,
                      step=self.step_count, lr=self.lr if lr is None else checks.real("lr", lr, 0.0),
                      beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                      weight_decay=self.weight_decay)

    def save(self, path):
        """The moments and step count, as safetensors (written atomically)."""
        _save_state(path, {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq},
                    {"optimizer": "adamw", "step": self.step_count})

    def load(self, path):
        """Restores what save() wrote; refuses another optimizer's or model's state."""
        tensors, metadata = _load_state(path, "adamw", self.model.train_params.size)
        self.exp_avg[...] = tensors["exp_avg"]
        self.exp_avg_sq[...] = tensors["exp_avg_sq"]
        self.step_count = int(metadata["step"])


class SGD:
    """torch.optim.SGD (momentum, dampening, nesterov, L2 weight decay)."""

    def __init__(self, model, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        self.model = model
        self.lr = checks.real("lr", lr, 0.0)
        self.momentum = checks.real("momentum", momentum, 0.0)
        self.dampening = checks.real("dampening", dampening, 0.0)
        self.weight_decay = checks.real("weight_decay", weight_decay, 0.0)
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)
        self.momentum_buffer = np.zeros_like(model.train_params) if self.momentum else None
        self.step_count = 0

    def step(self, lr=None):
        """One update from the gradients in model.grads(); lr overrides self.lr once."""
        self.step_count += 1
        _C.sgd_step(self.model.train_params, self.model.train_grads, self.momentum_buffer,
                    lr=self.lr if lr is None else checks.real("lr", lr, 0.0), momentum=self.momentum,
                    dampening=self.dampening, weight_decay=self.weight_decay,
                    nesterov=self.nesterov, first_step=self.step_count == 1)

    def save(self, path):
        """The momentum buffer and step count, as safetensors (written atomically)."""
        tensors = {} if self.momentum_buffer is None else {"momentum_buffer": self.momentum_buffer}
        _save_state(path, tensors, {"optimizer": "sgd", "step": self.step_count})

    def load(self, path):
        """Restores what save() wrote; refuses another optimizer's or model's state."""
        tensors, metadata = _load_state(path, "sgd", self.model.train_params.size)
        if self.momentum_buffer is not None:
            if "momentum_buffer" not in tensors:
                raise ValueError(f"{path!r} has no momentum buffer")
            self.momentum_buffer[...] = tensors["momentum_buffer"]
        self.step_count = int(metadata["step"])


class EMA:
    """An exponential moving average of what a model trains (model.train_params:
    every parameter, or with LoRA the adapters'), updated in C:
    ema <- decay ema + (1 - decay) params after each update(), starting from
    the weights it was built with (after n updates with weights w_1..w_n:
    decay^n w_0 + (1 - decay) sum_k decay^(n-k) w_k)."""

    def __init__(self, model, decay):
        self.model = model
        self.decay = checks.real("decay", decay, 0.0, 1.0, open_high=True)
        self.params = model.train_params.copy()
        self.updates = 0

    def update(self):
        _C.ema_update(self.params, self.model.train_params, decay=self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self):
        """The model holds the average inside the block, its own weights after."""
        own = self.model.train_params.copy()
        self.model.train_params[...] = self.params
        try:
            yield self.model
        finally:
            self.model.train_params[...] = own

    def save_pretrained(self, path, dtype=None):
        """The model with the average's weights, as model.save_pretrained writes it."""
        with self.applied():
            self.model.save_pretrained(path, dtype=dtype)

    def save(self, path):
        """The average and its update count, as safetensors (written atomically)."""
        _save_state(path, {"ema": self.params},
                    {"optimizer": "ema", "decay": self.decay, "updates": self.updates})

    def load(self, path):
        """Restores what save() wrote; refuses another model's or decay's average."""
        tensors, metadata = _load_state(path, "ema", self.model.train_params.size)
        if float(metadata.get("decay", "nan")) != self.decay:
            raise ValueError(f"{path!r} holds an average with decay {metadata.get('decay')}, "
                             f"not {self.decay}")
        self.params[...] = tensors["ema"]
        self.updates = int(metadata["updates"])


def grad_norm(model):
    """The global L2 norm of what the model trains (model.train_grads); of a
    list of models, jointly, as one parameter set."""
    models = model if isinstance(model, (list, tuple)) else [model]
    norms = [_C.grad_norm(m.train_grads) for m in models]
    return norms[0] if len(norms) == 1 else float(np.sqrt(sum(n * n for n in norms)))


def clip_grad_norm(model, max_norm):
    """Scales the model's gradients so their global L2 norm is at most max_norm
    (torch's clip_grad_norm_: factor min(1, max_norm / (norm + 1e-6))). A list
    of models is clipped jointly, as one parameter set (PPO's policy and value
    model). Returns the norm before clipping."""
    max_norm = checks.real("max_norm", max_norm, 0.0, open_low=True)
    models = model if isinstance(model, (list, tuple)) else [model]
    norm = grad_norm(models)
    if not np.isfinite(norm):
        raise FloatingPointError(f"the gradient norm is {norm}: NaN or infinity in the gradients")
    factor = max_norm / (norm + 1e-6)
    if factor < 1.0:
        for m in models:
            _C.scale_in_place(m.train_grads, factor)
    return norm
