"""Prompt-only records for online training (GRPO, RLOO), as TRL 1.16 reads
them: {"prompt": text} or {"prompt": [messages]} (rendered with the chat
template and its generation prompt), any other fields kept as the record's
columns, which reach the reward functions."""

from dataclasses import dataclass, field

from calign.data.records import load_records, require_field
from calign.data.tokenize import is_conversational


@dataclass
class PromptExample:
    prompt: object        # the record's prompt: text or a list of messages
    prompt_ids: list      # its token ids
    columns: dict = field(default_factory=dict)  # the record's other fields
    index: int = 0        # the record's place in its source


def prepare_prompts(source, tokenizer, *, name="train_dataset", chat_template_kwargs=None,
                    max_prompt_tokens=None):
    """PromptExamples of a dataset's records.

    Text prompts are encoded with the tokenizer's special tokens (TRL calls
    the tokenizer on them); conversational ones go through the chat template
    with add_generation_prompt. A prompt longer than max_prompt_tokens keeps
    its end."""
    if tokenizer is None:
        raise ValueError(f"{name} holds text prompts: pass processing_class (a tokenizer)")
    examples = []
    for index, record in enumerate(load_records(source, name)):
        prompt = require_field(record, "prompt", index, name)
        if is_conversational(prompt):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                **(chat_template_kwargs or {}))
        elif isinstance(prompt, str):
            ids = tokenizer.encode(prompt)
        else:
            raise TypeError(f"{name} record {index}: prompt must be a string or a list of "
                            f"{{'role', 'content'}} messages, got {type(prompt).__name__}")
        if not ids:
            raise ValueError(f"{name} record {index}: the prompt has no tokens")
        if max_prompt_tokens is not None:
            ids = ids[-max_prompt_tokens:]
        columns = {k: v for k, v in record.items() if k != "prompt"}
        examples.append(PromptExample(prompt, list(ids), columns, index))
    kinds = {is_conversational(e.prompt) for e in examples}
    if len(kinds) > 1:
        raise ValueError(f"{name} mixes text and conversational prompts: a batch's reward "
                         "functions get one kind")
    return examples


def check_prompts_fit(model, examples, name, room, room_name, model_name="model"):
    """A ValueError naming the record unless each prompt plus `room` tokens
    (the longest completion, `room_name`) fits the model's positions and its
    tokens the model's vocabulary."""
    limit, vocab = model.max_positions, model.vocab_size
    for e in examples:
        if len(e.prompt_ids) + room > limit:
            raise ValueError(f"{name} record {e.index}: the prompt ({len(e.prompt_ids)} tokens) "
                             f"plus {room_name} ({room}) exceeds the {model_name}'s maximum "
                             f"positions ({limit}): set max_length (longer prompts keep their "
                             f"end) or a smaller {room_name}")
        if max(e.prompt_ids) >= vocab:
            raise ValueError(f"{name} record {e.index}: the prompt holds token id "
                             f"{max(e.prompt_ids)}, outside the {model_name}'s vocabulary "
                             f"[0, {vocab})")
