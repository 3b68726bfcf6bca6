"""Reward-gap data selection (Qi et al. 2025)."""

import numpy as np

from calign import checks
from calign.data import Truncation, load_records, prepare_preference_data
from calign.model.preference_batch import check_fits, reward_margins
from calign.selfimprove.checks import check_model, check_tokenizer


def select_by_reward_gap(policy, reference, dataset, beta, fraction=0.1, tokenizer=None,
                         batch_size=16):
    """Keeps the `fraction` of preference pairs with the smallest DPO implicit
    reward gap beta[(log pi_c - log ref_c) - (log pi_r - log ref_r)] (Qi et al.
    2025). Returns (kept records, gaps of all records)."""
    fraction = checks.real("fraction", fraction, 0.0, 1.0, open_low=True)
    batch_size = checks.integer("batch_size", batch_size, 1)
    check_model("policy", policy)
    check_model("reference", reference)
    tokenizer = check_tokenizer("tokenizer", tokenizer)
    records = load_records(dataset, "dataset")
    if tokenizer is None:
        for index, record in enumerate(records):
            if "chosen_input_ids" not in record and "prompt_input_ids" not in record:
                raise ValueError(f"dataset record {index} holds text: pass tokenizer= (a "
                                 "calign.Tokenizer), or pre-tokenized fields")
    examples = prepare_preference_data(records, tokenizer, Truncation(), "dataset")
    if len(examples) != len(records):
        raise ValueError("some records were skipped; select_by_reward_gap needs all of them")
    check_fits(policy, examples, "dataset", "policy")
    check_fits(reference, examples, "dataset", "reference")
    gaps = reward_margins(policy, reference, examples, beta, batch_size)
    keep = np.sort(np.argsort(gaps, kind="stable")[:max(1, int(round(fraction * len(gaps))))])
    return [records[i] for i in keep], gaps
