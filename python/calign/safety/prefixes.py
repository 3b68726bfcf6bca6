"""A harmful response's tokens and the text of its first k tokens, as the
recovery examples and the prefilling attack both cut it.

The response's tokens are those the SFT trainer trains on for a
prompt/completion record (TRL's rule: prompt and prompt + response are
tokenized whole, and the response starts where the two token lists diverge),
so a cut after k tokens is a cut at a token boundary of the trained text."""

from calign import checks
from calign.data.tokenize import tokenize_prompt_and_completions


def text_list(name, values, length=None, length_name=None):
    """`values` as a list of non-empty strings; with `length`, exactly that many
    (one per item of the argument `length_name`)."""
    checks.require(isinstance(values, (list, tuple)), name, type(values).__name__,
                   "a list of strings")
    if length is not None:
        checks.require(len(values) == length, name, f"{len(values)} items",
                       f"a list of {length} strings (one per item of {length_name})")
    else:
        checks.require(len(values) > 0, name, values, "a non-empty list of strings")
    return [checks.text(f"{name}[{i}]", value) for i, value in enumerate(values)]


def split_response(tokenizer, prompt, response, name, index):
    """(prompt_ids, response_ids) of a prompt and its response, as SFT splits
    them; a response that adds no token raises ValueError naming it."""
    prompt_ids, (response_ids,) = tokenize_prompt_and_completions(tokenizer, prompt, [response])
    checks.require(len(response_ids) > 0, f"{name}[{index}]", response,
                   "a response adding at least one token to its prompt")
    return prompt_ids, response_ids


def prefix_text(tokenizer, prompt_ids, response_ids, k, response, name, index):
    """The text of the response's first k tokens, decoded in context (after the
    prompt's tokens, so a tokenizer that drops a word's leading space at the
    start of a decode keeps it here). It must be the start of `response`: the
    record prompt + prefix then tokenizes to the same tokens."""
    if k == 0:
        return ""
    before = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    after = tokenizer.decode(prompt_ids + response_ids[:k], skip_special_tokens=True)
    prefix = after[len(before):]
    checks.require(after.startswith(before) and response.startswith(prefix), f"{name}[{index}]",
                   response, f"a text whose first {k} tokens decode to its own start (the "
                   f"tokenizer decodes them to {prefix!r})")
    return prefix
