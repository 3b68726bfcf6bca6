"""calign.Tokenizer: a Hugging Face tokenizer folder (tokenizer.json +
tokenizer_config.json) through the `tokenizers` library, with the chat
template rendered by jinja2 as transformers renders it."""

import json
import os
import shutil

import numpy as np

from calign import checks
from calign.files import read_json_object, read_text

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_TOKEN_FIELDS = ("bos_token", "eos_token", "pad_token")
# transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES): each is special
# in decode(skip_special_tokens=True) whatever tokenizer.json says of it
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")
EXTRA_SPECIAL_TOKEN_FIELDS = ("extra_special_tokens", "additional_special_tokens")
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # transformers' folder of named templates


def _token_content(key, value, where="tokenizer config"):
    """tokenizer_config.json stores special tokens as strings or AddedToken
    objects ({"content": ...})."""
    content = value.get("content") if isinstance(value, dict) else value
    if not (isinstance(content, str) or value is None):
        raise ValueError(f"{where} field {key!r} must be a token string or an AddedToken "
                         f"object {{'content': string, ...}}, got {value!r}")
    return content


def _config_special_tokens(config):
    """The token strings a tokenizer config makes special, as transformers
    reads them (it adds them to the backend as special tokens on loading): the
    named special tokens, any other "*_token" field holding a token (a model's
    own, e.g. image_token), the extra_special_tokens (additional_special_tokens
    before transformers 5) as a list or a {name: token} mapping, and the
    entries of added_tokens_decoder marked special."""
    tokens = [_token_content(key, config.get(key)) for key in NAMED_SPECIAL_TOKENS]
    tokens += [_token_content(key, value) for key, value in config.items()
               if key.endswith("_token") and key not in NAMED_SPECIAL_TOKENS and
               (isinstance(value, str) or isinstance(value, dict) and "content" in value)]
    for key in EXTRA_SPECIAL_TOKEN_FIELDS:
        extra = config.get(key)
        if isinstance(extra, dict):
            extra = list(extra.values())
        if extra is not None and not isinstance(extra, list):
            raise ValueError(f"tokenizer config field {key!r} must be a list of tokens or a "
                             f"{{name: token}} mapping, got {extra!r:.200}")
        tokens += [_token_content(f"{key}[{i}]", token) for i, token in enumerate(extra or [])]
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise ValueError(f"tokenizer config field 'added_tokens_decoder' must map ids to "
                         f"AddedToken objects, got {decoder!r:.200}")
    tokens += [_token_content(f"added_tokens_decoder[{key!r}]", token) for key, token in
               decoder.items() if isinstance(token, dict) and token.get("special") is True]
    return [token for token in dict.fromkeys(tokens) if token is not None]


def _chat_templates(value):
    """The config's chat_template as transformers holds it: a string, or
    {name: template} for the list of {"name", "template"} objects some models
    publish (transformers' own saved format for several templates)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and
            isinstance(t.get("template"), str) for t in value):
        return {t["name"]: t["template"] for t in value}
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                       for k, v in value.items()):
        return dict(value)
    raise ValueError(f"tokenizer config field 'chat_template' must be a jinja string or a list "
                     f"of {{'name': ..., 'template': ...}} objects, got {value!r:.200}")


def _template_files(path):
    """{name: template} of the template files transformers reads, which take
    priority over tokenizer_config.json's: chat_template.jinja ("default") and
    additional_chat_templates/<name>.jinja."""
    templates = {}
    default = os.path.join(path, CHAT_TEMPLATE_FILE)
    if os.path.isfile(default):
        templates["default"] = read_text(default)
    folder = os.path.join(path, CHAT_TEMPLATE_DIR)
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".jinja"):
                templates[name[:-len(".jinja")]] = read_text(os.path.join(folder, name))
    return templates


class Tokenizer:
    """Encodes and decodes text; renders chat templates.

    Attributes: eos_token, bos_token, pad_token (strings or None) and their
    ids; chat_template (a jinja2 string, {name: template} when the tokenizer
    has several, or None)."""

    def __init__(self, backend, config=None, source_dir=None):
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"the tokenizer config must be a dict, got {type(config).__name__}")
        self._backend = backend
        self.config = dict(config or {})
        self._source_dir = source_dir
        self.eos_token = _token_content("eos_token", self.config.get("eos_token"))
        self.bos_token = _token_content("bos_token", self.config.get("bos_token"))
        self.pad_token = _token_content("pad_token", self.config.get("pad_token"))
        self.chat_template = _chat_templates(self.config.get("chat_template"))
        self._compiled = {}
        # ids decode(skip_special_tokens=True) drops besides tokenizer.json's
        # special tokens: those the config makes special (see
        # _config_special_tokens) that the vocabulary has
        self.all_special_tokens = _config_special_tokens(self.config)
        ids = (self.token_to_id(token) for token in self.all_special_tokens)
        self.all_special_ids = [i for i in ids if i is not None]

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
        config_file = os.path.join(path, "tokenizer_config.json")
        config = read_json_object(config_file) if os.path.isfile(config_file) else {}
        # transformers' legacy path: without added_tokens_decoder, the special
        # tokens of special_tokens_map.json replace tokenizer_config.json's
        map_file = os.path.join(path, "special_tokens_map.json")
        if "added_tokens_decoder" not in config and os.path.isfile(map_file):
            special = read_json_object(map_file)
            for key in NAMED_SPECIAL_TOKENS:
                if key in special:
                    _token_content(key, special[key], where=repr(map_file))
                    config[key] = special[key]
            for key in EXTRA_SPECIAL_TOKEN_FIELDS:
                if key in special and not any(config.get(k) for k in EXTRA_SPECIAL_TOKEN_FIELDS):
                    config[key] = special[key]
        templates = _template_files(path)
        if templates:
            config["chat_template"] = templates["default"] if list(templates) == ["default"] \
                else [{"name": name, "template": t} for name, t in templates.items()]
        try:
            return cls(backend, config, source_dir=path)
        except ValueError as exc:  # a field of tokenizer_config.json
            raise ValueError(f"{config_file!r}: {exc}") from None

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

    def add_special_tokens(self, tokens):
        """Adds `tokens` (a string or a list of strings, e.g. "[RESET]") to
        the vocabulary as special tokens -- each encodes as one token wherever
        it appears and decode(skip_special_tokens=True) drops it -- and returns
        their ids, in order (a token the vocabulary already has keeps its id).
        save_pretrained writes them (tokenizer.json's added tokens and
        tokenizer_config.json's extra_special_tokens) so that tokenizers and
        transformers load them with the same ids. Grow the model to match:
        Model.resize_token_embeddings(tokenizer.vocab_size)."""
        from tokenizers import AddedToken

        if isinstance(tokens, str):
            tokens = [tokens]
        if not isinstance(tokens, (list, tuple)) or not tokens:
            raise ValueError(f"tokens must be a token string or a non-empty list of them, got "
                             f"{tokens!r:.200}")
        for i, token in enumerate(tokens):
            checks.text(f"tokens[{i}]", token)
        self._backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                          for token in tokens])
        field = next((key for key in EXTRA_SPECIAL_TOKEN_FIELDS if key in self.config),
                     EXTRA_SPECIAL_TOKEN_FIELDS[0])
        extra = self.config.get(field) or []
        if isinstance(extra, dict):  # {name: token}: each new token is named by itself
            extra = dict(extra, **{token: token for token in tokens
                                   if token not in extra.values()})
        else:
            extra = list(extra) + [token for token in tokens if token not in extra]
        self.config[field] = extra
        ids = [self.token_to_id(token) for token in tokens]
        decoder = self.config.get("added_tokens_decoder")
        if isinstance(decoder, dict):  # transformers reads the added tokens from it when present
            for token, token_id in zip(tokens, ids):
                decoder[str(token_id)] = {"content": token, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
        self.all_special_tokens = _config_special_tokens(self.config)
        self.all_special_ids = [i for i in map(self.token_to_id, self.all_special_tokens)
                                if i is not None]
        return ids

    def encode(self, text, add_special_tokens=True):
        """Token ids of `text` (a string)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, not {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.encode(text, add_special_tokens)}

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """Text of a list of token ids, as transformers decodes it (an id the
        vocabulary lacks decodes to nothing; a float, a bool or a negative id
        is refused, not rounded or wrapped).

        skip_special_tokens: leave out tokenizer.json's special tokens and
            those the config names (all_special_tokens: bos, eos, pad, unk,
            ..., extra_special_tokens, added tokens marked special), even
            where tokenizer.json holds one as an ordinary token.
        clean_up_tokenization_spaces: remove the space before punctuation and
            English contractions (" ." -> ".", " n't" -> "n't"); None takes
            the config's setting (default False). Not applied to a BPE model
            unless the config sets
            clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output,
            as in transformers."""
        array = np.asarray(ids)
        if array.size == 0:
            return ""
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise ValueError(f"ids must be a list of integer token ids, got {ids!r:.200}")
        if array.min() < 0 or array.max() > np.iinfo(np.uint32).max:
            raise ValueError(f"ids must be token ids in [0, 2**32), got {ids!r:.200}")
        if skip_special_tokens:
            array = array[~np.isin(array, self.all_special_ids)]
        text = self._backend.decode(array.tolist(), skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.config.get("clean_up_tokenization_spaces", False)
        if clean_up_tokenization_spaces and not (
                type(self._backend.model).__name__ == "BPE" and not self.config.get(
                    "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")):
            text = _clean_up_tokenization(text)
        return text

    # ---- chat ----------------------------------------------------------------

    def get_chat_template(self, chat_template=None, tools=None):
        """The template source apply_chat_template renders, chosen as
        transformers chooses it: `chat_template` is the name of one of the
        tokenizer's templates or a template itself; by default the "tool_use"
        template when tools are given and the tokenizer has one, else
        "default"."""
        if chat_template is not None and not isinstance(chat_template, str):
            raise ValueError(f"chat_template must be a template name or a jinja string, got "
                             f"{chat_template!r}")
        if isinstance(self.chat_template, dict):
            if chat_template is not None:
                return self.chat_template.get(chat_template, chat_template)
            if tools is not None and "tool_use" in self.chat_template:
                return self.chat_template["tool_use"]
            if "default" in self.chat_template:
                return self.chat_template["default"]
            raise ValueError(f"this tokenizer has several chat templates and none is named "
                             f"'default': pass chat_template= one of "
                             f"{sorted(self.chat_template)}")
        if chat_template is not None:
            return chat_template
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json), so "
                             "conversational records cannot be rendered")
        return self.chat_template

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False,
                            chat_template=None, tools=None, **kwargs):
        """Renders a list of {"role", "content"} messages with the chat template
        (see get_chat_template for `chat_template` and `tools`; tools are JSON
        schemas, passed to the template as transformers passes them)."""
        source = self.get_chat_template(chat_template, tools)
        if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        if tools is not None and not (isinstance(tools, list) and
                                      all(isinstance(t, dict) for t in tools)):
            raise ValueError(f"tools must be a list of JSON schemas (dicts), got {tools!r:.200}")
        if source not in self._compiled:
            self._compiled[source] = _compile_template(source)
        text = self._compiled[source].render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _clean_up_tokenization(text):
    """transformers' clean_up_tokenization: no space before punctuation and
    English contractions."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                           (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                           (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


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
