"""Hugging Face tensor names of the engine's parameter layout, per family.

The engine stores some tensors fused (q, k and v projections one after the
other; gate and up projections likewise), so a name maps to a block of rows
of one engine tensor: (name, role, layer, first_row, last_row)."""


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
