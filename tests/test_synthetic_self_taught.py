"""Self-Taught Evaluators (calign.synthetic.self_taught) on the toy world: a
toy chat model answers sums and writes well-formed verdicts (at chance);
the pairs, the kept judgements and one iteration are checked."""

import numpy as np
import pytest

import calign
from calign.synthetic import self_taught as st
from calign.synthetic import toy

TEMPLATE = "{instruction}|{response_a}|{response_b}"


def alter(instruction):
    """a+b= -> a+(b+1)=: a similar instruction whose answer is wrong for the original."""
    a, b = instruction[:-1].split("+")
    return f"{a}+{int(b) + 1}="


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A toy chat model after a short SFT on judge prompts with random
    verdicts (its verdicts parse but know nothing), and hand-made pairs
    (the right sum vs the altered instruction's sum)."""
    folder = tmp_path_factory.mktemp("toy")
    model, tokenizer = toy.build(str(folder), seed=0)
    rng = np.random.default_rng(0)
    records = []
    for _ in range(300):
        a, b = (int(x) for x in rng.integers(0, 10, 2))
        x, y = rng.integers(0, 19, 2)
        records.append({"messages": [
            {"role": "user", "content": TEMPLATE.format(instruction=f"{a}+{b}=", response_a=x,
                                                        response_b=y)},
            {"role": "assistant", "content": "[[A]]" if rng.random() < 0.5 else "[[B]]"}]})
    trainer = calign.SFTTrainer(model, args=calign.SFTConfig(
        output_dir=str(folder / "sft"), max_steps=40, learning_rate=3e-3,
        per_device_train_batch_size=16, save_steps=0, disable_tqdm=True, logging_steps=40),
        train_dataset=records, processing_class=tokenizer)
    trainer.train()
    pairs = [{"instruction": f"{a}+{b}=", "altered_instruction": alter(f"{a}+{b}="),
              "chosen": str(a + b), "rejected": str(a + b + 1)}
             for a in range(6) for b in range(0, 8, 2)]
    return trainer.model, tokenizer, pairs


def test_parse_verdict():
    assert st.parse_verdict("because ... [[A]]") == "A"
    assert st.parse_verdict("[[A]] no, [[B]]") == "B"
    assert st.parse_verdict("[[C]] A") is None


def test_response_pairs(tmp_path):
    """The pairs' answers are the model's greedy answers to the instruction
    and to the altered one; equal answers are dropped (a random model with
    large weights, whose answers vary)."""
    model, tokenizer = toy.build(str(tmp_path), seed=1, initializer_range=0.6)
    instructions = [f"{a}+{b}=" for a in range(5) for b in range(4)]
    pairs, summary = st.response_pairs(model, tokenizer, instructions, alter, max_new_tokens=3)
    assert summary["pairs"] + summary["same_answer"] == len(instructions)
    assert summary["pairs"] >= 1 and summary["unaltered"] == 0
    for p in pairs:
        for text, answer in ((p["instruction"], p["chosen"]),
                             (p["altered_instruction"], p["rejected"])):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=True)
            out = model.generate([ids], max_new_tokens=3, eos_token_id=tokenizer.eos_token_id)
            assert tokenizer.decode(out[0], skip_special_tokens=True).strip() == answer
        assert p["altered_instruction"] == alter(p["instruction"])
        assert p["chosen"] != p["rejected"]


def test_response_pairs_with_the_model_altering(tmp_path):
    """alter=None: the model writes the altered instruction with ALTER_TEMPLATE
    (raw text here); empty or unchanged alterations are counted, not paired."""
    model, tokenizer = toy.build(str(tmp_path), seed=1, initializer_range=0.6,
                                 max_position_embeddings=512)
    instructions = ["1+2=", "3+4=", "5+6="]
    pairs, summary = st.response_pairs(model, tokenizer, instructions, chat=False,
                                       max_new_tokens=4, seed=2)
    assert summary["pairs"] + summary["same_answer"] + summary["unaltered"] == 3
    prompts = [tokenizer.encode(st.ALTER_TEMPLATE.format(instruction=t)) for t in instructions]
    outputs = model.generate(prompts, max_new_tokens=4, do_sample=True, seed=2,
                             eos_token_id=tokenizer.eos_token_id)
    altered = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]
    for p in pairs:
        assert p["altered_instruction"] == altered[instructions.index(p["instruction"])]


@pytest.mark.experiment
def test_correct_judgements_and_one_iteration(world, tmp_path, record_metric):
    model, tokenizer, pairs = world
    records, summary = st.correct_judgements(model, tokenizer, pairs, judge_template=TEMPLATE,
                                             samples=6, max_new_tokens=6, seed=1)
    assert summary["correct"] + summary["wrong"] + summary["unparsable"] == \
        summary["judgements"] == 6 * len(pairs)
    assert summary["pairs_with_a_correct_judgement"] == len(records) >= 1
    assert summary["correct"] >= len(records)
    by_instruction = {p["instruction"]: p for p in pairs}
    for r in records:
        text = r["prompt"][0]["content"]
        instruction, first, second = text.split("|")
        p = by_instruction[instruction]
        better, worse = (first, second) if r["better"] == "A" else (second, first)
        assert (better, worse) == (p["chosen"], p["rejected"])
        assert st.parse_verdict(r["completion"][0]["content"]) == r["better"]
    assert {r["better"] for r in records} == {"A", "B"}  # both positions occur

    accuracy = lambda m: {"accuracy": st.judge_accuracy(m, tokenizer, pairs,  # noqa: E731
                                                        judge_template=TEMPLATE,
                                                        max_new_tokens=6)}
    before = accuracy(model)["accuracy"]
    models, summaries = st.iterate(model, tokenizer, pairs, calign.SFTConfig(
        output_dir=str(tmp_path), max_steps=20, learning_rate=1e-3,
        per_device_train_batch_size=8, save_steps=0, disable_tqdm=True), iterations=1,
        evaluate=accuracy, judge_template=TEMPLATE, samples=6, max_new_tokens=6)
    assert len(models) == 2 and summaries[0]["steps"] == 20
    assert not np.array_equal(models[1].params, models[0].params)
    assert np.array_equal(models[0].params, model.params)  # the starting model is untouched
    record_metric("judge_accuracy_before", before)
    record_metric("judge_accuracy_after", summaries[0]["accuracy"])


def test_bad_input(world):
    model, tokenizer, _ = world
    with pytest.raises(ValueError, match="instructions is empty"):
        st.response_pairs(model, tokenizer, [], alter)
    with pytest.raises(TypeError, match="alter"):
        st.response_pairs(model, tokenizer, ["1+2="], alter="x")
    with pytest.raises(ValueError, match="pairs"):
        st.correct_judgements(model, tokenizer, [])
    with pytest.raises(ValueError, match="judge_template"):
        st.correct_judgements(model, tokenizer, [{"instruction": "1+2=", "chosen": "3",
                                                  "rejected": "4"}], judge_template="{x}")
    with pytest.raises(ValueError, match="nested placeholder"):
        st.judge_accuracy(model, tokenizer, [{"instruction": "1+2=", "chosen": "3",
                                              "rejected": "4"}],
                          judge_template="{instruction:{x}} {response_a} {response_b}")
    with pytest.raises(TypeError, match="args"):
        st.iterate(model, tokenizer, [{"instruction": "1+2=", "chosen": "3",
                                       "rejected": "4"}], args=None)
