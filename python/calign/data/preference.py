"""Preference records (TRL's formats) -> a prompt and ranked completions in token ids.

Accepted records, as TRL names their fields:
  explicit prompt      {"prompt", "chosen", "rejected"} (text or conversations)
  implicit prompt      {"chosen", "rejected"}: their common start is the prompt
  pre-tokenized        {"prompt_input_ids", "chosen_input_ids", "rejected_input_ids"},
                       used verbatim (nothing added)
  listwise             {"prompt", "responses"}: K >= 2 responses, best first
Optional: "margin" (reward models), "ref_chosen_logps" / "ref_rejected_logps"
(precomputed reference log-probs), "weight" (a per-pair factor on the DPO
loss, as calign.selfimprove.scpo_pairs writes).
"""

from dataclasses import dataclass

from calign import checks
from calign.data.records import load_records, report_skipped, require_field
from calign.data.tokenize import (is_conversational, split_implicit_prompt, token_ids,
                                  tokenize_prompt_and_completions, with_eos)
from calign.data.truncation import Truncation


@dataclass
class PreferenceExample:
    prompt_ids: list        # token ids of the shared prompt
    completions: list       # [chosen_ids, rejected_ids], or K lists best first
    margin: float = None
    ref_logps: list = None  # reference log-probs of the completions, when given
    index: int = -1         # position of the record in the source
    weight: float = None    # per-pair loss weight ("weight" field, e.g. ScPO's vote margin)
    ref_token_logps: object = None  # SFT's token-wise constraint: the reference's log-prob of
                                    # each trained token, when precomputed


def tokenize_record(record, index, tokenizer, name="dataset"):
    """(prompt_ids, [completion_ids, ...]) of one record."""
    if "chosen_input_ids" in record or "prompt_input_ids" in record:
        prompt, chosen, rejected = (
            token_ids(field, require_field(record, field, index, name), index, name)
            for field in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"))
        return prompt, [chosen, rejected]
    if tokenizer is None:
        raise ValueError(f"{name} record {index} holds text: pass processing_class (a "
                         "Tokenizer), or pre-tokenized fields")
    if "responses" in record:
        prompt = require_field(record, "prompt", index, name)
        responses = require_field(record, "responses", index, name)
        if not isinstance(responses, list) or len(responses) < 2:
            raise ValueError(f"{name} record {index}: responses must list at least 2 "
                             "completions")
        completions = responses
    else:
        chosen = require_field(record, "chosen", index, name)
        rejected = require_field(record, "rejected", index, name)
        prompt = record.get("prompt")
        if prompt is None or is_conversational(prompt) != is_conversational(chosen):
            prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        completions = [chosen, rejected]
    for c in completions:
        if not isinstance(c, str) and not is_conversational(c):
            raise TypeError(f"{name} record {index}: completions must be strings or lists of "
                            "messages")
    if not is_conversational(completions[0]):
        completions = [with_eos(c, tokenizer) for c in completions]
    return tokenize_prompt_and_completions(tokenizer, prompt, completions)


def _number(record, field, index, name, low=None, high=None):
    """record[field] as a float (a finite real within the bounds), or None when absent."""
    value = record.get(field)
    return None if value is None else checks.real(f"{name} record {index}: {field!r}", value,
                                                  low, high)


def prepare_preference_data(source, tokenizer, truncation=Truncation(), name="train_dataset",
                            listwise=False):
    """Loads, tokenizes and truncates (a calign.data.Truncation) preference records.

    Records that would leave an empty completion or a prompt filling
    max_length are skipped and counted in one warning; a missing field raises
    naming the record index and the field."""
    records = load_records(source, name)
    examples, skipped = [], {}
    for index, record in enumerate(records):
        if listwise and "responses" not in record:
            raise KeyError(f"{name} record {index} lacks the field 'responses' "
                           "(loss_type='listwise' needs prompt + ranked responses)")
        prompt, completions = tokenize_record(record, index, tokenizer, name)
        prompt, completions, reason = truncation.apply(prompt, completions)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        ref = None
        if "ref_chosen_logps" in record and "ref_rejected_logps" in record:
            ref = [_number(record, field, index, name, high=0.0)
                   for field in ("ref_chosen_logps", "ref_rejected_logps")]
        margin = _number(record, "margin", index, name)
        weight = _number(record, "weight", index, name, low=0.0)
        examples.append(PreferenceExample(prompt, completions, margin, ref, index, weight))
    return report_skipped(examples, skipped, len(records), name)
