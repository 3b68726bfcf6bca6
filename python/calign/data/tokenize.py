"""Turning text or conversations into token ids, as TRL does."""


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
