"""Answers from a checkpoint, as `calign generate` and `calign chat` give them.

A prompt goes through the tokenizer's chat template with the assistant's turn
opened (add_generation_prompt=True, as transformers' pipelines do) unless the
tokenizer has none or the user asks for raw text. The generation settings are
the checkpoint's generation_config.json's (see Model.generate) where no flag
gives them, with two additions for the command line:

- max_new_tokens: with neither a flag nor generation_config.json's
  max_new_tokens, the room generation_config.json's max_length leaves after
  the prompt (transformers' meaning of max_length), else
  DEFAULT_MAX_NEW_TOKENS; either way no more than the model's positions hold.
- eos: with no eos_token_id in generation_config.json, a sequence stops at
  config.json's eos_token_id and at the tokenizer's eos token.

An answer is decoded without special tokens (the template's markers and the
end-of-turn token); an empty one comes with a warning saying why.
"""

import sys

from calign import checks
from calign.model.generation import GENERATION_CONFIG_NAME, eos_token_ids

DEFAULT_MAX_NEW_TOKENS = 256
GENERATION_FLAGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                    "repetition_penalty")
HELP = "/reset clears the conversation, /exit (or Ctrl-D) ends it, /help shows this"


class ConversationTooLong(ValueError):
    """The prompt leaves the model no room to answer."""


def check_generation_flags(flags):
    """The flags of GENERATION_FLAGS the user gave (None: not given, the
    checkpoint's generation_config.json decides), checked under the names typed."""
    given = {name: value for name, value in flags.items() if value is not None}
    if "max_new_tokens" in given:
        checks.integer("--max_new_tokens", given["max_new_tokens"], 1, checks.C_INT_MAX)
    if "do_sample" in given:
        checks.flag("--do_sample", given["do_sample"])
    if "temperature" in given:
        checks.real("--temperature", given["temperature"], 0.0, open_low=True)
    if "top_k" in given:
        checks.integer("--top_k", given["top_k"], 0, checks.C_INT_MAX)
    if "top_p" in given:
        checks.real("--top_p", given["top_p"], 0.0, 1.0, open_low=True)
    if "repetition_penalty" in given:
        checks.real("--repetition_penalty", given["repetition_penalty"], 0.0, open_low=True)
    return {name: flags.get(name) for name in GENERATION_FLAGS}


class Assistant:
    """A model and its tokenizer answering prompts with one set of generation
    flags (a dict over GENERATION_FLAGS, None where generation_config.json
    decides). chat_template: the name of one of the tokenizer's templates
    (None: its default); use_chat_template=False sends prompts as raw text;
    weight_dtype: Model.generate's (bfloat16: the matrix weights rounded)."""

    def __init__(self, model, tokenizer, flags, *, use_chat_template=True, chat_template=None,
                 weight_dtype="float32"):
        self.model = model
        self.tokenizer = tokenizer
        self.flags = check_generation_flags(flags)
        self.weight_dtype = checks.choice("--weight_dtype", weight_dtype, ("float32", "bfloat16"))
        if chat_template is not None:
            checks.require(isinstance(tokenizer.chat_template, dict), "--chat_template",
                           chat_template, "the name of one of the tokenizer's chat templates, "
                           f"but it has {'one, unnamed' if tokenizer.chat_template else 'none'}")
            checks.choice("--chat_template", chat_template, sorted(tokenizer.chat_template))
        self.template = None
        if use_chat_template and tokenizer.chat_template is not None:
            self.template = tokenizer.get_chat_template(chat_template)
        self.file = model.generation_config or {}
        if self.file.get("eos_token_id") is not None:
            self.eos_argument = None  # generate takes the file's
            self.eos = eos_token_ids(f"eos_token_id (from {GENERATION_CONFIG_NAME})",
                                     self.file["eos_token_id"])
        else:
            from_config = model.config.get("eos_token_id")
            self.eos = eos_token_ids("eos_token_id (from config.json)", from_config)
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in self.eos:
                self.eos.append(tokenizer.eos_token_id)
            self.eos_argument = self.eos

    @property
    def uses_chat_template(self):
        return self.template is not None

    def prompt_ids(self, messages):
        """Token ids of a conversation ({"role", "content"} dicts) ending with the
        user's turn: through the chat template with the assistant's turn opened,
        or, without one, the last message's text as it is."""
        if self.template is None:
            ids = self.tokenizer.encode(messages[-1]["content"])
        else:
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True,
                chat_template=self.template)
        if not ids:
            raise ValueError("the prompt is empty after tokenization")
        return ids

    def max_new_tokens(self, prompt_length):
        """The max_new_tokens to pass for a prompt of this length (None: the
        file's, which generate reads) and the number it stands for (None when
        the file's is not an integer, which generate reports)."""
        given = self.flags["max_new_tokens"]
        if given is None and self.file.get("max_new_tokens") is not None:
            value = self.file["max_new_tokens"]
            return None, value if checks.is_int(value) else None
        room = self.model.max_positions - prompt_length
        if room < 1:
            raise ConversationTooLong(f"the prompt has {prompt_length} tokens and the model "
                                      f"holds {self.model.max_positions}: no room for an answer")
        if given is not None:
            return given, given
        limit = DEFAULT_MAX_NEW_TOKENS
        if self.file.get("max_length") is not None:
            max_length = checks.integer(f"max_length (from {GENERATION_CONFIG_NAME})",
                                        self.file["max_length"], 1, checks.C_INT_MAX)
            limit = max_length - prompt_length
            if limit < 1:
                raise ConversationTooLong(
                    f"the prompt has {prompt_length} tokens and {GENERATION_CONFIG_NAME}'s "
                    f"max_length is {max_length}: no room for an answer (pass --max_new_tokens)")
        return min(limit, room), min(limit, room)

    def generate(self, prompt_ids, *, seed=0, num_return_sequences=1):
        """Token-id lists of the answers to one prompt (each ending with its eos
        token when it stopped at one)."""
        argument, value = self.max_new_tokens(len(prompt_ids))
        if value is not None and len(prompt_ids) + value > self.model.max_positions:
            raise ConversationTooLong(
                f"the prompt has {len(prompt_ids)} tokens; with max_new_tokens {value} it "
                f"exceeds the model's {self.model.max_positions} positions")
        settings = dict(self.flags, max_new_tokens=argument)
        return self.model.generate([prompt_ids], **settings, eos_token_id=self.eos_argument,
                                   num_return_sequences=num_return_sequences, seed=seed,
                                   weight_dtype=self.weight_dtype)

    def answer_text(self, tokens):
        """(the answer's text without special tokens, a warning when it is empty
        or None)."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if text.strip():
            return text, None
        if tokens and tokens[0] in self.eos:
            first = self.tokenizer.decode(tokens[:1])
            reason = (f"the model ended its turn at once: its first token, {first!r} (id "
                      f"{tokens[0]}), ends a sequence")
            if self.template is None:
                reason += (" (the prompt went in as raw text; an instruct model usually needs "
                           "its chat template)" if self.tokenizer.chat_template is None else
                           " (the prompt went in as raw text: --no-chat-template)")
        else:
            reason = (f"its {len(tokens)} tokens are special tokens or whitespace, which "
                      f"decoding leaves out")
        return text, f"the answer is empty: {reason}"

    def show(self, prompt_ids):
        """The prompt as the model sees it: its ids decoded, special tokens kept."""
        return f"[prompt, {len(prompt_ids)} tokens] {self.tokenizer.decode(prompt_ids)}"


class Conversation:
    """The messages of a chat so far, starting with the system message if any."""

    def __init__(self, system=None):
        self.system = system
        self.reset()

    def reset(self):
        self.messages = ([{"role": "system", "content": self.system}]
                         if self.system is not None else [])

    def asked(self, text):
        """The messages with the user's `text` appended (the history itself
        changes only when the answer is in: see answered)."""
        return self.messages + [{"role": "user", "content": text}]

    def answered(self, question, answer):
        self.messages += [{"role": "user", "content": question},
                          {"role": "assistant", "content": answer}]


def warn(message):
    print(f"calign: warning: {message}", file=sys.stderr, flush=True)


def run_chat(assistant, conversation, *, seed=0, show_prompt=False, banner=""):
    """The terminal chat: reads lines from stdin until /exit or end of input;
    each line is the user's turn, answered with the whole conversation through
    the chat template. Turn t (counted from the start, resets included) samples
    with seed + t. Returns the exit status (0)."""
    _line_editing()
    print(f"{banner}{HELP}.")
    if conversation.system is not None:
        print(f"system> {conversation.system}")
    turn = 0
    while True:
        try:
            line = input("user> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            conversation.reset()
            print("(conversation cleared)")
            continue
        if text == "/help":
            print(HELP)
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}: {HELP}")
            continue
        turn_seed, turn = seed + turn, turn + 1
        try:
            prompt_ids = assistant.prompt_ids(conversation.asked(text))
            if show_prompt:
                print(assistant.show(prompt_ids), file=sys.stderr, flush=True)
            tokens = assistant.generate(prompt_ids, seed=turn_seed)[0]
        except ConversationTooLong as error:
            warn(f"{error}; this turn is dropped (/reset starts a new conversation)")
            continue
        except KeyboardInterrupt:  # Ctrl-C while generating drops the turn
            print("\n(interrupted; this turn is dropped)")
            continue
        answer, warning = assistant.answer_text(tokens)
        if warning:
            warn(warning)
        print(f"assistant> {answer}")
        conversation.answered(text, answer)


def _line_editing():
    """Arrow keys and history at the prompt when a person types at a terminal."""
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (input() uses it once imported)
        except ImportError:
            pass
