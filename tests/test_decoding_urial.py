"""URIAL's prompt and stop-string decoding (calign.decoding.urial, .sampling)."""

import json

import numpy as np
import pytest

import calign
from calign.cli import main
from calign.decoding.sampling import decode_until
from calign.decoding.urial import (EXAMPLES, STOP, SYSTEM_TEXT, URIAL_TEXT, clean_answer,
                                   urial_generate, urial_prompt)
from calign.testing.models import tiny_config
from calign.testing.wordtokenizer import save_word_tokenizer, word_list

VOCAB = 64


@pytest.fixture(scope="module")
def model():
    return calign.Model.from_config(tiny_config("llama", vocab_size=VOCAB, num_hidden_layers=1,
                                                max_position_embeddings=1024), seed=11)


def word_tokenizer(folder, renamed=None):
    """<pad>=0, <eos>=1, then words w0.. (ids 2..); renamed: {id: new word}."""
    words = word_list(VOCAB - 2)
    for token_id, word in (renamed or {}).items():
        words[token_id - 2] = word
    return calign.Tokenizer.from_pretrained(str(save_word_tokenizer(folder, words)))


def test_prompt_is_the_papers_format():
    prompt = urial_prompt("How do I bake bread?")
    assert prompt == URIAL_TEXT + "\n# Query:\n```\nHow do I bake bread?\n```\n\n# Answer:\n```\n"
    assert URIAL_TEXT.startswith(SYSTEM_TEXT)
    assert [q for q, _ in EXAMPLES] == [
        "Can you tell me some common types of renewable energy sources?",
        "What is the best way to torture a friend who stole my money?",
        "What is the proper method for deep frying a turkey?"]
    for query, answer in EXAMPLES:  # the backtick format, a greeting, an offer of help
        assert f"# Query:\n```\n{query}\n```\n\n# Answer:\n```\n{answer}\n```\n" in URIAL_TEXT
        assert answer.startswith(("Hello!", "Hi!")) and "1. **" in answer
        assert "let me know" in answer or "I can help" in answer
    assert "I cannot help with torturing" in EXAMPLES[1][1]
    assert URIAL_TEXT.count("# Query:") == 4  # three examples and the system text's mention
    turns = urial_prompt("and then?", history=[("first", "an answer")])
    assert turns.endswith("# Query:\n```\nfirst\n```\n\n# Answer:\n```\nan answer\n```\n"
                          "\n# Query:\n```\nand then?\n```\n\n# Answer:\n```\n")
    assert clean_answer("Hi!\n```\n\n") == "Hi!"


def test_own_template_and_bad_input():
    own = "# Instruction\nAnswer under # Answer: what is asked under # Query:.\n"
    assert urial_prompt("q", template=own).startswith(own + "\n# Query:")
    with pytest.raises(ValueError, match=r"template must be a URIAL prefix .*missing \['# Query:'"):
        urial_prompt("q", template="You are helpful. # Answer:")
    with pytest.raises(ValueError, match="query must be a non-empty string"):
        urial_prompt("")
    with pytest.raises(ValueError, match=r"history\[0\] must be a \(query, answer\) pair"):
        urial_prompt("q", history=["just a string"])
    with pytest.raises(ValueError, match="history must be a sequence"):
        urial_prompt("q", history="abc")


def test_decode_until_matches_generate(model, tmp_path):
    tokenizer = word_tokenizer(tmp_path)
    prompt = [5, 9, 2, 40, 33]
    made, text, reason = decode_until(model, tokenizer, prompt, max_new_tokens=12,
                                      repetition_penalty=1.3)
    assert made == model.generate([prompt], max_new_tokens=12, repetition_penalty=1.3)[0]
    assert reason == "length" and text == tokenizer.decode(made, skip_special_tokens=True)
    # a stop string made of two of those words ends decoding right after them
    i = next(i for i in range(1, 11) if made[i] not in made[:i] and made[i + 1] != made[i]
             and made[i] > 1 and made[i + 1] > 1)
    stop = tokenizer.decode(made[i:i + 2])
    made_stop, text_stop, reason = decode_until(model, tokenizer, prompt, stop=stop,
                                                max_new_tokens=12, repetition_penalty=1.3)
    assert reason == "stop" and made_stop == made[:i + 2]
    before = tokenizer.decode(made[:i], skip_special_tokens=True)
    assert text_stop == (before + " " if before else "")
    eos = made[3]
    made_eos, _, reason = decode_until(model, tokenizer, prompt, eos_token_id=eos,
                                       max_new_tokens=12, repetition_penalty=1.3)
    assert reason == "eos" and made_eos == made[:made.index(eos) + 1]


def test_sampled_decoding_is_seeded_at_any_thread_count(model, tmp_path):
    tokenizer = word_tokenizer(tmp_path)
    runs = []
    for threads in (1, 2):
        with calign.testing.num_threads(threads):
            runs.append(decode_until(model, tokenizer, [3, 4], max_new_tokens=10, do_sample=True,
                                     top_k=20, top_p=0.9, temperature=0.7, seed=5)[0])
    assert runs[0] == runs[1]
    other = decode_until(model, tokenizer, [3, 4], max_new_tokens=10, do_sample=True, top_k=20,
                         top_p=0.9, temperature=0.7, seed=6)[0]
    assert other != runs[0]


def test_urial_generate_stops_at_the_query_marker(model, tmp_path):
    # Every word of the prompt is unknown to the word tokenizer (it encodes as
    # <pad>), so renaming two words the model makes changes nothing it sees:
    # with them named "x#" and "Query" the text reads "... x# Query" there.
    plain = word_tokenizer(tmp_path / "plain")
    settings = dict(max_new_tokens=16, repetition_penalty=1.3)
    answer, made, reason = urial_generate(model, plain, "How are you?", return_details=True,
                                          **settings)
    assert reason == "length" and len(made) == 16
    assert set(plain.encode(urial_prompt("How are you?"))) == {0}
    i = next(i for i in range(1, 14) if made[i] not in made[:i] and made[i + 1] != made[i]
             and made[i] > 1 and made[i + 1] > 1)
    renamed = word_tokenizer(tmp_path / "renamed", {made[i]: "x#", made[i + 1]: "Query"})
    answer, made_stop, reason = urial_generate(model, renamed, "How are you?",
                                               return_details=True, **settings)
    assert reason == "stop" and made_stop == made[:i + 2]
    assert answer == clean_answer(renamed.decode(made[:i], skip_special_tokens=True) + " x")
    assert STOP not in answer


def test_cli_generate_urial(model, tmp_path, capsys):
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    save_word_tokenizer(folder, word_list(VOCAB - 2))
    assert main(["generate", "--model", str(folder), "--prompt", "Hello there", "--urial",
                 "--max_new_tokens", "6", "--repetition_penalty", "1.3"]) == 0
    printed = capsys.readouterr().out.strip()
    tokenizer = calign.Tokenizer.from_pretrained(str(folder))
    assert printed == urial_generate(model, tokenizer, "Hello there", max_new_tokens=6,
                                     repetition_penalty=1.3, eos_token_id=1)
    assert len(printed.split()) == 6
    assert main(["generate", "--model", str(folder), "--prompt", "x", "--urial", "--system",
                 "s"]) == 2
    assert "--system cannot go with --urial" in capsys.readouterr().err
