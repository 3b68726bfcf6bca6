"""generate(weight_dtype="bfloat16"): the matrix weights (linear layers and
lm_head) read as bfloat16, the arithmetic in float32.

The reference is the same model in float32 with those weights rounded by
torch's .to(torch.bfloat16) beforehand: calign's own float32 path and
transformers' model. Decoding (a few rows) reads the bfloat16 weights in
place; the prefill (more rows) converts them a panel at a time for BLAS;
both are exercised. GPT-2's embedding is its lm_head, which stays float32
for the lookup: its test model starts with an embedding already on the
bfloat16 grid, so that both readings agree."""

import numpy as np
import pytest
import torch

import calign
from calign.testing.models import tiny_config

PROMPTS = [[1, 2, 3], [4], [6, 7, 8, 9], [3, 3],
           [2, 5, 7, 9, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43]]  # 25 prefill rows


def on_bf16_grid(values):
    return torch.from_numpy(np.ascontiguousarray(values)).to(torch.bfloat16).float().numpy()


def matrix_names(model):
    """The state_dict names of the weights generate reads as bfloat16."""
    return [name for name, t in model.state_dict().items()
            if t.ndim == 2 and not name.endswith(("wte.weight", "wpe.weight",
                                                  "embed_tokens.weight"))]


# Motif: differential attention (two q/k maps per head), PolyNorm, biases, untied
MOTIF = dict(model_type="motif", architectures=["MotifForCausalLM"], hidden_size=48,
             num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=6,
             intermediate_size=40, vocab_size=64, max_position_embeddings=128,
             hidden_act="poly_norm", rope_theta=500000.0, rms_norm_eps=1e-6,
             attn_rms_norm_eps=1e-5, use_bias=True, tie_word_embeddings=False,
             initializer_range=0.5)
CONFIGS = {"gpt2": tiny_config("gpt2", initializer_range=0.5),
           "llama": tiny_config("llama", initializer_range=0.5),
           "qwen2-gated": tiny_config("qwen2", initializer_range=0.5), "motif": MOTIF}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def models(request):
    """(model, the same in float32 with its matrix weights on the bfloat16 grid)."""
    model = calign.Model.from_config(CONFIGS[request.param], seed=2)
    state = model.state_dict()
    embedding = next(n for n in state if n.endswith(("wte.weight", "embed_tokens.weight")))
    if model.config.get("tie_word_embeddings", True):  # the lm_head is the embedding
        state[embedding][...] = on_bf16_grid(state[embedding])
    reference = calign.Model.from_config(model.config)
    reference.params[...] = model.params
    for name in matrix_names(reference):
        reference.state_dict()[name][...] = on_bf16_grid(reference.state_dict()[name])
    return model, reference


def test_greedy_decoding_reads_the_rounded_weights(models):
    model, reference = models
    tokens, logps = model.generate(PROMPTS, max_new_tokens=10, weight_dtype="bfloat16",
                                   return_logprobs=True)
    expected, expected_logps = reference.generate(PROMPTS, max_new_tokens=10,
                                                  return_logprobs=True)
    assert tokens == expected
    for a, b in zip(logps, expected_logps, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)
    # and not the float32 weights: the rounding changes the log-probs
    plain = model.generate(PROMPTS, max_new_tokens=10, return_logprobs=True)[1]
    assert max(np.abs(a - b).max() for a, b in zip(plain, logps)) > 1e-4


def test_sampling_with_rounded_weights_is_seeded_and_thread_independent(models):
    model, reference = models
    kw = dict(max_new_tokens=8, do_sample=True, num_return_sequences=3, seed=5)
    sampled = model.generate(PROMPTS, weight_dtype="bfloat16", **kw)
    assert sampled == reference.generate(PROMPTS, **kw)
    previous = calign.get_num_threads()
    try:
        calign.set_num_threads(1)
        assert model.generate(PROMPTS, weight_dtype="bfloat16", **kw) == sampled
    finally:
        calign.set_num_threads(previous)


def test_rounded_weights_match_transformers_greedy(tiny_model):
    """transformers' Llama with its linear and lm_head weights rounded to
    bfloat16 (kept float32) greedily decodes what calign's bfloat16 weights do."""
    transformers = pytest.importorskip("transformers")
    path = tiny_model("llama", initializer_range=0.5, seed=4)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, module in hf.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.to(torch.bfloat16).float())
    model = calign.Model.from_pretrained(path)
    got = model.generate(PROMPTS, max_new_tokens=8, weight_dtype="bfloat16")
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        expected = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                               pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
        assert tokens == expected


def test_adapters_apply_on_top_of_rounded_weights():
    """LoRA adapters stay float32 and add to the bfloat16 base's output."""
    model = calign.Model.from_config(tiny_config("llama", initializer_range=0.5), seed=6)
    model.add_adapter(calign.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), seed=1)
    model.adapters.params[...] = np.random.default_rng(0).normal(
        0, 0.2, model.adapters.params.shape).astype(np.float32)
    reference = calign.Model.from_config(model.config)
    reference.params[...] = model.params
    for name in matrix_names(reference):
        reference.state_dict()[name][...] = on_bf16_grid(reference.state_dict()[name])
    reference.add_adapter(calign.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    reference.adapters.params[...] = model.adapters.params
    assert model.generate(PROMPTS, max_new_tokens=8, weight_dtype="bfloat16") == \
        reference.generate(PROMPTS, max_new_tokens=8)


@pytest.mark.parametrize("bad", ["float16", "bf16", None, 16])
def test_an_unknown_weight_dtype_is_refused(models, bad):
    with pytest.raises(ValueError, match="weight_dtype"):
        models[0].generate(PROMPTS, max_new_tokens=2, weight_dtype=bad)
