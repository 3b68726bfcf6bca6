"""`calign generate` and `calign chat` with a tiny instruct-style checkpoint (a
chat template, a generation_config.json with an eos list), end to end in
subprocesses and, for chat, in a pseudo-terminal; the answers are compared
with transformers' apply_chat_template + generate + decode(skip_special_tokens=True)."""

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time

import pytest
import safetensors.numpy
import torch
import transformers

import calign
from calign import cli

MAX_NEW_TOKENS = 6  # the instruct checkpoint's generation_config.json


def calign_cli(*args):
    return subprocess.run([sys.executable, "-m", "calign", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def user(text):
    return {"role": "user", "content": text}


class Reference:
    """transformers' side: the tokenizer and model of a checkpoint folder (its
    generation_config.json read as transformers reads it)."""

    def __init__(self, path):
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()

    def prompt_ids(self, messages):
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"]

    def new_ids(self, prompt_ids, **settings):
        prompt = torch.tensor([prompt_ids])
        with torch.no_grad():
            out = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
        return out[0, len(prompt_ids):].tolist()

    def answer(self, messages, **settings):
        ids = self.new_ids(self.prompt_ids(messages), **settings)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def shown(self, messages):
        """What --show_prompt prints for the conversation."""
        ids = self.prompt_ids(messages)
        return f"[prompt, {len(ids)} tokens] {self.tokenizer.decode(ids)}"


def write_generation_config(path, **fields):
    (path / "generation_config.json").write_text(json.dumps(fields))


@pytest.fixture(scope="module")
def instruct(tmp_path_factory, tiny_model, tiny_tokenizer):
    """(folder, Reference, stop): a tiny llama with the word tokenizer's chat
    template whose generation_config.json is greedy, MAX_NEW_TOKENS long and
    stops at <eos> (1) or at `stop`, a word the model says early for "w1 w2"."""
    path = tmp_path_factory.mktemp("instruct") / "model"
    shutil.copytree(tiny_model("llama", tokenizer=tiny_tokenizer(chat_template=True)), path)
    without_file = Reference(path)
    free = without_file.new_ids(without_file.prompt_ids([user("w1 w2")]),
                                max_new_tokens=MAX_NEW_TOKENS, eos_token_id=None)
    stop = free[2]
    assert stop != 1 and stop not in free[:2]
    write_generation_config(path, eos_token_id=[1, stop], max_new_tokens=MAX_NEW_TOKENS,
                            do_sample=False, pad_token_id=0)
    return path, Reference(path), stop


@pytest.fixture(scope="module")
def speechless(tmp_path_factory, tiny_model, tiny_tokenizer):
    """A checkpoint that ends its turn at once: its lm_head is zero, so every
    logit is 0 and greedy decoding takes id 0, the tokenizer's <eos> (no pad)."""
    path = tmp_path_factory.mktemp("speechless") / "model"
    shutil.copytree(tiny_model("llama", tokenizer=tiny_tokenizer(chat_template=True,
                                                                 pad_token=None)), path)
    weights = path / "model.safetensors"
    with safetensors.safe_open(str(weights), "np") as f:
        metadata = f.metadata()
    tensors = safetensors.numpy.load_file(str(weights))
    tensors["lm_head.weight"][...] = 0.0
    safetensors.numpy.save_file(tensors, str(weights), metadata=metadata)
    write_generation_config(path, eos_token_id=[0], max_new_tokens=4, do_sample=False)
    return path


# ---- generate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt,system", [("w1 w2", None), ("w7 w8 w9 w3", "w5 w6"),
                                           ("w20", None)])
def test_generate_answers_as_transformers(instruct, prompt, system):
    path, reference, stop = instruct
    messages = ([{"role": "system", "content": system}] if system else []) + [user(prompt)]
    args = ["--system", system] if system else []
    out = calign_cli("generate", "--model", path, "--prompt", prompt, "--show_prompt", *args)
    assert out.returncode == 0, out.stderr
    expected = reference.answer(messages)
    assert expected.strip()
    assert out.stdout == expected + "\n"
    assert out.stderr == reference.shown(messages) + "\n"  # the prompt, and no warning
    if prompt == "w1 w2":  # the second eos of the list stopped it, as it stopped transformers
        ids = reference.new_ids(reference.prompt_ids(messages))
        assert ids[-1] == stop and len(ids) < MAX_NEW_TOKENS


def test_flags_override_generation_config(instruct, tmp_path):
    path, reference, stop = instruct
    sampling = tmp_path / "sampling"
    shutil.copytree(path, sampling)
    write_generation_config(sampling, eos_token_id=[1, stop], max_new_tokens=MAX_NEW_TOKENS,
                            do_sample=True, temperature=0.7, top_k=5)
    messages = [user("w4 w9 w13")]
    out = calign_cli("generate", "--model", sampling, "--prompt", "w4 w9 w13", "--greedy",
                     "--repetition_penalty", "1.5", "--max_new_tokens", "4")
    assert out.returncode == 0, out.stderr
    assert out.stdout == reference.answer(messages, do_sample=False, repetition_penalty=1.5,
                                          max_new_tokens=4) + "\n"
    assert reference.answer(messages, max_new_tokens=4) != reference.answer(
        messages, repetition_penalty=1.5, max_new_tokens=4)  # the penalty changes the answer
    sampled = [calign_cli("generate", "--model", sampling, "--prompt", "w4 w9 w13", "--seed",
                          "3", "--num_return_sequences", "3") for _ in range(2)]
    assert sampled[0].returncode == 0, sampled[0].stderr
    assert sampled[0].stdout == sampled[1].stdout and sampled[0].stdout.count("\n") == 3


def test_weight_dtype_bfloat16_answers_as_the_api(instruct):
    """--weight_dtype bfloat16 gives Model.generate(weight_dtype="bfloat16")'s
    answer, on a prompt whose float32 answer differs (so that the flag shows)."""
    path, reference, _ = instruct
    model = calign.Model.from_pretrained(str(path))

    def answer(prompt, dtype):
        ids = reference.prompt_ids([user(prompt)])
        new = model.generate([ids], do_sample=False, weight_dtype=dtype)[0]
        return reference.tokenizer.decode(new, skip_special_tokens=True)

    prompts = [f"w{i} w{j}" for i in range(2, 30) for j in (3, 11, 19)]
    prompt = next((p for p in prompts if answer(p, "bfloat16") != answer(p, "float32")), None)
    assert prompt is not None, "no prompt tells the weights' rounding apart"
    out = calign_cli("generate", "--model", path, "--prompt", prompt, "--greedy",
                     "--weight_dtype", "bfloat16")
    assert out.returncode == 0, out.stderr
    assert out.stdout == answer(prompt, "bfloat16") + "\n"


def test_no_chat_template_sends_raw_text(instruct):
    path, reference, _ = instruct
    out = calign_cli("generate", "--model", path, "--prompt", "w1 w2", "--no-chat-template",
                     "--show_prompt")
    assert out.returncode == 0, out.stderr
    raw_ids = reference.tokenizer("w1 w2")["input_ids"]
    expected = reference.tokenizer.decode(reference.new_ids(raw_ids), skip_special_tokens=True)
    assert out.stdout == expected + "\n"
    assert out.stderr == "[prompt, 2 tokens] w1 w2\n"
    assert expected != reference.answer([user("w1 w2")])  # the template did matter


def test_without_generation_config_defaults_apply(tiny_model, tiny_tokenizer, tmp_path):
    """A model without eos: with no generation_config.json, greedy and
    DEFAULT_MAX_NEW_TOKENS (256) new tokens, or what the model's positions leave
    after the prompt; with a generation_config.json giving max_length only,
    what max_length leaves after the prompt (as transformers counts it)."""
    words = tiny_tokenizer(chat_template=True, eos_token=None)
    path = tmp_path / "512"
    shutil.copytree(tiny_model("llama", tokenizer=words), path)
    tokenizer = calign.Tokenizer.from_pretrained(str(path))
    prompt_ids = tokenizer.apply_chat_template([user("w2 w3")], add_generation_prompt=True,
                                               tokenize=True)
    assert len(prompt_ids) == 4  # <user> w2 w3 <assistant>
    ids = calign.Model.from_pretrained(str(path)).generate(prompt_ids, max_new_tokens=256)[0]
    assert len(ids) == 256  # (Model.generate is compared with transformers elsewhere)
    out = calign_cli("generate", "--model", path, "--prompt", "w2 w3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == tokenizer.decode(ids, skip_special_tokens=True) + "\n"

    short = tmp_path / "64"
    shutil.copytree(tiny_model("llama", tokenizer=words, max_position_embeddings=64), short)
    reference = Reference(short)
    ids = reference.new_ids(prompt_ids, max_new_tokens=60, do_sample=False)
    assert len(ids) == 60  # no eos stopped it
    out = calign_cli("generate", "--model", short, "--prompt", "w2 w3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == reference.tokenizer.decode(ids, skip_special_tokens=True) + "\n"

    write_generation_config(short, max_length=12)
    reference = Reference(short)
    ids = reference.new_ids(prompt_ids)
    assert len(ids) == 12 - 4
    out = calign_cli("generate", "--model", short, "--prompt", "w2 w3")
    assert out.returncode == 0, out.stderr
    assert out.stdout == reference.tokenizer.decode(ids, skip_special_tokens=True) + "\n"


def test_an_empty_answer_is_warned(speechless):
    reference = Reference(speechless)
    assert reference.new_ids(reference.prompt_ids([user("w1")])) == [0]
    out = calign_cli("generate", "--model", speechless, "--prompt", "w1")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "\n"
    assert out.stderr == ("calign: warning: the answer is empty: the model ended its turn at "
                          "once: its first token, '<eos>' (id 0), ends a sequence\n")
    raw = calign_cli("generate", "--model", speechless, "--prompt", "w1", "--no-chat-template")
    assert raw.returncode == 0 and raw.stdout == "\n"
    assert raw.stderr.count("\n") == 1 and "(the prompt went in as raw text: " \
        "--no-chat-template)" in raw.stderr


@pytest.mark.parametrize("args,message", [
    (["--temperature", "0"], "--temperature must be a finite number > 0, got 0.0"),
    (["--temperature", "nan"], "--temperature must be a finite number > 0"),
    (["--temperature", "warm"], "argument --temperature: invalid float value: 'warm'"),
    (["--top_p", "1.5"], "--top_p must be a finite number in (0, 1], got 1.5"),
    (["--top_k", "-1"], "--top_k must be an integer in [0, 2147483647], got -1"),
    (["--max_new_tokens", "0"], "--max_new_tokens must be an integer in [1, 2147483647]"),
    (["--repetition_penalty", "0"], "--repetition_penalty must be a finite number > 0"),
    (["--do_sample", "--greedy"], "argument --greedy: not allowed with argument --do_sample"),
    (["--num_return_sequences", "2"], "num_return_sequences > 1 needs do_sample=True"),
    (["--max_new_tokens", "600"], "the prompt has 4 tokens; with max_new_tokens 600 it "
                                  "exceeds the model's 512 positions"),
    (["--system", "w1", "--no-chat-template"],
     "--system needs the chat template, which --no-chat-template turns off"),
    (["--chat_template", "tool_use"], "--chat_template must be the name of one of the "
                                       "tokenizer's chat templates, but it has one, unnamed"),
    (["--chat_template", "x", "--no-chat-template"],
     "--chat_template cannot go with --no-chat-template"),
    (["--sampling"], "unexpected arguments --sampling"),
    (["--weight_dtype", "float16"], "argument --weight_dtype: invalid choice: 'float16'"),
])
def test_bad_generate_flags_exit_2_with_one_line(instruct, capsys, args, message):
    """In this process (calign.cli.main) to keep the suite fast; the subprocess
    tests above and below show main's status and stderr are the program's."""
    assert cli.main(["generate", "--model", str(instruct[0]), "--prompt", "w1", *args]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("calign: error: ")
    assert out.err.count("\n") == 1 and message in out.err, out.err


def test_bad_generation_config_and_missing_template_exit_2(instruct, tiny_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(instruct[0], path)
    write_generation_config(path, do_sample=True, temperature=-1.0, max_new_tokens=3)
    out = calign_cli("generate", "--model", path, "--prompt", "w1")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "temperature (from generation_config.json) must be a finite number > 0" in out.stderr
    plain = tiny_model("llama", tokenizer=True)  # a word tokenizer without a chat template
    out = calign_cli("generate", "--model", plain, "--prompt", "w1", "--system", "w2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--system needs the chat template, and the tokenizer of" in out.stderr
    out = calign_cli("chat", "--model", plain)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "has no chat template, which calign chat needs" in out.stderr
    out = calign_cli("chat", "--model", instruct[0], "--top_p", "0")
    assert out.returncode == 2 and "--top_p must be a finite number in (0, 1]" in out.stderr


# ---- chat in a pseudo-terminal ----------------------------------------------------------------

ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[=>])")
# chat's prompt at the start of a line (after any escape sequence readline writes)
PROMPT = re.compile(r"\n(?:\x1b(?:\[[0-9;?]*[A-Za-z]|[=>]))*user> ")


class Terminal:
    """A program on the child side of a pseudo-terminal, as a person at a
    terminal runs it: type() sends a line, read_until() waits for text."""

    def __init__(self, args):
        self.master, child = pty.openpty()
        self.process = subprocess.Popen(args, stdin=child, stdout=child, stderr=child,
                                        close_fds=True)
        os.close(child)
        self.output = ""

    def read_until(self, pattern, guard=300):
        """The output up to the first match of `pattern` (a regular expression)
        after what was read before; None: up to the end, when the program has
        closed the terminal (`guard` seconds only keep a broken program from
        hanging the test)."""
        deadline = time.monotonic() + guard
        while pattern is None or not pattern.search(self.output):
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline -
                                                                   time.monotonic()))
            if not ready:
                raise AssertionError(f"no {pattern} in {self.output!r}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the program closed the terminal
                chunk = b""
            if not chunk and pattern is None:
                seen, self.output = self.output, ""
                return seen
            if not chunk:
                raise AssertionError(f"the program ended before {pattern}: {self.output!r}")
            self.output += chunk.decode("utf-8", "replace")
        match = pattern.search(self.output)
        seen, self.output = self.output[:match.start()], self.output[match.end():]
        return seen

    def type(self, keys):
        os.write(self.master, keys.encode())

    def close(self):
        """The program's exit status (it is killed if still running)."""
        if self.process.poll() is None:
            self.process.kill()
        status = self.process.wait(timeout=300)
        os.close(self.master)
        return status


def screen_lines(text):
    """The lines a terminal shows for `text`: no escape sequences, no \\r."""
    return [line.replace("\r", "") for line in ESCAPES.sub("", text).split("\n")
            if line.replace("\r", "").strip()]


def chat_turn(terminal, reference, messages, question):
    """Types `question`, checks the prompt the model saw (the whole conversation
    through the chat template) and the answer against transformers, and returns
    the conversation with the turn in it."""
    terminal.type(question + "\r")
    asked = messages + [user(question)]
    answer = reference.answer(asked)
    assert screen_lines(terminal.read_until(PROMPT)) == [
        question, reference.shown(asked), f"assistant> {answer}"]
    return asked + [{"role": "assistant", "content": answer}]


def test_chat_keeps_the_conversation_resets_and_exits(instruct):
    path, reference, _ = instruct
    terminal = Terminal([sys.executable, "-m", "calign", "chat", "--model", str(path),
                         "--system", "w5 w6", "--show_prompt"])
    try:
        assert screen_lines(terminal.read_until(PROMPT)) == [
            f"calign chat with {path}: /reset clears the conversation, /exit (or Ctrl-D) "
            f"ends it, /help shows this.", "system> w5 w6"]
        system = [{"role": "system", "content": "w5 w6"}]
        messages = chat_turn(terminal, reference, system, "w1 w2")
        messages = chat_turn(terminal, reference, messages, "w3 w4 w5")
        assert len(messages) == 5  # the second prompt held the first turn
        terminal.type("/reset\r")
        assert screen_lines(terminal.read_until(PROMPT)) == ["/reset", "(conversation cleared)"]
        chat_turn(terminal, reference, system, "w3 w4 w5")  # the system message stays
        terminal.type("/exit\r")
        assert screen_lines(terminal.read_until(None)) == ["/exit"]
        assert terminal.process.wait(timeout=300) == 0
    finally:
        terminal.close()


def test_chat_drops_a_turn_too_long_and_ends_at_end_of_input(instruct, tiny_model,
                                                            tiny_tokenizer, tmp_path):
    """A model of 20 positions: the second turn's prompt leaves no room for
    MAX_NEW_TOKENS, so it is dropped with a warning; /reset makes room; Ctrl-D ends."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model("llama", tokenizer=tiny_tokenizer(chat_template=True),
                               max_position_embeddings=20), path)
    shutil.copy2(instruct[0] / "generation_config.json", path)
    reference = Reference(path)
    terminal = Terminal([sys.executable, "-m", "calign", "chat", "--model", str(path)])
    try:
        terminal.read_until(PROMPT)
        terminal.type("w1 w2 w3 w4\r")
        answer = reference.answer([user("w1 w2 w3 w4")])
        assert screen_lines(terminal.read_until(PROMPT)) == ["w1 w2 w3 w4",
                                                               f"assistant> {answer}"]
        too_long = reference.prompt_ids([user("w1 w2 w3 w4"), {
            "role": "assistant", "content": answer}, user("w5 w6 w7 w8")])
        assert len(too_long) + MAX_NEW_TOKENS > 20
        terminal.type("w5 w6 w7 w8\r")
        assert screen_lines(terminal.read_until(PROMPT)) == [
            "w5 w6 w7 w8", f"calign: warning: the prompt has {len(too_long)} tokens; with "
            f"max_new_tokens {MAX_NEW_TOKENS} it exceeds the model's 20 positions; this turn "
            f"is dropped (/reset starts a new conversation)"]
        terminal.type("/reset\r")
        terminal.read_until(PROMPT)
        terminal.type("w5 w6 w7 w8\r")
        assert screen_lines(terminal.read_until(PROMPT)) == [
            "w5 w6 w7 w8", f"assistant> {reference.answer([user('w5 w6 w7 w8')])}"]
        terminal.type("\x04")  # Ctrl-D
        assert screen_lines(terminal.read_until(None)) == []
        assert terminal.process.wait(timeout=300) == 0
    finally:
        terminal.close()


def test_chat_template_picks_a_named_template(instruct, tmp_path, capsys):
    path = tmp_path / "model"
    shutil.copytree(instruct[0], path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    terse = ("{% for message in messages %}{{ message['content'] }} {% endfor %}"
             "{% if add_generation_prompt %}<assistant> {% endif %}")
    config["chat_template"] = [{"name": "default", "template": config["chat_template"]},
                               {"name": "terse", "template": terse}]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    reference = Reference(path)
    capsys.readouterr()  # transformers' loading messages
    ids = reference.tokenizer.apply_chat_template([user("w1 w2")], chat_template="terse",
                                                  add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]
    assert cli.main(["generate", "--model", str(path), "--prompt", "w1 w2", "--chat_template",
                     "terse", "--show_prompt"]) == 0
    out = capsys.readouterr()
    assert out.err == "[prompt, 3 tokens] w1 w2 <assistant>\n"
    assert out.out == reference.tokenizer.decode(reference.new_ids(ids),
                                                 skip_special_tokens=True) + "\n"
    assert cli.main(["chat", "--model", str(path), "--chat_template", "nope"]) == 2
    assert capsys.readouterr().err == ("calign: error: --chat_template must be one of "
                                       "['default', 'terse'], got 'nope'\n")
