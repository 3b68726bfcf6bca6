"""Model.generate(return_logprobs=True): each drawn token's log-probability
under log_softmax(logits / temperature) over the whole vocabulary (before
top-k, top-p and the repetition penalty), returned by the sampler itself, as
online RL needs the sampling policy's log-probs. Checked against transformers'
logits of the prompt + completion; asking for them changes no draw."""

import numpy as np
import pytest
import torch
import transformers

import calign

PROMPTS = [[5, 9, 2, 7], [3, 1]]


def reference_logprobs(path, prompt, completion, temperature):
    """log_softmax(logits / temperature) of each completion token, by transformers."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].double() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    rows = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return logp[rows, torch.tensor(completion)].numpy()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("settings", [
    dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.9),
    dict(do_sample=True, temperature=1.3, repetition_penalty=1.5),
    dict(do_sample=False, temperature=1.0),
], ids=["filters", "repetition_penalty", "greedy"])
def test_logprobs_are_the_models_at_the_temperature(tiny_model, family, settings):
    path = tiny_model(family)
    model = calign.Model.from_pretrained(path)
    samples = 3 if settings["do_sample"] else 1
    common = dict(max_new_tokens=6, num_return_sequences=samples, seed=11, eos_token_id=[4],
                  **settings)
    sequences, logprobs = model.generate(PROMPTS, return_logprobs=True, **common)
    assert sequences == model.generate(PROMPTS, **common)  # the same draws without them
    assert [len(s) for s in sequences] == [len(lp) for lp in logprobs]
    for i, (completion, got) in enumerate(zip(sequences, logprobs, strict=True)):
        assert got.dtype == np.float32 and np.all(got <= 0)
        expected = reference_logprobs(path, PROMPTS[i // samples], completion,
                                      settings["temperature"])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_logprobs_with_an_adapter_are_the_adapted_models(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("qwen2"))
    model.add_adapter(calign.LoraConfig(r=4, target_modules="all-linear"))
    model.train_params[:] += 0.05  # B no longer zero: the adapters change the logits
    sequences, logprobs = model.generate(PROMPTS, max_new_tokens=5, do_sample=True,
                                         temperature=0.9, seed=3, return_logprobs=True)
    for i, (completion, got) in enumerate(zip(sequences, logprobs, strict=True)):
        ids = np.array([PROMPTS[i] + completion])
        labels = ids.copy()
        labels[0, :len(PROMPTS[i])] = -100
        expected = model.token_logprobs(ids, labels, temperature=0.9)[0, len(PROMPTS[i]) - 1:]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        with model.disable_adapter():
            base = model.token_logprobs(ids, labels, temperature=0.9)[0, len(PROMPTS[i]) - 1:]
        assert np.abs(base - expected).max() > 1e-3  # the adapters did change them


def test_bad_return_logprobs_and_temperature(tiny_model):
    model = calign.Model.from_pretrained(tiny_model("llama"))
    with pytest.raises(ValueError, match="return_logprobs"):
        model.generate(PROMPTS, max_new_tokens=2, return_logprobs="yes")
    # greedy needs no temperature, its log-probs do: an overflowing one is named
    with pytest.raises(ValueError, match="temperature") as error:
        model.generate(PROMPTS, max_new_tokens=2, do_sample=False, temperature=1e-38,
                       return_logprobs=True)
    assert "do_sample=False" not in str(error.value)
    assert model.generate(PROMPTS, max_new_tokens=2, do_sample=False, temperature=1e-38)
