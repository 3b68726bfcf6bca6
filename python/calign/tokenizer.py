"""calign.Tokenizer: a Hugging Face tokenizer folder (tokenizer.json +
tokenizer_config.json) through the `tokenizers` library, with the chat
template rendered by jinja2 as transformers renders it."""

import json
import os
import shutil

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _token_content(value):
    """tokenizer_config.json stores special tokens as strings or AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Encodes and decodes text; renders chat templates.

    Attributes: eos_token, bos_token, pad_token (strings or None) and their
    ids; chat_template (a jinja2 string or None)."""

    def __init__(self, backend, config=None, source_dir=None):
        self._backend = backend
        self.config = dict(config or {})
        self._source_dir = source_dir
        self.eos_token = _token_content(self.config.get("eos_token"))
        self.bos_token = _token_content(self.config.get("bos_token"))
        self.pad_token = _token_content(self.config.get("pad_token"))
        self.chat_template = self.config.get("chat_template")
        self._template = None

    @classmethod
    def from_pretrained(cls, path):
        """Loads `path`/tokenizer.json (and tokenizer_config.json when present)."""
        from tokenizers import Tokenizer as Backend

        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no tokenizer.json in {path!r}")
        try:
            backend = Backend.from_file(file)
        except Exception as exc:  # the tokenizers library raises its own exception types
            raise ValueError(f"cannot read {file!r}: {exc}") from None
        config = {}
        config_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(config_file):
            try:
                with open(config_file) as f:
                    config = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{config_file!r} is not valid JSON: {exc}") from None
        template_file = os.path.join(path, "chat_template.jinja")
        if "chat_template" not in config and os.path.isfile(template_file):
            with open(template_file) as f:
                config["chat_template"] = f.read()
        return cls(backend, config, source_dir=path)

    def save_pretrained(self, path):
        """Writes tokenizer.json and tokenizer_config.json into `path`."""
        os.makedirs(path, exist_ok=True)
        self._backend.save(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(self.config, f, indent=2)
        if self._source_dir:
            extra = os.path.join(self._source_dir, "special_tokens_map.json")
            if os.path.isfile(extra):
                shutil.copy2(extra, path)

    # ---- ids -----------------------------------------------------------------

    @property
    def vocab_size(self):
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token):
        """The id of a token string, None if it is not in the vocabulary."""
        return None if token is None else self._backend.token_to_id(token)

    @property
    def eos_token_id(self):
        return self.token_to_id(self.eos_token)

    @property
    def bos_token_id(self):
        return self.token_to_id(self.bos_token)

    @property
    def pad_token_id(self):
        return self.token_to_id(self.pad_token)

    def encode(self, text, add_special_tokens=True):
        """Token ids of `text` (a string)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, not {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids, skip_special_tokens=False):
        """Text of a list of token ids."""
        return self._backend.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)

    # ---- chat ----------------------------------------------------------------

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False, **kwargs):
        """Renders a list of {"role", "content"} messages with the chat template."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json), so "
                             "conversational records cannot be rendered")
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        if self._template is None:
            self._template = _compile_template(self.chat_template)
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                                     **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _compile_template(source):
    """A jinja2 template compiled as transformers compiles chat templates."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
