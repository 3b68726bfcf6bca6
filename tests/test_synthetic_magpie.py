"""Magpie (calign.synthetic.magpie): the pre-query template cut from real
chat templates, instruction sampling against Model.generate, the filters,
preference pairs, multi-turn, `calign synthesize magpie`, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

import calign
from calign.synthetic import magpie, toy

LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
          "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = "
          "bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt "
          "%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt "
          "%}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    model, tokenizer = toy.build(str(folder), seed=2, initializer_range=0.3)
    return model, tokenizer, folder


def test_pre_query_templates_of_real_chat_templates(tiny_tokenizer):
    """The strings of magpie-align's configs/model_configs.json."""
    llama = calign.Tokenizer.from_pretrained(str(tiny_tokenizer(
        chat_template=LLAMA3, bos_token="<|begin_of_text|>")))
    assert magpie.pre_query_template(llama) == \
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assert magpie.pre_query_template(llama, system="Be brief.") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n")
    chatml = calign.Tokenizer.from_pretrained(str(tiny_tokenizer(chat_template=CHATML)))
    assert magpie.pre_query_template(chatml) == "<|im_start|>user\n"
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert magpie.pre_query_template(chatml, history=history) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\n"


def test_toy_template_and_stops(world):
    model, tokenizer, _ = world
    assert magpie.pre_query_template(tokenizer) == "U:"
    assert magpie.pre_query_template(tokenizer, system="12") == "S:12<eos>U:"
    assert magpie.end_of_turn_ids(tokenizer, model) == [tokenizer.eos_token_id]

    class Lines:
        def decode(self, ids):
            return ["a", "\n", "b\n\n", "c"][ids[0]]

    assert magpie.newline_token_ids(Lines(), 4) == [1, 2]


def test_instructions_are_the_samples_of_the_pre_query_template(world):
    model, tokenizer, _ = world
    texts = magpie.sample_instructions(model, tokenizer, 7, max_new_tokens=6, batch_size=4,
                                       seed=5)
    prefix = tokenizer.encode("U:", add_special_tokens=False)
    settings = dict(max_new_tokens=6, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                    eos_token_id=[tokenizer.eos_token_id])
    direct = (model.generate(prefix, num_return_sequences=4, seed=5, **settings) +
              model.generate(prefix, num_return_sequences=3, seed=6, **settings))
    assert texts == [tokenizer.decode(o, skip_special_tokens=True).strip() for o in direct]
    assert len(set(texts)) > 1


def test_magpie_records_summary_and_turns(world):
    model, tokenizer, _ = world
    records, summary = magpie.magpie(model, tokenizer, 12, turns=2, max_instruction_tokens=6,
                                     max_response_tokens=4, batch_size=5, seed=1,
                                     dedup_threshold=None, drop_colon_endings=False)
    assert summary["sampled"] == 12
    assert summary["kept"] + sum(summary["dropped"].values()) == 12 == \
        summary["kept"] + summary["dropped"]["short_instruction"] + \
        summary["dropped"]["short_response"]
    assert summary["kept"] == len(records) >= 1
    for r in records:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant", "user", "assistant"]
        # the first answer is the greedy answer to the first instruction
        ids = tokenizer.apply_chat_template(r["messages"][:1], add_generation_prompt=True,
                                            tokenize=True)
        out = model.generate([ids], max_new_tokens=4, eos_token_id=tokenizer.eos_token_id)
        assert r["messages"][1]["content"] == \
            tokenizer.decode(out[0], skip_special_tokens=True).strip()


def conversation(instruction, response):
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]


def test_filters():
    conversations = [conversation("write a poem about the sea", "waves"),
                     conversation("", "x"),
                     conversation("list these:", "ok"),
                     conversation("write a poem about the sea please", "tides"),  # near duplicate
                     conversation("a very long instruction indeed, really, truly long", "y"),
                     conversation("tell me", ""),
                     conversation("say it", "go go go go go go go"),
                     conversation("another question entirely", "fine answer here")]
    kept, dropped = magpie.filter_conversations(
        conversations, max_instruction_chars=40, max_repetition=0.5, dedup_threshold=0.5)
    assert [c[0]["content"] for c in kept] == ["write a poem about the sea",
                                               "another question entirely"]
    assert dropped == {"short_instruction": 1, "long_instruction": 1, "colon_ending": 1,
                       "short_response": 1, "long_response": 0, "repetitive_response": 1,
                       "duplicate": 1}
    kept, dropped = magpie.filter_conversations(conversations, dedup_threshold=None,
                                                drop_colon_endings=False)
    assert len(kept) == 6 and sum(dropped.values()) == 2
    assert magpie.repetition("a b c a b c", 3) == pytest.approx(0.25)
    assert magpie.word_ngrams("A b", 3) == {("a", "b")}


def test_preference_pairs_best_vs_worst(world):
    model, tokenizer, folder = world
    instructions = ["1+2=", "3+4=", "5+"]

    def count_digits(instruction, response):
        return float(sum(c.isdigit() for c in response))

    records, summary = magpie.preference_pairs(model, tokenizer, instructions, count_digits,
                                               k=4, max_new_tokens=5, seed=3)
    assert summary["pairs"] + summary["ties"] == 3 and summary["pairs"] == len(records) >= 1
    for i, text in enumerate(instructions):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                               add_generation_prompt=True, tokenize=True)
        samples = model.generate(prompt, max_new_tokens=5, do_sample=True, temperature=0.8,
                                 top_p=1.0, top_k=0, eos_token_id=[tokenizer.eos_token_id],
                                 num_return_sequences=4, seed=3 + i)
        answers = [tokenizer.decode(s, skip_special_tokens=True).strip() for s in samples]
        scores = [count_digits(text, a) for a in answers]
        found = [r for r in records if r["prompt"][0]["content"] == text]
        if max(scores) == min(scores):
            assert not found
            continue
        assert found[0]["chosen"][0]["content"] == answers[int(np.argmax(scores))]
        assert found[0]["rejected"][0]["content"] == answers[int(np.argmin(scores))]
        assert found[0]["score_chosen"] == max(scores)
    reward_model = calign.RewardModel.from_causal_lm(str(folder), seed=1)
    records, summary = magpie.preference_pairs(model, tokenizer, instructions, reward_model,
                                               k=3, max_new_tokens=4, seed=3)
    assert summary["pairs"] == 3  # real-valued rewards do not tie
    assert all(r["score_chosen"] > r["score_rejected"] for r in records)


def test_bad_input(world, tiny_tokenizer):
    model, tokenizer, _ = world
    plain = calign.Tokenizer.from_pretrained(str(tiny_tokenizer()))
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        magpie.pre_query_template(plain)
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        magpie.magpie(model, plain, 3)
    with pytest.raises(ValueError, match="n must be"):
        magpie.magpie(model, tokenizer, 0)
    with pytest.raises(ValueError, match="dedup_threshold"):
        magpie.magpie(model, tokenizer, 3, dedup_threshold=2.0)
    with pytest.raises(ValueError, match="instructions is empty"):
        magpie.preference_pairs(model, tokenizer, [], lambda i, r: 0.0)
    with pytest.raises(ValueError, match="k must be"):
        magpie.preference_pairs(model, tokenizer, ["1+2="], lambda i, r: 0.0, k=1)
    with pytest.raises(TypeError, match="scorer"):
        magpie.preference_pairs(model, tokenizer, ["1+2="], "not a scorer")
    with pytest.raises(ValueError, match="scorer returned"):
        magpie.preference_pairs(model, tokenizer, ["1+2="], lambda i, r: float("nan"),
                                max_new_tokens=2)


def run(*args):
    return subprocess.run([sys.executable, "-m", "calign", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_synthesize_magpie(world, tmp_path, tiny_model):
    _, _, folder = world
    out = run("synthesize", "magpie", "--model", folder, "--n", 9, "--out", tmp_path / "d.jsonl",
              "--max_instruction_tokens", 6, "--max_response_tokens", 4, "--batch_size", 4)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in open(tmp_path / "d.jsonl")]
    assert "sampled 9 instructions" in out.stderr and f"wrote {len(records)} records" in \
        out.stderr and "instructions: 100%" in out.stderr
    assert all(r["messages"][0]["role"] == "user" for r in records)
    bare = tiny_model("llama", tokenizer=True, hidden_size=24, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, head_dim=None,
                      intermediate_size=32)
    out = run("synthesize", "magpie", "--model", bare, "--out", tmp_path / "x.jsonl")
    assert out.returncode == 2 and "has no chat template" in out.stderr
    assert not (tmp_path / "x.jsonl").exists()
