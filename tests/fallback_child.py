"""Computes, with whichever calign is first on PYTHONPATH, the numbers
tests/test_simd_fallback.py compares between the build under test and its
baseline x86-64 build, and saves them to the .npz file named in argv[1]."""

import os
import sys

import numpy as np

import calign
from calign import wordalign
from calign.testing.models import tiny_config

VOCAB = 61
FAMILIES = {
    "gpt2": tiny_config("gpt2", vocab_size=VOCAB, initializer_range=0.5),
    "llama": tiny_config("llama", vocab_size=VOCAB, initializer_range=0.5),
    "motif": dict(model_type="motif", architectures=["MotifForCausalLM"], hidden_size=48,
                  num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                  head_dim=6, intermediate_size=40, vocab_size=VOCAB,
                  max_position_embeddings=256, hidden_act="poly_norm", rope_theta=500000.0,
                  rms_norm_eps=1e-6, attn_rms_norm_eps=1e-5, use_bias=True,
                  tie_word_embeddings=False, initializer_range=0.5),
}
PROMPTS = [[1, 2, 3], [4], [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]


def model_numbers(name, config):
    model = calign.Model.from_config(config, seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (2, 80))  # 80 > 64 positions: two attention blocks
    mask = np.ones_like(ids)
    mask[1, 60:] = 0
    labels = np.where(mask == 1, ids, -100)
    out = {f"{name}_logits": model.logits(ids, attention_mask=mask),
           f"{name}_logprobs": model.token_logprobs(ids, labels, attention_mask=mask)}
    model.lm_loss_backward(ids, labels, attention_mask=mask)
    out[f"{name}_grads"] = model.grad_buffer.copy()
    out[f"{name}_greedy"] = padded(model.generate(PROMPTS, max_new_tokens=12))
    sampled, logps = model.generate(PROMPTS, max_new_tokens=12, do_sample=True,
                                    num_return_sequences=2, seed=7, return_logprobs=True)
    out[f"{name}_sampled"], out[f"{name}_sampled_logprobs"] = padded(sampled), padded(logps)
    bf16, bf16_logps = model.generate(PROMPTS, max_new_tokens=12, weight_dtype="bfloat16",
                                      return_logprobs=True)
    out[f"{name}_bf16_greedy"], out[f"{name}_bf16_logprobs"] = padded(bf16), padded(bf16_logps)
    return out


def padded(rows):
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), -1.0)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def main(path):
    with open(calign._C.__file__, "rb") as f:  # the AVX2 clones' symbol names, if any
        clones = f.read().count(b"arch_x86_64_v3")
    numbers = {"extension": calign._C.__file__, "package": os.environ.get("PYTHONPATH", ""),
               "avx2_clones": clones, "simd_clones": calign.build_info()["simd_clones"]}
    for name, config in FAMILIES.items():
        numbers.update(model_numbers(name, config))
    pairs = wordalign.synthetic_corpus(200, seed=4, vocab_size=80)[0]
    hmm = wordalign.HMM(ibm1_iterations=2).fit(pairs, iterations=3)
    numbers["hmm_prob"] = np.asarray(hmm.table[2], np.float64)
    numbers["hmm_ll"] = np.asarray(hmm.log_likelihoods, np.float64)
    np.savez(path, **numbers)


if __name__ == "__main__":
    main(sys.argv[1])
