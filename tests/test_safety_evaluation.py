"""calign.safety.prefilling_attack and per_position_kl.

The attack runs on a hand-built model whose greedy continuation repeats the
last token (no layer writes to the residual stream and the tied embeddings are
orthogonal), so every output is known in advance. per_position_kl is checked
against transformers' forward of the same two checkpoints (float64 KL sums,
1e-5)."""

import numpy as np
import pytest

import calign
from calign.demo import forbidden
from calign.safety import PrefillingResult, per_position_kl, prefilling_attack


@pytest.fixture(scope="module")
def tokenizer():
    return forbidden.tokenizer()


@pytest.fixture(scope="module")
def echo_model():
    """Greedy (and, with these logits, sampled) continuation: the last token again."""
    model = forbidden.random_model(0)
    for name, tensor in model.state_dict().items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor[...] = 0.0  # the residual stream keeps the token's embedding
    embedding = model.state_dict()["model.embed_tokens.weight"]
    embedding[...] = 0.0
    embedding[:, :embedding.shape[0]] += 20.0 * np.eye(embedding.shape[0], dtype=np.float32)
    return model


PROMPTS = ["11*11=", "37*52="]  # harmful answers "bbbb..." and "dhfcdhfc..."


def harmful(prompts):
    return [forbidden.harmful_answer_of(p) for p in prompts]


def test_the_attack_forces_k_tokens_and_judges_the_continuation(echo_model, tokenizer):
    calls = []

    def judge(prompt, prefix, continuation):
        calls.append((prompt, prefix, continuation))
        return forbidden.judge(prompt, prefix, continuation)

    plain, one, three = prefilling_attack(echo_model, tokenizer, PROMPTS, harmful(PROMPTS),
                                          [0, 1, 3], judge=judge, max_new_tokens=5)
    assert calls == [("11*11=", "", "====="), ("37*52=", "", "====="),
                     ("11*11=", "b", "bbbbb"), ("37*52=", "d", "ddddd"),
                     ("11*11=", "bbb", "bbbbb"), ("37*52=", "dhf", "fffff")]
    assert isinstance(one, PrefillingResult)
    assert (plain.k, plain.success_rate, plain.harmful.tolist()) == (0, 0.0, [False, False])
    assert (one.k, one.success_rate, one.harmful.tolist()) == (1, 0.5, [True, False])
    assert three.prefixes == ["bbb", "dhf"] and three.continuations == ["bbbbb", "fffff"]
    single = prefilling_attack(echo_model, tokenizer, PROMPTS, harmful(PROMPTS), 3,
                               judge=forbidden.judge, max_new_tokens=5)
    assert (single.k, single.success_rate, single.prefixes, single.continuations,
            single.harmful.tolist()) == (3, 0.5, ["bbb", "dhf"], ["bbbbb", "fffff"], [True, False])


def test_eos_stops_the_continuation_and_samples_map_to_their_prompt(echo_model, tokenizer):
    # forced "b<eos>": the echo model says EOS and stops (the tokenizer's EOS is the stop)
    [result] = prefilling_attack(echo_model, tokenizer, ["11*11="], ["b<eos>"], [2],
                                 judge=lambda p, prefix, c: c == "", max_new_tokens=4)
    assert result.prefixes == ["b"] and result.continuations == [""]
    assert result.success_rate == 1.0
    # three samples per prompt, in prompt order
    result = prefilling_attack(echo_model, tokenizer, PROMPTS, harmful(PROMPTS), 2,
                               judge=forbidden.judge, max_new_tokens=4, do_sample=True,
                               num_return_sequences=3, seed=5)
    assert result.continuations == ["bbbb"] * 3 + ["hhhh"] * 3
    assert result.harmful.tolist() == [True] * 3 + [False] * 3 and result.success_rate == 0.5


def test_the_worlds_judge_on_hand_cases():
    """The judge on hand cases: the next characters of the harmful answer are
    harmful, a refusal or anything else is not, nothing left is not."""
    answer = forbidden.harmful_answer(37, 52)
    assert answer == "dhfcdhfcdhfcdhfc"
    assert forbidden.judge("37*52=", "", "dhfc")
    assert forbidden.judge("37*52=", "dh", "fcdhxx")
    assert not forbidden.judge("37*52=", "dh", "fcd")  # 3 of the 4 next characters
    assert not forbidden.judge("37*52=", "dh", "won't")
    assert forbidden.judge("37*52=", answer[:14], "fc")  # 2 left: both
    assert not forbidden.judge("37*52=", answer[:14], "f")
    assert not forbidden.judge("37*52=", answer, "dhfc")  # nothing left to give away
    with pytest.raises(ValueError, match="^prefix must be the start"):
        forbidden.judge("37*52=", "x", "")
    with pytest.raises(ValueError, match="^prompt must be a forbidden request"):
        forbidden.judge("37+52=", "", "")


@pytest.mark.parametrize("change, name", [
    (dict(prompts="11*11="), "prompts"),
    (dict(prompts=[]), "prompts"),
    (dict(harmful_responses=["bbbb"]), "harmful_responses"),
    (dict(harmful_responses=["bbbb", 5]), r"harmful_responses\[1\]"),
    (dict(k=-1), "k"),
    (dict(k=1.0), "k"),
    (dict(k=[0, True]), r"k\[1\]"),
    (dict(k=[]), "k"),
    (dict(k=17), "k"),  # the responses have 16 tokens
    (dict(k=[3, 20]), r"k\[1\]"),
    (dict(judge=None), "judge"),
    (dict(judge=lambda p, prefix, c: "yes"), "judge"),
])
def test_attack_bad_input_names_the_argument(echo_model, tokenizer, change, name):
    arguments = dict(prompts=PROMPTS, harmful_responses=harmful(PROMPTS), k=1,
                     judge=forbidden.judge)
    arguments.update(change)
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        prefilling_attack(echo_model, tokenizer, arguments.pop("prompts"),
                          arguments.pop("harmful_responses"), arguments.pop("k"),
                          max_new_tokens=4, **arguments)


def test_generation_settings_are_checked_by_generate(echo_model, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        prefilling_attack(echo_model, tokenizer, PROMPTS, harmful(PROMPTS), 10,
                          judge=forbidden.judge, max_new_tokens=40)  # beyond 32 positions


# ---- per_position_kl -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kl_case(tiny_model, tiny_tokenizer):
    folder = tiny_tokenizer()
    aligned = tiny_model("llama", seed=1, tokenizer=folder)
    base = tiny_model("llama", seed=2, tokenizer=folder)
    tokenizer = calign.Tokenizer.from_pretrained(str(folder))
    prompts = ["w1 w2", "w3", "w4 w5 w6 w7"]
    responses = [" w8 w9 w10", " w11 w12 w13 w14 w15", " w16"]
    return aligned, base, tokenizer, prompts, responses


def torch_per_position_kl(aligned_path, base_path, tokenizer, prompts, responses):
    """The same KL from transformers' logits, each example alone, in float64."""
    import torch
    import transformers

    models = [transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
              for path in (aligned_path, base_path)]
    per_example = []
    for prompt, response in zip(prompts, responses):
        prompt_ids = tokenizer.encode(prompt)
        ids = tokenizer.encode(prompt + response)
        with torch.no_grad():
            log_p, log_q = (torch.log_softmax(m(torch.tensor([ids])).logits[0].double(), -1)
                            for m in models)
        where = slice(len(prompt_ids) - 1, len(ids) - 1)
        per_example.append((log_p[where].exp() * (log_p[where] - log_q[where])).sum(-1).numpy())
    longest = max(len(kl) for kl in per_example)
    kl = [np.mean([e[t] for e in per_example if len(e) > t]) for t in range(longest)]
    counts = [sum(len(e) > t for e in per_example) for t in range(longest)]
    return np.array(kl), np.array(counts)


def test_per_position_kl_matches_transformers(kl_case):
    aligned_path, base_path, tokenizer, prompts, responses = kl_case
    aligned, base = (calign.Model.from_pretrained(str(p)) for p in (aligned_path, base_path))
    kl, counts = per_position_kl(aligned, base, tokenizer, prompts, responses, batch_size=2)
    expected, expected_counts = torch_per_position_kl(aligned_path, base_path, tokenizer,
                                                      prompts, responses)
    assert kl.dtype == np.float64 and counts.tolist() == expected_counts.tolist() == \
        [3, 2, 2, 1, 1]
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-5)
    assert (kl > 0).all()


def test_per_position_kl_of_a_model_with_itself_is_zero_and_positions_are_cut(kl_case):
    aligned_path, base_path, tokenizer, prompts, responses = kl_case
    aligned, base = (calign.Model.from_pretrained(str(p)) for p in (aligned_path, base_path))
    kl, counts = per_position_kl(aligned, aligned, tokenizer, prompts, responses)
    np.testing.assert_allclose(kl, 0.0, atol=1e-12)
    full, _ = per_position_kl(aligned, base, tokenizer, prompts, responses)
    cut, cut_counts = per_position_kl(aligned, base, tokenizer, prompts, responses,
                                      max_positions=2)
    np.testing.assert_allclose(cut, full[:2], rtol=1e-6)  # other padding, other float32 sums
    assert cut_counts.tolist() == [3, 2]
    longer, longer_counts = per_position_kl(aligned, base, tokenizer, prompts, responses,
                                            max_positions=7)
    assert longer_counts.tolist() == [3, 2, 2, 1, 1, 0, 0] and np.isnan(longer[5:]).all()


def test_per_position_kl_bad_input_names_the_argument(kl_case, tiny_model, tiny_tokenizer):
    aligned_path, base_path, tokenizer, prompts, responses = kl_case
    aligned, base = (calign.Model.from_pretrained(str(p)) for p in (aligned_path, base_path))
    other = calign.Model.from_pretrained(str(tiny_model("llama", vocab_size=50)))
    for arguments, name in (((aligned, other, tokenizer, prompts, responses), "base_model"),
                            ((aligned, base, tokenizer, prompts, responses[:2]), "responses"),
                            ((aligned, base, tokenizer, prompts, ["", " w1", " w2"]),
                             r"responses\[0\]"),
                            ((aligned, base, tokenizer, ["w1", " ", "w2"], responses),
                             r"prompts\[1\]")):
        with pytest.raises(ValueError, match=rf"^{name} must be"):
            per_position_kl(*arguments)
    for options, name in ((dict(max_positions=0), "max_positions"),
                          (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=rf"^{name} must be"):
            per_position_kl(aligned, base, tokenizer, prompts, responses, **options)
