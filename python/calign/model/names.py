"""Hugging Face tensor names of the engine's parameter layout, per family.

The engine stores some tensors fused (q, k and v projections one after the
other; gate and up projections likewise), so a name maps to a block of rows
of one engine tensor: (name, role, layer, first_row, last_row)."""

from typing import NamedTuple


def tensor_names(model_type, engine, layout):
    """[(hf_name, role, layer, row_start, row_stop)] for every tensor of `layout`.

    layout: the engine's [(role, layer, offset, shape)]. Row bounds are None
    for whole tensors."""
    if model_type == "gpt2":
        return [(_gpt2_name(role, layer), role, layer, None, None)
                for role, layer, _, _ in layout]
    q_dim = engine["n_head"] * engine["head_dim"]
    kv_dim = engine["n_kv_head"] * engine["head_dim"]
    ff = engine["d_ff"]
    names = []
    for role, layer, _, _ in layout:
        prefix = f"model.layers.{layer}."
        if role in ("qkv_w", "qkv_b"):
            kind = "weight" if role == "qkv_w" else "bias"
            names += [(f"{prefix}self_attn.q_proj.{kind}", role, layer, 0, q_dim),
                      (f"{prefix}self_attn.k_proj.{kind}", role, layer, q_dim, q_dim + kv_dim),
                      (f"{prefix}self_attn.v_proj.{kind}", role, layer, q_dim + kv_dim,
                       q_dim + 2 * kv_dim)]
        elif role in ("up_w", "up_b"):
            kind = "weight" if role == "up_w" else "bias"
            names += [(f"{prefix}mlp.gate_proj.{kind}", role, layer, 0, ff),
                      (f"{prefix}mlp.up_proj.{kind}", role, layer, ff, 2 * ff)]
        else:
            names.append((_llama_name(role, layer), role, layer, None, None))
    return names


_LLAMA_LAYER = {
    "attn_norm_w": "input_layernorm.weight", "q_norm_w": "self_attn.q_norm.weight",
    "k_norm_w": "self_attn.k_norm.weight", "o_w": "self_attn.o_proj.weight",
    "o_b": "self_attn.o_proj.bias", "mlp_norm_w": "post_attention_layernorm.weight",
    "down_w": "mlp.down_proj.weight", "down_b": "mlp.down_proj.bias",
    # Motif's PolyNorm and differential attention (also Llama's options)
    "act_w": "mlp.act_fn.weight", "act_b": "mlp.act_fn.bias",
    "lambda_q1": "self_attn.lambda_q1", "lambda_k1": "self_attn.lambda_k1",
    "lambda_q2": "self_attn.lambda_q2", "lambda_k2": "self_attn.lambda_k2",
    "subln_w": "self_attn.subln.weight",
}
_LLAMA_GLOBAL = {"wte": "model.embed_tokens.weight", "final_norm_w": "model.norm.weight",
                 "lm_head": "lm_head.weight"}
_GPT2_LAYER = {
    "attn_norm_w": "ln_1.weight", "attn_norm_b": "ln_1.bias", "qkv_w": "attn.c_attn.weight",
    "qkv_b": "attn.c_attn.bias", "o_w": "attn.c_proj.weight", "o_b": "attn.c_proj.bias",
    "mlp_norm_w": "ln_2.weight", "mlp_norm_b": "ln_2.bias", "up_w": "mlp.c_fc.weight",
    "up_b": "mlp.c_fc.bias", "down_w": "mlp.c_proj.weight", "down_b": "mlp.c_proj.bias",
}
_GPT2_GLOBAL = {"wte": "transformer.wte.weight", "wpe": "transformer.wpe.weight",
                "final_norm_w": "transformer.ln_f.weight", "final_norm_b": "transformer.ln_f.bias",
                "lm_head": "lm_head.weight"}


def _llama_name(role, layer):
    if layer < 0:
        return _LLAMA_GLOBAL[role]
    return f"model.layers.{layer}.{_LLAMA_LAYER[role]}"


def _gpt2_name(role, layer):
    if layer < 0:
        return _GPT2_GLOBAL[role]
    return f"transformer.h.{layer}.{_GPT2_LAYER[role]}"


class LinearModule(NamedTuple):
    """A linear module of transformers' model (q_proj, c_attn, ...) as the
    engine holds it: a block of output rows of one of a layer's projections."""
    name: str        # transformers' module name, e.g. model.layers.0.self_attn.q_proj
    layer: int
    site: str        # the engine projection: "qkv", "o", "up" or "down"
    out_offset: int  # its rows are [out_offset, out_offset + out_dim) of the projection
    out_dim: int
    in_dim: int


_SITE_OF_ROLE = {"qkv_w": "qkv", "o_w": "o", "up_w": "up", "down_w": "down"}


def linear_modules(model_type, engine, layout):
    """[LinearModule] of every linear module inside the layers, in layer order."""
    q_dim = engine["n_head"] * engine["head_dim"]
    in_dims = {"qkv": engine["d_model"], "o": q_dim, "up": engine["d_model"],
               "down": engine["d_ff"]}
    shapes = {(role, layer): shape for role, layer, _, shape in layout}
    gpt2 = model_type == "gpt2"
    modules = []
    for name, role, layer, start, stop in tensor_names(model_type, engine, layout):
        if role not in _SITE_OF_ROLE:
            continue
        site = _SITE_OF_ROLE[role]
        rows = shapes[(role, layer)][1 if gpt2 else 0]  # Conv1D stores [in, out]
        start, stop = (0, rows) if start is None else (start, stop)
        modules.append(LinearModule(name[:-len(".weight")], layer, site, start, stop - start,
                                    in_dims[site]))
    return modules
