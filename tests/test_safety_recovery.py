"""calign.safety.recovery_examples: the paper's distribution of k (Qi et al.
2024, Eq. 2; k = 0 with probability p_zero, else uniform in
1..min(max_prefix_tokens, |h|)), the cut at a token boundary, the mixture with
utility records at the share alpha, the seed, what SFT trains on (the refusal
only, never the forced harmful prefix) and the errors on bad input."""

import collections

import numpy as np
import pytest

import calign
from calign.demo import forbidden
from calign.safety import recovery_examples


@pytest.fixture(scope="module")
def tokenizer():
    return forbidden.tokenizer()


@pytest.fixture(scope="module")
def world():
    return forbidden.make_world(seed=0, n_pretraining=800, n_aligned=800, n_triplets=800,
                                n_utility=300, n_eval=10)


def triplets(world):
    return world.harmful_prompts, world.harmful_responses, world.refusals


def prefix_lengths(records, world):
    """k of each safety record: one character is one token in this world."""
    prompts = set(world.harmful_prompts)
    ks = []
    for record in records:
        prompt = record["prompt"][:record["prompt"].index("=") + 1]
        if prompt in prompts:
            ks.append(len(record["prompt"]) - len(prompt))
    return np.array(ks)


def test_records_are_prompt_plus_harmful_prefix_then_refusal(world, tokenizer):
    records = recovery_examples(*triplets(world), tokenizer=tokenizer, seed=3)
    assert len(records) == len(world.harmful_prompts)
    harmful = dict(zip(world.harmful_prompts, world.harmful_responses))
    seen = set()
    for record in records:
        assert set(record) == {"prompt", "completion"}
        assert record["completion"] == forbidden.REFUSAL
        prompt, forced = record["prompt"].split("=")
        assert harmful[prompt + "="].startswith(forced)
        seen.add(prompt + "=")
    assert seen == set(world.harmful_prompts)  # one record per triplet, shuffled


@pytest.mark.parametrize("p_zero", [0.5, 0.2])
def test_k_is_zero_with_probability_p_zero_else_uniform(world, tokenizer, p_zero):
    records = recovery_examples(*triplets(world), tokenizer=tokenizer, p_zero=p_zero,
                                samples_per_triplet=3, seed=0)
    ks = prefix_lengths(records, world)
    n = len(ks)
    assert n == 3 * len(world.harmful_prompts)
    zeros = np.mean(ks == 0)
    assert abs(zeros - p_zero) < 4 * np.sqrt(p_zero * (1 - p_zero) / n)  # 4 standard errors
    # max_prefix_tokens (100) is above the responses' 16 tokens: k in 1..16, each equally likely
    nonzero = ks[ks > 0]
    counts = collections.Counter(nonzero.tolist())
    assert sorted(counts) == list(range(1, forbidden.HARMFUL_LENGTH + 1))
    expected = len(nonzero) / forbidden.HARMFUL_LENGTH
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 45  # 15 degrees of freedom: P(chi2 > 45) < 1e-4


def test_max_prefix_tokens_bounds_k(world, tokenizer):
    records = recovery_examples(*triplets(world), tokenizer=tokenizer, max_prefix_tokens=3,
                                p_zero=0.0, seed=1)
    ks = prefix_lengths(records, world)
    assert sorted(set(ks.tolist())) == [1, 2, 3]
    records = recovery_examples(*triplets(world), tokenizer=tokenizer, p_zero=1.0, seed=1)
    assert set(prefix_lengths(records, world).tolist()) == {0}


def test_the_seed_fixes_the_records(world, tokenizer):
    def build(seed):
        return recovery_examples(*(values[:100] for values in triplets(world)), world.utility,
                                 tokenizer=tokenizer, seed=seed)

    assert build(7) == build(7)
    assert build(7) != build(8)
    assert sorted(map(str, build(7))) != sorted(map(str, build(8)))  # other k, not only order


def test_utility_share_is_alpha(world, tokenizer):
    n = 100
    prompts, responses, refusals = (values[:n] for values in triplets(world))
    utility_prompts = {r["prompt"] for r in world.utility}
    for alpha, n_utility in ((0.2, 400), (0.5, 100), (0.3, 233), (1.0, 0)):
        records = recovery_examples(prompts, responses, refusals, world.utility,
                                    tokenizer=tokenizer, alpha=alpha, seed=0)
        used = [r for r in records if r["prompt"] in utility_prompts]
        assert len(records) == n + n_utility and len(used) == n_utility, alpha
        assert all(r in world.utility for r in used)
    # 400 utility records drawn from 300: each once before any is used again
    records = recovery_examples(prompts, responses, refusals, world.utility, tokenizer=tokenizer,
                                seed=0)
    uses = collections.Counter(r["prompt"] for r in records if r["prompt"] in utility_prompts)
    assert len(uses) == len(world.utility) and set(uses.values()) == {1, 2}
    # shuffled together: the safety records are spread over the list, not in a block
    positions = [i for i, r in enumerate(records) if r["prompt"] not in utility_prompts]
    assert positions[0] < 50 and positions[-1] > len(records) - 50


def test_sft_trains_on_the_refusal_only(world, tokenizer, tmp_path):
    """The forced harmful tokens sit in the prompt: SFTTrainer's examples
    train on the refusal and EOS alone; a utility record's answer and EOS."""
    records = recovery_examples(*(values[:40] for values in triplets(world)), world.utility,
                                tokenizer=tokenizer, seed=0)
    trainer = calign.SFTTrainer(forbidden.random_model(0), args=calign.SFTConfig(
        output_dir=str(tmp_path), max_steps=1, save_steps=0, disable_tqdm=True),
        train_dataset=records, processing_class=tokenizer)
    eos = tokenizer.eos_token_id
    for example in trainer.train_examples:
        record = records[example.index]
        assert example.prompt_ids == tokenizer.encode(record["prompt"])
        assert example.completions[0] == tokenizer.encode(record["completion"]) + [eos]
    trained = sum(len(e.completions[0]) for e in trainer.train_examples)
    assert trained == sum(len(r["completion"]) + 1 for r in records)
    assert trained == 40 * (len(forbidden.REFUSAL) + 1) + sum(
        len(r["completion"]) + 1 for r in records if "+" in r["prompt"])


def test_a_word_tokenizer_cuts_at_words(tiny_tokenizer):
    """Tokens decoded in context keep the space before a word; the record's
    prompt + completion tokenizes to the prompt's tokens, the first k of the
    response's, then the refusal's."""
    tokenizer = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    records = recovery_examples(["w1 w2"], [" w3 w4 w5 w6"], [" w9"], tokenizer=tokenizer,
                                p_zero=0.0, samples_per_triplet=40, seed=0)
    prompts = {r["prompt"] for r in records}
    assert prompts == {"w1 w2 w3", "w1 w2 w3 w4", "w1 w2 w3 w4 w5", "w1 w2 w3 w4 w5 w6"}
    for record in records:
        assert tokenizer.encode(record["prompt"] + record["completion"]) == \
            tokenizer.encode(record["prompt"]) + tokenizer.encode(record["completion"])


def test_a_response_the_tokenizer_cannot_cut_is_refused(tiny_tokenizer):
    tokenizer = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    with pytest.raises(ValueError, match=r"harmful_responses\[1\] must be a text whose first"):
        recovery_examples(["w1", "w1"], [" w3 w4", "  w3  w4"], [" w9", " w9"],
                          tokenizer=tokenizer, p_zero=0.0, seed=0)


@pytest.mark.parametrize("change, name", [
    (dict(harmful_prompts="w1"), "harmful_prompts"),
    (dict(harmful_prompts=[]), "harmful_prompts"),
    (dict(harmful_prompts=["w1", 3]), r"harmful_prompts\[1\]"),
    (dict(harmful_prompts=["w1", ""]), r"harmful_prompts\[1\]"),
    (dict(harmful_responses=[" w2"]), "harmful_responses"),
    (dict(refusals=[" w9", " w9", " w9"]), "refusals"),
    (dict(refusals=[" w9", None]), r"refusals\[1\]"),
    (dict(utility=[]), "utility"),
    (dict(utility={"prompt": "w1", "completion": " w2"}), "utility"),
    (dict(utility=["w1 w2"]), r"utility\[0\]"),
    (dict(utility=[{"prompt": "w1"}]), r"utility\[0\]\['completion'\]"),
    (dict(tokenizer=None), "tokenizer"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(max_prefix_tokens=0), "max_prefix_tokens"),
    (dict(max_prefix_tokens=2.0), "max_prefix_tokens"),
    (dict(p_zero=-0.1), "p_zero"),
    (dict(p_zero=True), "p_zero"),
    (dict(samples_per_triplet=0), "samples_per_triplet"),
    (dict(seed="0"), "seed"),
    (dict(harmful_responses=[" w2", " "]), r"harmful_responses\[1\]"),  # adds no token
])
def test_bad_input_names_the_argument(tiny_tokenizer, change, name):
    tokenizer = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    arguments = dict(harmful_prompts=["w1", "w1"], harmful_responses=[" w2", " w3"],
                     refusals=[" w9", " w9"], utility=[{"prompt": "w1", "completion": " w2"}],
                     tokenizer=tokenizer)
    arguments.update(change)
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        recovery_examples(arguments.pop("harmful_prompts"), arguments.pop("harmful_responses"),
                          arguments.pop("refusals"), arguments.pop("utility"), **arguments)
