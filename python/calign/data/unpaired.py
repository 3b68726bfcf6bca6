"""Unpaired records for KTO: {"prompt", "completion", "label"} (label True for
a desirable completion). Paired records {"prompt", "chosen", "rejected"} are
split as TRL's unpair_preference_dataset does (chosen -> True, rejected ->
False); pre-tokenized {"prompt_input_ids", "completion_input_ids", "label"}
are used verbatim."""

from dataclasses import dataclass

from calign.data.records import load_records, report_skipped, require_field
from calign.data.tokenize import (is_conversational, split_implicit_prompt, token_ids,
                                  tokenize_prompt_and_completions, with_eos)
from calign.data.truncation import Truncation


@dataclass
class UnpairedExample:
    prompt_ids: list
    completions: list  # [completion_ids]
    label: bool
    index: int = -1


def _unpair(records, name):
    out = []
    for index, record in enumerate(records):
        if "chosen" in record and "rejected" in record and "completion" not in record:
            prompt = record.get("prompt")
            chosen = require_field(record, "chosen", index, name)
            rejected = require_field(record, "rejected", index, name)
            if prompt is None:
                prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
            out.append((index, {"prompt": prompt, "completion": chosen, "label": True}))
            out.append((index, {"prompt": prompt, "completion": rejected, "label": False}))
        else:
            out.append((index, record))
    return out


def prepare_unpaired_data(source, tokenizer, truncation=Truncation(), name="train_dataset"):
    """KTO examples, truncated by `truncation` (a calign.data.Truncation)."""
    records = load_records(source, name)
    examples, skipped = [], {}
    for index, record in _unpair(records, name):
        label = require_field(record, "label", index, name)
        if not isinstance(label, bool):
            raise TypeError(f"{name} record {index}: label must be true or false, not {label!r}")
        if "completion_input_ids" in record:
            prompt, completion = (
                token_ids(field, require_field(record, field, index, name), index, name)
                for field in ("prompt_input_ids", "completion_input_ids"))
        else:
            if tokenizer is None:
                raise ValueError(f"{name} record {index} holds text: pass processing_class")
            prompt_text = require_field(record, "prompt", index, name)
            completion_text = require_field(record, "completion", index, name)
            if not is_conversational(completion_text):
                completion_text = with_eos(completion_text, tokenizer)
            prompt, (completion,) = tokenize_prompt_and_completions(tokenizer, prompt_text,
                                                                    [completion_text])
        prompt, completions, reason = truncation.apply(prompt, [completion])
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        examples.append(UnpairedExample(prompt, completions, label, index=index))
    return report_skipped(examples, skipped, len(records), name)
