"""A word-level tokenizer folder for tests: one token a word, written as
tokenizer.json + tokenizer_config.json, which calign.Tokenizer and
transformers' AutoTokenizer both load.

Token ids are easy to read back: the special tokens come first (by default
<pad> = 0, <eos> = 1), then the role markers of the chat template (when it is
the default one), then the words, by default "w0", "w1", ...
"""

import json
import os
import pathlib

from calign import checks, tokenizer

# what calign.Tokenizer reads from a folder (copied with a checkpoint)
TOKENIZER_FILES = tokenizer.TOKENIZER_FILES + ("chat_template.jinja",)

# A chat template whose markers are words of their own: "<user> w1 w2 <eos> <assistant> "
CHAT_TEMPLATE = ("{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }} "
                 "{{ eos_token }} {% endfor %}{% if add_generation_prompt %}<assistant> "
                 "{% endif %}")
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
DEFAULT_WORDS = 30
PRE_TOKENIZERS = ("whitespace_split", "whitespace")


def word_list(n):
    """["w0", "w1", ..., "w{n-1}"]: the default words of tokenizers and records."""
    n = checks.integer("n", n, low=0)
    return [f"w{i}" for i in range(n)]


def save_word_tokenizer(path, words=None, *, vocab_size=None, eos_token="<eos>",
                        pad_token="<pad>", bos_token=None, unk_token=None, chat_template=None,
                        pre_tokenizer="whitespace_split"):
    """Writes a word-level tokenizer into `path` and returns it as a pathlib.Path.

    words: the ordinary words, in id order after the tokens put in front of
        them (default: "w0", "w1", ... -- DEFAULT_WORDS of them, or as many as
        fill vocab_size). Give words or vocab_size, not both.
    eos_token, pad_token, bos_token, unk_token: special tokens (None: none).
        Those not among `words` are put in front of the words, in the order
        pad, eos, bos, unk, as special tokens (decode(skip_special_tokens=True)
        drops them); one listed in `words` keeps its place in the vocabulary
        and encodes as a word, but decode(skip_special_tokens=True) drops it
        too, as transformers drops every token the config names. Unknown words
        encode as unk_token, by default the pad token (else the first token).
    chat_template: None (none), True (CHAT_TEMPLATE, whose markers <system>,
        <user> and <assistant> are added as words after the special tokens) or
        a jinja2 string (its markers must be words of the vocabulary).
    pre_tokenizer: "whitespace_split" (split at whitespace only) or
        "whitespace" (also split punctuation off words: "blue." -> "blue", ".").
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    checks.choice("pre_tokenizer", pre_tokenizer, PRE_TOKENIZERS)
    for name, token in (("eos_token", eos_token), ("pad_token", pad_token),
                        ("bos_token", bos_token), ("unk_token", unk_token)):
        checks.text(name, token, allow_none=True)
    checks.require(chat_template is None or chat_template is True or
                   (isinstance(chat_template, str) and chat_template), "chat_template",
                   chat_template, "None, True or a jinja2 template string")
    vocabulary = _vocabulary(words, vocab_size, [pad_token, eos_token, bos_token, unk_token],
                             chat_template is True)
    unk_token = unk_token or pad_token or vocabulary[0]
    special = [t for t in dict.fromkeys([pad_token, eos_token, bos_token, unk_token])
               if t is not None and (words is None or t not in words)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)},
                                         unk_token=unk_token))
    backend.pre_tokenizer = (pre_tokenizers.WhitespaceSplit() if pre_tokenizer ==
                             "whitespace_split" else pre_tokenizers.Whitespace())
    backend.add_special_tokens(special)
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name, token in (("eos_token", eos_token), ("pad_token", pad_token),
                        ("bos_token", bos_token), ("unk_token", unk_token)):
        if token is not None:
            config[name] = token
    if chat_template is not None:
        config["chat_template"] = CHAT_TEMPLATE if chat_template is True else chat_template
    path = pathlib.Path(path)
    os.makedirs(path, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    with open(path / "tokenizer_config.json", "w") as f:
        json.dump(config, f, indent=2)
    return path


def _vocabulary(words, vocab_size, special_tokens, with_roles):
    """Every token in id order: the special tokens and role markers missing
    from `words`, then `words` (default: w0, w1, ... filling vocab_size)."""
    if words is not None and vocab_size is not None:
        raise ValueError(f"give words or vocab_size, not both (got vocab_size={vocab_size!r})")
    given = list(words) if words is not None else []
    front = [t for t in dict.fromkeys(special_tokens) if t is not None and t not in given]
    front += [t for t in ROLE_TOKENS if with_roles and t not in given]
    if words is None:
        count = (DEFAULT_WORDS if vocab_size is None else
                 checks.integer("vocab_size", vocab_size, low=len(front) + 1) - len(front))
        given = word_list(count)
    for i, word in enumerate(given):
        checks.require(isinstance(word, str) and word and not any(c.isspace() for c in word),
                       f"words[{i}]", word, "a non-empty string without whitespace")
    seen = set()
    for i, word in enumerate(given):
        checks.require(word not in seen, f"words[{i}]", word, "a word not listed before")
        seen.add(word)
    return front + given
