"""SFT records -> token ids split into a context and the tokens to train on.

Accepted records (TRL's formats):
  language modelling   {"text"}: every token after the first is trained on
  prompt-completion    {"prompt", "completion"}: only the completion is trained
                       on when completion_only_loss (TRL's default)
  conversational       {"messages"}: the rendered conversation
  pre-tokenized        {"input_ids"} (optionally "completion_mask")
An EOS token is appended to text that lacks it, as TRL does.
"""

from calign.data.preference import PreferenceExample
from calign.data.records import load_records, report_skipped, require_field
from calign.data.tokenize import (is_conversational, token_ids,
                                  tokenize_prompt_and_completions, with_eos)
from calign.data.truncation import Truncation


def tokenize_sft_record(record, index, tokenizer, completion_only_loss, name="dataset"):
    """(context_ids, trained_ids): the loss covers trained_ids, each predicted
    from everything before it."""
    if "input_ids" in record:
        ids = token_ids("input_ids", require_field(record, "input_ids", index, name), index, name)
        mask = record.get("completion_mask")
        if mask is not None and completion_only_loss:
            if len(mask) != len(ids):
                raise ValueError(f"{name} record {index}: completion_mask and input_ids differ "
                                 "in length")
            start = next((i for i, m in enumerate(mask) if m), len(ids))
            return ids[:max(start, 1)], ids[max(start, 1):]
        return ids[:1], ids[1:]
    if tokenizer is None:
        raise ValueError(f"{name} record {index} holds text: pass processing_class (a "
                         "Tokenizer)")
    if "messages" in record:
        messages = require_field(record, "messages", index, name)
        if not is_conversational(messages):
            raise ValueError(f"{name} record {index}: messages must be a list of "
                             "{role, content} dicts")
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        return ids[:1], ids[1:]
    if "prompt" in record and "completion" in record:
        prompt = require_field(record, "prompt", index, name)
        completion = require_field(record, "completion", index, name)
        if not is_conversational(completion):
            completion = with_eos(completion, tokenizer)
        prompt_ids, (completion_ids,) = tokenize_prompt_and_completions(tokenizer, prompt,
                                                                         [completion])
        if completion_only_loss and prompt_ids:
            return prompt_ids, completion_ids
        ids = prompt_ids + completion_ids
        return ids[:1], ids[1:]
    text = require_field(record, "text", index, name)
    if not isinstance(text, str):
        raise TypeError(f"{name} record {index}: text must be a string")
    ids = tokenizer.encode(with_eos(text, tokenizer))
    return ids[:1], ids[1:]


def prepare_sft_data(source, tokenizer, truncation=Truncation(), completion_only_loss=True,
                     name="train_dataset"):
    """SFT examples as PreferenceExample(prompt_ids=context, completions=[trained]),
    truncated by `truncation` (a calign.data.Truncation)."""
    records = load_records(source, name)
    examples, skipped = [], {}
    for index, record in enumerate(records):
        context, trained = tokenize_sft_record(record, index, tokenizer, completion_only_loss,
                                               name)
        context, completions, reason = truncation.apply(context, [trained])
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        examples.append(PreferenceExample(context, completions, index=index))
    return report_skipped(examples, skipped, len(records), name)
