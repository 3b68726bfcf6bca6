"""Turning text or conversations into token ids, as TRL does, and checking
the token ids a record gives directly."""

import numpy as np

from calign.checks import is_int


def token_ids(field, value, index, name="dataset"):
    """record[field] of record `index` as a list of token ids: a list, tuple or
    1-D array of non-negative integers (Python's or NumPy's, not bools)."""
    if not (isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and
                                                 value.ndim == 1)) or \
            not all(is_int(t) for t in value):
        raise TypeError(f"{name} record {index}: {field} must be a list of integer token ids, "
                        f"got {type(value).__name__}")
    ids = [int(t) for t in value]
    if any(t < 0 for t in ids):
        raise ValueError(f"{name} record {index}: {field} holds a negative token id "
                         f"({min(ids)})")
    return ids


def with_eos(text, tokenizer):
    """TRL appends the EOS token to text completions that lack it."""
    eos = tokenizer.eos_token
    if eos and isinstance(text, str) and not text.endswith(eos):
        return text + eos
    return text


def is_conversational(value):
    """A list of {"role", "content"} messages."""
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in value)


def common_prefix_length(a, b):
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def split_implicit_prompt(chosen, rejected):
    """TRL's extract_prompt: the shared start of chosen and rejected is the prompt
    (whole messages for conversations; characters for text, a separating space
    going with the completion)."""
    n = min(len(chosen), len(rejected))
    idx = n
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i - 1 if i > 0 and chosen[i - 1] == " " else i
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def tokenize_prompt_and_completions(tokenizer, prompt, completions):
    """(prompt_ids, [completion_ids]) for a prompt and its completions, text or
    conversational. Like TRL, prompt and prompt + completion are tokenized
    whole, and each completion starts where the two token lists diverge."""
    if is_conversational(prompt):
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                   tokenize=True)
        full = [tokenizer.apply_chat_template(prompt + c, tokenize=True) for c in completions]
    else:
        prompt_ids = tokenizer.encode(prompt)
        full = [tokenizer.encode(prompt + c) for c in completions]
    prompt_len = min([len(prompt_ids)] + [common_prefix_length(prompt_ids, f) for f in full])
    return prompt_ids[:prompt_len], [f[prompt_len:] for f in full]
