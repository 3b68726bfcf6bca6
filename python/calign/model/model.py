"""calign.Model: a Hugging Face causal LM whose forward and backward run in C."""

import contextlib
import copy
import functools
import threading
from typing import NamedTuple

import numpy as np

from calign import _C, checks, losses
from calign.model import checkpoint
from calign.model import generation
from calign.model.config import engine_config, load_config_file
from calign.model.dtypes import save_dtype
from calign.model.names import linear_modules, tensor_names
from calign.model.packing import as_id_matrix, concatenated_rows, pack_rows


BUSY_MESSAGE = ("this model is being used by another thread; calls on one model must not "
                "overlap")


def exclusive(method):
    """Runs a Model method as one use of the model: while it runs, another
    thread calling any exclusive method of the same model gets RuntimeError
    instead of sharing its activations, workspace or gradients. (The engine
    also refuses overlapping C calls; this covers methods that make several,
    such as logits: a forward, then the lm_head.) The same thread may nest."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError(BUSY_MESSAGE)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._in_use.release()
    return run


class PairScores(NamedTuple):
    """What Model.score_dpo_pairs returns; per-pair arrays are [B] (policy [B, 2])."""
    d_hidden: np.ndarray
    logprobs: np.ndarray
    stats: dict
    policy: np.ndarray
    losses: np.ndarray
    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray


class GRPOScores(NamedTuple):
    """What Model.score_grpo returns; per-token arrays are [M] in score order."""
    d_hidden: np.ndarray
    logprobs: np.ndarray
    stats: dict
    grad_logps: np.ndarray
    loss: float
    metrics: dict


class ConstrainedScores(NamedTuple):
    d_hidden: np.ndarray
    logprobs: np.ndarray
    stats: dict
    grad_logps: np.ndarray
    losses: np.ndarray


class Model:
    """A decoder-only transformer (GPT-2, Llama, Qwen2, Qwen3, Motif families) in float32.

    Parameters live in one contiguous float32 vector (`self.params`) and their
    gradients in a second one (`self.grad_buffer`); `state_dict()` and
    `grads()` are NumPy views into them named as in transformers.

    `gradient_checkpointing = True` makes a training forward keep only the
    residual stream entering each layer; the backward runs each layer's
    forward again (one more forward's worth of compute, the same gradients).

    With LoRA adapters (add_adapter, load_adapter) the base weights are
    frozen: training computes no gradient for them (`self.grad_buffer` is
    never written), only for the adapters (`self.adapters.params` and
    `.grads`); `train_params` and `train_grads` name what trains either way.
    """

    def __init__(self, config, extra_tensors=None, engine_overrides=None):
        self.config = copy.deepcopy(config)
        # a checkpoint's generation_config.json (None: there was none), read
        # by generate as transformers reads it
        self.generation_config = None
        # the dtype of the checkpoint's tensors, which save_pretrained writes
        # by default (the parameters themselves are float32 whatever it is)
        self.checkpoint_dtype = "float32"
        self._in_use = threading.RLock()
        self._engine = dict(engine_config(self.config), **(engine_overrides or {}))
        self._handle = _C.model_create(**self._engine)
        n_engine, self._layout = _C.model_layout(self._handle)
        # tensors the engine does not use (a reward head) follow the engine's
        self._extra = dict(extra_tensors or {})
        n_extra = sum(int(np.prod(shape)) for shape in self._extra.values())
        self._gradient_checkpointing = False
        self.adapters = None          # calign.lora.LoraAdapters, or None
        self._adapter_vector = None   # what the engine runs with inside running_adapters()
        self._adapter_override = False
        self._control_rows = None     # the steering rows set_control gave the engine
        self._bf16_products = False   # bf16_products
        self.params = np.zeros(n_engine + n_extra, np.float32)
        self.grad_buffer = np.zeros(n_engine + n_extra, np.float32)
        self._engine_params = self.params[:n_engine]
        self._engine_grads = self.grad_buffer[:n_engine]
        self._names = tensor_names(self.config["model_type"], self._engine, self._layout)
        self._tensor_of = {(role, layer): (offset, shape)
                           for role, layer, offset, shape in self._layout}
        offset = n_engine
        for name, shape in self._extra.items():
            self._tensor_of[(name, -1)] = (offset, tuple(shape))
            self._names.append((name, name, -1, None, None))
            offset += int(np.prod(shape))

    # ---- construction and files ---------------------------------------------

    @classmethod
    def from_pretrained(cls, path):
        """Loads `path`/config.json and model.safetensors (or a sharded index),
        whose tensors may be float32, bfloat16, float16 or float64: each is
        converted to float32 as it is read, one at a time, so loading needs
        the float32 model and one tensor. `checkpoint_dtype` remembers their
        dtype (float32 if they mix several), the one save_pretrained writes
        by default; `generation_config` holds generation_config.json's object."""
        model = cls(load_config_file(path))
        tensors = checkpoint.read_tensors(path)
        expected = {name: view.shape for name, view in model.state_dict().items()}
        # transformers may save a tied lm_head too; it is the embedding then
        ignored = ("lm_head.weight",) if model._engine["tied_embeddings"] else ()
        checkpoint.check_tensors(tensors, expected, ignored)
        checkpoint.copy_into(model.state_dict(), tensors)
        model.checkpoint_dtype = checkpoint.loaded_dtype(tensors, expected)
        model.generation_config = generation.read_generation_config(path)
        return model

    @classmethod
    def from_config(cls, config, seed=0):
        """A randomly initialised model, initialised as transformers does:
        weights ~ N(0, initializer_range), biases 0, norms 1 (GPT-2's output
        projections scaled by 1/sqrt(2 n_layer)); PolyNorm's weights 1/3 and
        differential attention's lambda vectors ~ N(0, 0.1) as Motif's and
        the papers' reference code initialise them."""
        model = cls(config)
        rng = np.random.default_rng(seed)
        std = float(config.get("initializer_range", 0.02))
        residual_std = std / np.sqrt(2 * model._engine["n_layer"])
        for name, view in model.state_dict().items():
            if name.endswith("bias"):
                view[...] = 0.0
            elif name.endswith("mlp.act_fn.weight"):
                view[...] = 1.0 / 3.0
            elif ".self_attn.lambda_" in name:
                view[...] = rng.normal(0.0, 0.1, view.shape)
            elif view.ndim == 1:
                view[...] = 1.0
            elif model.config["model_type"] == "gpt2" and name.endswith("c_proj.weight"):
                view[...] = rng.normal(0.0, residual_std, view.shape)
            else:
                view[...] = rng.normal(0.0, std, view.shape)
        pad = config.get("pad_token_id")
        if config["model_type"] != "gpt2" and isinstance(pad, int) and 0 <= pad < model.vocab_size:
            model.state_dict()[_embedding_name(config)][pad] = 0.0
        return model

    def save_pretrained(self, path, dtype=None, merged=False):
        """Writes model.safetensors, config.json and, when the model has one,
        generation_config.json into the folder `path`; transformers loads them
        unchanged.

        dtype: "float32", "bfloat16" or "float16"; None writes
        `checkpoint_dtype`, the dtype the model was loaded in (float32 for a
        model built from a config). bfloat16 and float16 round to nearest,
        ties to even, as torch's `.to(dtype)`; a weight beyond the dtype's
        range raises ValueError naming its tensor.

        A model with adapters writes the adapters alone, as PEFT does
        (adapter_config.json + adapter_model.safetensors, float32;
        peft.PeftModel loads them onto the base), or with merged=True the
        weights with the adapters' updates folded in (the model keeps its
        adapters)."""
        if self.adapters is not None and not merged:
            self.adapters.save(path, self.config["model_type"])
            return
        if self.adapters is not None:
            merged_model = Model(self.config, self._extra)
            merged_model.params[...] = self.params
            merged_model.checkpoint_dtype = self.checkpoint_dtype
            merged_model.generation_config = self.generation_config
            merged_model.add_adapter(self.adapters.config)
            merged_model.adapters.params[...] = self.adapters.params
            merged_model.merge_and_unload().save_pretrained(path, dtype)
            return
        dtype = save_dtype(dtype, self.checkpoint_dtype)
        checks.require(self.generation_config is None or isinstance(self.generation_config, dict),
                       "generation_config", self.generation_config,
                       "None or a dict (generation_config.json's object)")
        extra = {} if self.generation_config is None else \
            {generation.GENERATION_CONFIG_NAME: self.generation_config}
        checkpoint.write_checkpoint(path, self.state_dict(), self.config, dtype, extra)

    # ---- parameters ---------------------------------------------------------

    @property
    def vocab_size(self):
        return self._engine["vocab"]

    @property
    def hidden_size(self):
        return self._engine["d_model"]

    @property
    def num_layers(self):
        """The number of decoder blocks."""
        return self._engine["n_layer"]

    @property
    def max_positions(self):
        """The number of positions the model has (its config's
        max_position_embeddings, or n_positions for GPT-2): every token's
        position must be below it."""
        return self._engine["max_positions"]

    def num_parameters(self):
        """Number of float32 parameters (engine and extra tensors)."""
        return int(self.params.size)

    def _views(self, buffer):
        views = {}
        for name, role, layer, start, stop in self._names:
            offset, shape = self._tensor_of[(role, layer)]
            size = int(np.prod(shape))
            tensor = buffer[offset:offset + size].reshape(shape)
            views[name] = tensor if start is None else tensor[start:stop]
        return views

    def state_dict(self):
        """{transformers name: float32 view into the parameter vector}."""
        return self._views(self.params)

    def grads(self):
        """{transformers name: writable float32 view into the gradient vector}."""
        return self._views(self.grad_buffer)

    @exclusive
    def zero_grad(self):
        """Sets every gradient of what trains to 0 (the backward passes add into
        them): the adapters' alone when the model has adapters."""
        self.train_grads[...] = 0.0

    @property
    def train_params(self):
        """The vector training updates: the adapters' when the model has
        adapters (the base is frozen), else every parameter."""
        return self.adapters.params if self.adapters is not None else self.params

    @property
    def train_grads(self):
        """The gradients of train_params."""
        return self.adapters.grads if self.adapters is not None else self.grad_buffer

    # ---- the vocabulary -------------------------------------------------------

    @exclusive
    def resize_token_embeddings(self, new_num_tokens):
        """Grows the vocabulary to new_num_tokens (transformers' name), in
        place, for tokens added to the tokenizer (Tokenizer.add_special_tokens):
        each new embedding row is the mean of the existing rows, and so is each
        new lm_head row when the head is untied (no family here has an lm_head
        bias). The logits of the existing tokens are unchanged; their
        log-probs change only through the softmax's larger denominator.
        (transformers' mean_resizing draws the new rows around that mean with
        a small covariance; calign takes the mean itself, deterministic.)
        config["vocab_size"] follows; save_pretrained writes the grown model.
        Refused with adapters attached (merge_and_unload first) or a size
        below the current one. Returns the model."""
        new_num_tokens = checks.integer("new_num_tokens", new_num_tokens, self.vocab_size,
                                        checks.C_INT_MAX,
                                        what=f"an integer in [{self.vocab_size}, "
                                             f"{checks.C_INT_MAX}] (the vocabulary cannot "
                                             f"shrink below its {self.vocab_size} tokens)")
        if self.adapters is not None:
            raise ValueError("resize_token_embeddings: the model has LoRA adapters, whose "
                             "base is frozen; merge_and_unload() them first")
        if new_num_tokens == self.vocab_size:
            return self
        old_vocab = self.vocab_size
        config = dict(copy.deepcopy(self.config), vocab_size=new_num_tokens)
        default_engine = engine_config(self.config)
        overrides = {key: value for key, value in self._engine.items()
                     if key in default_engine and default_engine[key] != value}
        grown = Model(config, self._extra, overrides)
        old, new = self.state_dict(), grown.state_dict()
        grown_names = {_embedding_name(config)}
        if not self._engine["tied_embeddings"]:
            grown_names.add("lm_head.weight")
        for name, view in old.items():
            if name in grown_names:
                rows = new[name]
                rows[:old_vocab] = view
                rows[old_vocab:] = view.mean(axis=0, dtype=np.float64).astype(np.float32)
            else:
                new[name][...] = view
        grown.generation_config = self.generation_config
        grown.checkpoint_dtype = self.checkpoint_dtype
        grown.gradient_checkpointing = self.gradient_checkpointing
        grown.bf16_products = self.bf16_products
        if self._control_rows is not None:  # the steering stays (the width is the same)
            grown.set_control(self._control_rows)
        # the grown model's engine, parameters and names become this model's;
        # the lock stays, as this call holds it
        for field, value in vars(grown).items():
            if field != "_in_use":
                setattr(self, field, value)
        return self

    # ---- LoRA adapters --------------------------------------------------------

    def linear_modules(self):
        """[LinearModule]: transformers' name, layer and engine block of every
        linear module inside the layers (what LoRA can adapt)."""
        return linear_modules(self.config["model_type"], self._engine, self._layout)

    @exclusive
    def add_adapter(self, lora_config, seed=0):
        """Adds LoRA adapters (a calign.LoraConfig) to the modules it targets,
        initialised as PEFT does (B zero: the model is unchanged until they
        train) from `seed`; the base weights are frozen from then on."""
        from calign.lora import LoraAdapters, select_modules

        if self.adapters is not None:
            raise ValueError("the model already has adapters (one adapter at a time: "
                             "merge_and_unload() it first)")
        modules = select_modules(lora_config, self.config["model_type"], self.linear_modules())
        adapters = LoraAdapters(lora_config, modules, seed=checks.seed("seed", seed))
        _C.model_set_adapters(self._handle, **adapters.engine_table())
        self.adapters = adapters
        return adapters

    def load_adapter(self, path):
        """Adds the PEFT LoRA adapter saved in `path` (adapter_config.json +
        adapter_model.safetensors, PEFT-trained or calign-trained); its tensors
        must be exactly those its config gives this model."""
        from calign.lora import read_adapter_config, read_adapter_tensors

        config = read_adapter_config(path)
        adapters = self.add_adapter(config)
        try:
            read_adapter_tensors(path, adapters)
        except Exception:
            self._remove_adapters()
            raise
        return adapters

    @exclusive
    def _remove_adapters(self):
        _C.model_set_adapters(self._handle, layer=[], site=[], out_offset=[], out_dim=[],
                              in_dim=[], r=[], a_offset=[], b_offset=[], scale=[], n_floats=0)
        self.adapters = None

    def disable_adapter(self):
        """A context within which the model runs without its adapters (PEFT's
        disable_adapter): the base model, as LoRA training's reference."""
        return self.running_adapters(None)

    @contextlib.contextmanager
    def running_adapters(self, vector):
        """Within it the engine runs with `vector` as the adapters' A and B (a
        float32 vector of the adapters' layout: a frozen copy of them, as the
        reference of training that continues an adapter), or None for none.
        Nothing trains inside it."""
        if vector is not None:
            if self.adapters is None:
                raise ValueError("running_adapters: the model has no adapters")
            if not (isinstance(vector, np.ndarray) and vector.dtype == np.float32 and
                    vector.shape == self.adapters.params.shape):
                raise ValueError(f"running_adapters needs a float32 vector of "
                                 f"{self.adapters.params.size} values")
        previous = (self._adapter_override, self._adapter_vector)
        self._adapter_override, self._adapter_vector = True, vector
        try:
            yield self
        finally:
            self._adapter_override, self._adapter_vector = previous

    def merge_and_unload(self):
        """Folds each adapter's update scale * B A into its weight and removes
        the adapters (PEFT's merge_and_unload); returns the model."""
        if self.adapters is None:
            raise ValueError("the model has no adapters to merge")
        with self._in_use:
            for i, module in enumerate(self.adapters.modules):
                view = self._projection(module)
                delta = self.adapters.delta(i)
                view[...] = (view.astype(np.float64) + (
                    delta.T if self.config["model_type"] == "gpt2" else delta)).astype(np.float32)
            self._remove_adapters()
        return self

    def _projection(self, module):
        """The weight rows (Conv1D: columns) of a LinearModule, a writable view."""
        role = {"qkv": "qkv_w", "o": "o_w", "up": "up_w", "down": "down_w"}[module.site]
        offset, shape = self._tensor_of[(role, module.layer)]
        weight = self.params[offset:offset + int(np.prod(shape))].reshape(shape)
        stop = module.out_offset + module.out_dim
        return weight[:, module.out_offset:stop] if self.config["model_type"] == "gpt2" \
            else weight[module.out_offset:stop]

    def _active_adapters(self):
        """The adapter vector the engine runs with, or None (none, or off)."""
        if self._adapter_override:
            return self._adapter_vector
        return self.adapters.params if self.adapters is not None else None

    def _base_grads(self):
        """The base's gradient vector, or None when it is frozen (adapters)."""
        return None if self.adapters is not None else self._engine_grads

    # ---- running the engine -------------------------------------------------

    @exclusive
    def forward_packed(self, batch, train=False):
        """Final normed hidden states [T, d] of a PackedBatch. With train, what
        backward_packed (the next call on this model) needs is kept: every
        layer's activations, or with gradient_checkpointing each layer's input."""
        mode = ("train_checkpointed" if self.gradient_checkpointing else "train") if train \
            else "inference"
        return _C.model_forward(self._handle, self._engine_params, batch.input_ids,
                                batch.position_ids, batch.sequence_starts, batch.branch_ids,
                                mode=mode, adapters=self._active_adapters())

    @property
    def gradient_checkpointing(self):
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"gradient_checkpointing must be True or False, got {value!r}")
        self._gradient_checkpointing = bool(value)

    @property
    def bf16_products(self):
        """Whether the training, scoring, log-prob and logits forwards and
        their backward multiply bfloat16 operands with float32 accumulation:
        the mixed precision of TRL's bf16=True (torch's CPU autocast), with
        weights, gradients and activations kept in float32. Every product of
        a linear layer, of attention (QK^T and PV) and of the lm_head rounds
        both its operands to bfloat16 (nearest even, as torch) and
        accumulates in float32; unlike autocast, the product's output stays
        float32 rather than being rounded again. Generation is not affected
        (see generate's weight_dtype), nor is a RewardModel's score head (a
        d x 1 product taken in float64). Off by default; False is the float32
        path bit for bit. The products run on the CPU's bfloat16 units
        through oneDNN where it has them (AVX512-BF16 or AMX), else emulated
        at float32 speed: calign.bf16_backend() says which."""
        return self._bf16_products

    @bf16_products.setter
    @exclusive
    def bf16_products(self, value):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"bf16_products must be True or False, got {value!r}")
        _C.model_set_bf16_products(self._handle, bool(value))
        self._bf16_products = bool(value)

    def activation_arena_bytes(self):
        """Bytes the engine holds for activations and their gradients, as sized
        by the largest batch so far (it grows, never shrinks)."""
        return _C.model_arena_bytes(self._handle)

    def workspace_allocations(self):
        """How many times the engine has (re)allocated its activation arena or
        its logits scratch. Both grow to the largest batch seen; a step on a
        batch no larger than an earlier one allocates neither."""
        return _C.model_workspace_allocations(self._handle)

    @exclusive
    def packed_scores(self, hidden, batch, temperature=1.0, return_stats=False):
        """Log-probs float32 [M] of the batch's scores read from `hidden`, plus
        per-score entropy, mean_logit, log_sum_sq_probs and is_top1 with
        return_stats. The logits are never built."""
        return _C.model_score(self._handle, self._engine_params, hidden, batch.score_rows,
                              batch.score_targets, temperature=temperature,
                              return_stats=return_stats)

    @exclusive
    def score_backward(self, hidden, batch, grad_logprobs, temperature=1.0, return_stats=False):
        """Adds the lm_head gradient of sum(grad_logprobs * logprobs) to the
        gradient buffer; returns (d_hidden [T, d], logprobs [M]), plus the
        statistics of packed_scores with return_stats: when the gradient is known
        before the log-probs (SFT), one pass gives both."""
        return _C.model_score_backward(self._handle, self._engine_params, self._base_grads(),
                                       hidden, batch.score_rows, batch.score_targets,
                                       grad_logprobs, temperature=temperature,
                                       return_stats=return_stats)

    @exclusive
    def score_dpo_pairs(self, hidden, batch, completion_lengths, ref_logps, settings,
                        token_weights=None, weights=None, grad_scale=1.0):
        """Scores B preference pairs and applies the DPO loss in one pass.

        The batch's scores are the pairs' completions, chosen then rejected
        (pack_shared_prefix of (prompt, [chosen, rejected]) examples), with
        completion_lengths [2B] tokens. The kernel takes chunks of whole pairs:
        a chunk's logits give the log-probs, the pair sums go through the loss
        (calign.losses.dpo_loss's C function, `settings` from
        calign.losses.dpo_settings, with ref_logps [B, 2], per-pair `weights`
        and per-token `token_weights`), and the chunk is backpropagated at once.
        Adds the lm_head gradient of grad_scale * sum(losses) to the gradient
        buffer. Only for losses where each pair's loss is its own (not aot,
        aot_unpaired or sft). Returns a PairScores.
        """
        ref_logps = np.asarray(ref_logps, np.float64)
        if ref_logps.ndim != 2 or ref_logps.shape[1] != 2:
            raise ValueError(f"ref_logps must have shape [pairs, 2] (chosen, rejected), got "
                             f"{ref_logps.shape}")
        return PairScores(*_C.model_score_dpo(
            self._handle, self._engine_params, self._base_grads(), hidden, batch.score_rows,
            batch.score_targets, completion_lengths, ref_logps[:, 0], ref_logps[:, 1],
            settings, token_weights=token_weights, weights=weights,
            grad_scale=checks.real("grad_scale", grad_scale)))

    @exclusive
    def score_grpo(self, hidden, batch, completion_lengths, advantages, completion_mask, settings,
                   *, old_logps=None, ref_logps=None, temperature=1.0, max_completion_length=None,
                   num_items_in_batch=None, gradient_accumulation_steps=1):
        """Scores S completions and applies the GRPO loss in one pass.

        The batch's scores are the completions' tokens, completion_lengths
        [S] each, in order (pack_shared_prefix of (prompt, [completions])
        examples). The kernel takes chunks of whole completions: a chunk's
        logits at `temperature` give the log-probs, each completion's tokens
        go through calign.losses.grpo_loss's per-row C function (`settings`
        from calign.losses.grpo_settings; advantages [S]; completion_mask,
        old_logps and ref_logps [M] per score), and the chunk is
        backpropagated at once: no [tokens x vocabulary] buffer exists and no
        second lm_head product runs. The loss is grpo_loss's on the [S, T]
        layout of the same numbers (num_items_in_batch None: the mask's sum).
        Adds the lm_head gradient of the loss to the gradient buffer. Returns
        a GRPOScores: d_hidden for backward_packed, log-probs, their stats
        (entropy, ...), d loss / d log-probs, the loss and TRL's metrics."""
        return GRPOScores(*_C.model_score_grpo(
            self._handle, self._engine_params, self._base_grads(), hidden, batch.score_rows,
            batch.score_targets, completion_lengths, np.asarray(advantages, np.float64),
            np.asarray(completion_mask, np.float32), settings,
            old_logps=None if old_logps is None else np.asarray(old_logps, np.float32),
            ref_logps=None if ref_logps is None else np.asarray(ref_logps, np.float32),
            temperature=temperature,
            **losses.grpo_batch_settings(max_completion_length, num_items_in_batch,
                                         gradient_accumulation_steps)))

    @exclusive
    def score_constrained(self, hidden, batch, completion_lengths, ref_logps, betas,
                          grad_scale=1.0):
        """Scores S sequences and applies the token-wise constrained loss
        (Qi et al. 2024; calign.losses.token_constrained_loss's C function) in
        one pass.

        The batch's scores are the sequences' tokens, completion_lengths [S]
        each, in order; ref_logps and betas [M] hold each score's reference
        log-prob and beta_t. Each token's gradient, -2 sigmoid(beta_t
        (ref - logp)), depends on its own log-prob only, so every chunk of the
        kernel is scored, weighted and backpropagated at once. Adds the lm_head
        gradient of grad_scale * sum(losses) to the gradient buffer. Returns
        ConstrainedScores: d_hidden for backward_packed, log-probs, their stats,
        grad_scale * d loss / d log-probs, and each sequence's loss."""
        return ConstrainedScores(*_C.model_score_constrained(
            self._handle, self._engine_params, self._base_grads(), hidden, batch.score_rows,
            batch.score_targets, np.asarray(completion_lengths, np.int64),
            np.asarray(ref_logps, np.float32), np.asarray(betas, np.float32),
            grad_scale=checks.real("grad_scale", grad_scale)))

    @exclusive
    def backward_packed(self, batch, d_hidden):
        """Adds the parameter gradients for d_hidden (the loss gradient at the
        final hidden states) to the gradient buffer; needs forward_packed(train=True)
        of the same batch just before."""
        adapters = self._active_adapters()
        if self._adapter_override:
            raise RuntimeError("no backward inside disable_adapter() or running_adapters(): "
                               "only the model's own adapters train")
        _C.model_backward(self._handle, self._engine_params, self._base_grads(), d_hidden,
                          batch.input_ids, batch.position_ids, batch.sequence_starts,
                          batch.branch_ids, adapters=adapters,
                          adapter_grads=None if adapters is None else self.adapters.grads)

    @exclusive
    def hidden_states(self, input_ids, attention_mask=None):
        """Final normed hidden states float32 [B, T, d] (0 at padding)."""
        ids, mask = as_id_matrix(input_ids, attention_mask)
        batch, flat = pack_rows(ids, mask)
        hidden = self.forward_packed(batch)
        out = np.zeros(ids.shape + (self.hidden_size,), np.float32)
        out[mask] = hidden
        return out

    @exclusive
    def layer_hidden_states(self, input_ids, layers, attention_mask=None):
        """The residual stream after decoder blocks `layers` (0-based, negative
        from the end, as Python indexes), float32 [len(layers), B, T, d], 0 at
        padding: transformers' hidden_states[l + 1] for every block but the
        last, whose stream here is before the final norm. One C call that
        runs the blocks up to the deepest one asked and copies only those."""
        chosen = self.block_indices(layers)
        ids, mask = as_id_matrix(input_ids, attention_mask)
        batch, _ = pack_rows(ids, mask)
        order = sorted(set(chosen))
        streams = _C.model_forward_layers(
            self._handle, self._engine_params, batch.input_ids, batch.position_ids,
            batch.sequence_starts, batch.branch_ids, np.asarray(order, np.int64),
            adapters=self._active_adapters())
        out = np.zeros((len(chosen),) + ids.shape + (self.hidden_size,), np.float32)
        for i, layer in enumerate(chosen):
            out[i][mask] = streams[order.index(layer)]
        return out

    def block_indices(self, layers, name="layers"):
        """Decoder block indices as non-negative ints (negative counting from
        the end); ValueError naming `name` for one out of range."""
        n = self.num_layers
        values = [layers] if checks.is_int(layers) else list(layers)
        checks.require(len(values) > 0, name, layers, "at least one decoder block index")
        out = []
        for layer in values:
            checks.require(checks.is_int(layer) and -n <= layer < n, name, layers,
                           f"block indices in [-{n}, {n}) (the model has {n} decoder blocks)")
            out.append(int(layer) % n)
        return out

    @exclusive
    def set_control(self, rows):
        """Steering: rows [n_layer, hidden_size] added to every position of the
        residual stream after each decoder block (a zero row: that block is
        left alone), in every forward until set_control(None); see
        calign.steering.ControlVector, which builds the rows."""
        if rows is not None:
            rows = np.asarray(rows)
            shape = (self.num_layers, self.hidden_size)
            checks.require(rows.dtype.kind in "fiu" and rows.shape == shape, "control",
                           rows.shape, f"a numeric array of shape {shape} (one row per block)")
            rows = np.ascontiguousarray(rows, np.float32)
        _C.model_set_control(self._handle, None if rows is None else rows.reshape(-1))
        self._control_rows = None if rows is None else rows.copy()

    @exclusive
    def logits(self, input_ids, attention_mask=None):
        """lm_head logits float32 [B, T, V] (0 at padding). For tests and small inputs:
        training never builds them."""
        ids, mask = as_id_matrix(input_ids, attention_mask)
        batch, _ = pack_rows(ids, mask)
        hidden = self.forward_packed(batch)
        out = np.zeros(ids.shape + (self.vocab_size,), np.float32)
        out[mask] = _C.model_logits(self._handle, self._engine_params, hidden)
        return out

    def _shifted_scores(self, ids, mask, labels):
        """Score rows/targets for causal-LM labels: position t predicts labels[t + 1]
        when both t and t + 1 are real tokens and the label is not -100."""
        labels = np.asarray(labels)
        if labels.ndim == 1:
            labels = labels[None, :]
        if labels.shape != ids.shape:
            raise ValueError(f"labels has shape {labels.shape} but input_ids has {ids.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must hold integer token ids, not {labels.dtype}")
        batch, flat = pack_rows(ids, mask)
        scored = mask[:, :-1] & mask[:, 1:] & (labels[:, 1:] != -100)
        batch.score_rows = flat[:, :-1][scored]
        batch.score_targets = labels[:, 1:][scored].astype(np.int64)
        return batch, scored

    @exclusive
    def token_logprobs(self, input_ids, labels, attention_mask=None, temperature=1.0):
        """log p(labels[b, t+1] | input_ids[b, :t+1]) as float32 [B, T-1], without
        building the logits; 0 where the label is -100 or the position is padding."""
        ids, mask = as_id_matrix(input_ids, attention_mask)
        batch, scored = self._shifted_scores(ids, mask, labels)
        hidden = self.forward_packed(batch)
        out = np.zeros(scored.shape, np.float32)
        out[scored] = self.packed_scores(hidden, batch, temperature)
        return out

    @exclusive
    def packed_token_logprobs(self, batch, temperature=1.0):
        """Per-token log-probs float32 [M] of a PackedBatch's scores (see
        calign.pack_shared_prefix and its completion_slices)."""
        return self.packed_scores(self.forward_packed(batch), batch, temperature)

    @exclusive
    def lm_loss_backward(self, input_ids, labels, attention_mask=None):
        """Mean token cross-entropy (transformers' causal-LM loss); its gradient
        replaces the contents of the model's gradient buffer (see grads())."""
        ids, mask = as_id_matrix(input_ids, attention_mask)
        batch, _ = self._shifted_scores(ids, mask, labels)
        n_scored = batch.score_rows.size
        if n_scored == 0:
            raise ValueError("no token is scored: every label is -100 or padding")
        self.zero_grad()
        hidden = self.forward_packed(batch, train=True)
        d_hidden, logprobs = self.score_backward(hidden, batch, np.full(n_scored, -1.0 / n_scored))
        self.backward_packed(batch, d_hidden)
        return -float(np.mean(logprobs, dtype=np.float64))

    @exclusive
    def loss_and_grad(self, input_ids, labels, attention_mask=None):
        """(mean token cross-entropy as transformers' causal-LM loss, gradients):
        the test hook; the gradients are copies named like state_dict()."""
        loss = self.lm_loss_backward(input_ids, labels, attention_mask)
        return loss, {name: view.copy() for name, view in self.grads().items()}

    @exclusive
    def generate(self, input_ids, *, max_new_tokens=None, do_sample=None, temperature=None,
                 top_k=None, top_p=None, repetition_penalty=None, eos_token_id=None,
                 num_return_sequences=1, seed=None, return_logprobs=False, reset_token_id=None,
                 reset_logit_bias=0.0, max_resets=1, return_resets=False, control=None,
                 first_prompt_index=0, weight_dtype="float32"):
        """New tokens for each prompt, with a KV cache, in one call into C.

        A setting left None comes from the checkpoint's generation_config.json
        as transformers takes it (a field the file lacks gets transformers'
        default, top_k 50 among them), or, for a model without one, from
        calign's defaults: greedy, temperature 1, no top-k or top-p filter,
        no repetition penalty, no eos.

        Args:
            input_ids: a list of prompts (lists of token ids, ragged allowed)
                or one prompt.
            max_new_tokens: tokens to generate at most per sequence, counting
                those a reset discards and the reset tokens themselves.
            do_sample: sample (temperature, then top_k, then top_p, as
                transformers applies them) instead of taking the argmax.
            repetition_penalty: transformers' (CTRL's): the logits of tokens
                the sequence holds (prompt included) are divided by it when
                positive and multiplied when not, before the sampling filters.
            eos_token_id: stop a sequence after it produces this token (or any
                token of a list); [] for no stop when the generation config
                names one.
            num_return_sequences: samples per prompt; the prompt is computed
                once and its cache shared.
            seed: samples are a function of (seed, prompt index, sample index).
            weight_dtype: "float32", or "bfloat16" to read the matrix weights
                (the linear layers' and the lm_head's) rounded to bfloat16, as
                torch's .to(torch.bfloat16) rounds them, from a copy made at the
                call's start (half the parameters' bytes, in the model's
                workspace, which keeps that memory for later calls):
                a decoding step, bound by reading the weights, reads half the
                bytes. The arithmetic stays float32 (unlike a bfloat16 model in
                torch, whose activations are rounded too); embeddings, norms and
                biases stay float32.
            first_prompt_index: the prompt index of input_ids[0] in that
                function: a shard of a batch given its first prompt's place in
                the batch samples what the whole batch samples for it (the MPI
                ranks of an online RL run share a generation batch so).
            return_logprobs: also return each new token's log-probability
                under the model at this temperature, over the whole vocabulary
                (log_softmax(logits / temperature), before top-k, top-p, the
                repetition penalty and the reset bias or ban): what a training forward at that
                temperature gives it, as RL's old-policy log-probs.
            reset_token_id: backtracking (Zhang et al. 2024): the id of a reset
                token ("[RESET]"); a sequence that draws it returns only the
                tokens drawn after it (its last one), while the continuation
                still sees the discarded text (the KV cache keeps it, as the
                paper trains it: the safe answer follows the unsafe prefix and
                the reset). None: no reset token (today's output, bit for bit).
            reset_logit_bias: added to the reset token's logit before the
                sampling filters or the argmax (the paper tunes it, e.g. -5,
                to trade spurious resets for safety); needs reset_token_id.
            max_resets: once a sequence has drawn the reset token this many
                times, it cannot draw it again (the paper: at most one).
            return_resets: also return, per sequence, how many drawn tokens a
                reset discarded (those before its last reset token, and the
                reset tokens), or -1 when the sequence never reset.
            control: (vector, strength) to steer this call with a
                calign.steering.ControlVector (strength x its directions added
                after its blocks, prompt and new tokens alike) in place of the
                model's own control (set_control), which is back after the
                call; strength 0 is the unsteered output.

        Returns:
            A list of token-id lists; prompt i's samples are at
            i * num_return_sequences ... (i + 1) * num_return_sequences - 1.
            With return_logprobs and/or return_resets, a tuple of that list,
            then a list of float32 arrays of the same lengths (return_logprobs),
            then a list of ints (return_resets).
        """
        settings, label = generation.resolve(dict(
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            eos_token_id=eos_token_id), self.generation_config)
        prompts = input_ids
        if len(prompts) and not isinstance(prompts[0], (list, tuple, np.ndarray)):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("input_ids is empty: give at least one prompt")
        prompt_ids, starts = concatenated_rows(prompts, lambda i: f"prompt {i}")
        n_prompts = len(starts) - 1
        max_positions = self.max_positions
        max_new_tokens = checks.integer(
            label["max_new_tokens"], settings["max_new_tokens"], 1, max_positions - 1,
            what=f"an integer in [1, {max_positions - 1}] (the model's maximum positions less "
                 f"a prompt token)")
        do_sample = checks.flag(label["do_sample"], settings["do_sample"])
        temperature = checks.real(label["temperature"], settings["temperature"], 0.0,
                                  open_low=True)
        top_k = checks.integer(label["top_k"], settings["top_k"], 0, checks.C_INT_MAX)
        top_p = checks.real(label["top_p"], settings["top_p"], 0.0, 1.0, open_low=True)
        repetition_penalty = checks.real(label["repetition_penalty"],
                                         settings["repetition_penalty"], 0.0, open_low=True)
        eos = generation.eos_token_ids(label["eos_token_id"], settings["eos_token_id"])
        num_return_sequences = checks.integer("num_return_sequences", num_return_sequences, 1,
                                              checks.C_INT_MAX // n_prompts)
        if num_return_sequences > 1 and not do_sample:
            raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy samples "
                             "would all be equal)")
        seed = checks.seed("seed", seed, allow_none=True)
        if seed is None:
            seed = np.random.SeedSequence().entropy % 2**64
        weight_dtype = checks.choice("weight_dtype", weight_dtype, ("float32", "bfloat16"))
        first_prompt_index = checks.integer(
            "first_prompt_index", first_prompt_index, 0,
            checks.C_INT_MAX // num_return_sequences - n_prompts)
        reset_token_id = checks.integer("reset_token_id", reset_token_id, 0, self.vocab_size - 1,
                                        allow_none=True,
                                        what=f"a token id in [0, {self.vocab_size - 1}] (the "
                                             f"model's vocabulary) or None")
        reset_logit_bias = checks.real("reset_logit_bias", reset_logit_bias)
        max_resets = checks.integer("max_resets", max_resets, 0, checks.C_INT_MAX)
        if reset_token_id is None:
            checks.require(reset_logit_bias == 0.0, "reset_logit_bias", reset_logit_bias,
                           "0 when reset_token_id is None (there is no reset token to bias)")
        else:
            checks.require(reset_token_id not in eos, "reset_token_id", reset_token_id,
                           f"a token that is not an eos token ({eos})")
            checks.require(self.vocab_size > 1, "reset_token_id", reset_token_id,
                           "the id of one of at least 2 tokens (the model has 1)")
        return_resets = checks.flag("return_resets", return_resets)
        own_control = self._control_rows
        if control is not None:
            checks.require(isinstance(control, tuple) and len(control) == 2 and
                           hasattr(control[0], "rows"), "control", control,
                           "a (ControlVector, strength) pair")
            rows_of_control = control[0].rows(self, control[1])
            self.set_control(rows_of_control if np.any(rows_of_control) else None)
        try:
            tokens, lengths, logprobs, discarded = _C.model_generate(
                self._handle, self._engine_params, prompt_ids, starts,
                max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                eos_token_ids=np.asarray(eos, np.int64),
                num_return_sequences=num_return_sequences, seed=seed,
                adapters=self._active_adapters(),
                return_logprobs=checks.flag("return_logprobs", return_logprobs),
                reset_token_id=-1 if reset_token_id is None else reset_token_id,
                reset_logit_bias=reset_logit_bias, max_resets=max_resets,
                first_prompt=first_prompt_index, bf16_weights=weight_dtype == "bfloat16")
        finally:
            if control is not None:
                self.set_control(own_control)
        sequences = [tokens[i, :lengths[i]].tolist() for i in range(tokens.shape[0])]
        if logprobs is None and not return_resets:
            return sequences
        result = (sequences,)
        if logprobs is not None:
            result += ([logprobs[i, :lengths[i]].copy() for i in range(tokens.shape[0])],)
        if return_resets:
            result += (discarded.tolist(),)
        return result


def _embedding_name(config):
    return "transformer.wte.weight" if config["model_type"] == "gpt2" else \
        "model.embed_tokens.weight"
