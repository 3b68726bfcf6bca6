"""Motif's decoder (PolyNorm MLP, differential attention) transcribed to torch.

There is no Motif modelling code in transformers. This is written from the
papers' formulas (Zhuo et al. 2024, "Polynomial Composition Activations";
Ye et al. 2024, "Differential Transformer") and the description of Motif's
modeling code in shared/research/methods-wave2.md §5 (vLLM's port of
modeling_motif.py and its differential flash-attention backend), independently
of calign's C code: plain dense T x T attention, torch autograd for the
gradients. Parameters are a dict named as Motif's checkpoints name them.

Conventions (§5.2): num_attention_heads (H) and num_key_value_heads (K) count
sub-heads of head_dim D; sub-heads 2i and 2i+1 are the two maps of
differential head i (the "(H two) D -> H two D" stripe split), V of kv group
g is its two sub-heads' columns concatenated (2D wide), and differential head
i reads kv group i // (H / K) (flash attention's grouped-query rule applied to
each map). lambda_init uses the 0-based layer index minus one, as Motif does.
"""

import math

import torch


def rms(z, eps):
    """z / sqrt(mean(z^2) + eps) over the last dimension."""
    return z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + eps)


def polynorm(x, weight, bias, eps=1e-6):
    """PolyNorm(x) = w0 N(x^3) + w1 N(x^2) + w2 N(x) + b."""
    return weight[0] * rms(x ** 3, eps) + weight[1] * rms(x ** 2, eps) + \
        weight[2] * rms(x, eps) + bias


def motif_mlp(x, p, prefix):
    """down_proj(PolyNorm(gate_proj(x)) * up_proj(x))."""
    gate = linear(x, p, prefix + "gate_proj")
    up = linear(x, p, prefix + "up_proj")
    act = polynorm(gate, p[prefix + "act_fn.weight"], p[prefix + "act_fn.bias"])
    return linear(act * up, p, prefix + "down_proj")


def lambda_init(layer_idx):
    """Motif's schedule over 0-based layer indices (the port's off-by-one)."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer_idx - 1))


def linear(x, p, name):
    y = x @ p[name + ".weight"].T
    bias = p.get(name + ".bias")
    return y if bias is None else y + bias


def rope(x, positions, theta):
    """Llama's rotary embedding (rotate_half) of x [..., T, n, D] at positions [T]."""
    D = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)[:, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)[:, None, :]
    half = D // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def differential_attention(x, p, prefix, layer_idx, cfg):
    """Differential attention of one sequence x [T, d] (causal)."""
    T = x.shape[0]
    H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    positions = torch.arange(T)
    q = rope(linear(x, p, prefix + "q_proj").view(T, H, D), positions, cfg["rope_theta"])
    k = rope(linear(x, p, prefix + "k_proj").view(T, K, D), positions, cfg["rope_theta"])
    v = linear(x, p, prefix + "v_proj").view(T, K // 2, 2 * D)
    q1, q2 = q[:, 0::2], q[:, 1::2]                     # [T, H/2, D] each
    k1, k2 = k[:, 0::2], k[:, 1::2]                     # [T, K/2, D] each
    group = H // K
    k1, k2, v = (t.repeat_interleave(group, dim=1) for t in (k1, k2, v))
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def softmax_map(qs, ks):
        scores = torch.einsum("thd,shd->hts", qs, ks) / math.sqrt(D)
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    lam_init = lambda_init(layer_idx)
    lam = torch.exp((p[prefix + "lambda_q1"] * p[prefix + "lambda_k1"]).sum()) \
        - torch.exp((p[prefix + "lambda_q2"] * p[prefix + "lambda_k2"]).sum()) + lam_init
    attn = softmax_map(q1, k1) - lam * softmax_map(q2, k2)      # [H/2, T, T]
    out = torch.einsum("hts,shd->thd", attn, v)                  # [T, H/2, 2D]
    eps = cfg.get("attn_rms_norm_eps", 1e-5)
    out = rms(out, eps) * p[prefix + "subln.weight"] * (1 - lam_init)
    return linear(out.reshape(T, H * D), p, prefix + "o_proj")


def standard_attention(x, p, prefix, cfg):
    """Llama's causal grouped-query attention of one sequence x [T, d]."""
    T = x.shape[0]
    H, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or cfg["hidden_size"] // H
    positions = torch.arange(T)
    q = rope(linear(x, p, prefix + "q_proj").view(T, H, D), positions, cfg["rope_theta"])
    k = rope(linear(x, p, prefix + "k_proj").view(T, K, D), positions, cfg["rope_theta"])
    v = linear(x, p, prefix + "v_proj").view(T, K, D)
    k, v = (t.repeat_interleave(H // K, dim=1) for t in (k, v))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D)
    attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return linear(torch.einsum("hts,shd->thd", attn, v).reshape(T, H * D), p, prefix + "o_proj")


def swiglu_mlp(x, p, prefix):
    gate = linear(x, p, prefix + "gate_proj")
    return linear(torch.nn.functional.silu(gate) * linear(x, p, prefix + "up_proj"), p,
                  prefix + "down_proj")


def decoder_logits(params, cfg, ids, polynorm=True, differential=True):
    """Logits [B, T, V] of token ids [B, T] (each row one sequence) of a
    pre-norm Llama-shaped decoder; Motif's with both options on, a Llama
    with either of its layers otherwise."""
    eps = cfg.get("rms_norm_eps", 1e-6)
    rows = []
    for row in ids:
        h = params["model.embed_tokens.weight"][row]
        for layer in range(cfg["num_hidden_layers"]):
            prefix = f"model.layers.{layer}."
            normed = rms(h, eps) * params[prefix + "input_layernorm.weight"]
            h = h + (differential_attention(normed, params, prefix + "self_attn.", layer, cfg)
                     if differential else
                     standard_attention(normed, params, prefix + "self_attn.", cfg))
            normed = rms(h, eps) * params[prefix + "post_attention_layernorm.weight"]
            h = h + (motif_mlp if polynorm else swiglu_mlp)(normed, params, prefix + "mlp.")
        h = rms(h, eps) * params["model.norm.weight"]
        head = params["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") \
            else params["lm_head.weight"]
        rows.append(h @ head.T)
    return torch.stack(rows)


def motif_logits(params, cfg, ids):
    return decoder_logits(params, cfg, ids)


def causal_lm_loss(logits, labels):
    """transformers' causal-LM loss: mean cross-entropy of the next token,
    labels -100 skipped."""
    V = logits.shape[-1]
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)
