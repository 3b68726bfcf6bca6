"""Reward-gap data selection (Qi et al. 2025)."""

import numpy as np

from calign import losses
from calign.model import Model
from calign.selfimprove.checks import _check_int, _check_real, _tokenizer


def select_by_reward_gap(policy, reference, dataset, beta, fraction=0.1, tokenizer=None,
                         batch_size=16):
    """Keeps the `fraction` of preference pairs with the smallest DPO implicit
    reward gap beta[(log pi_c - log ref_c) - (log pi_r - log ref_r)] (Qi et al.
    2025). Returns (kept records, gaps of all records)."""
    from calign.data.preference import prepare_preference_data
    from calign.data.records import load_records
    from calign.trainers.config import DPOConfig
    from calign.trainers.packed import PackedPreferences

    fraction = _check_real(fraction, "fraction", 0.0, 1.0, "a number in (0, 1]")
    if fraction == 0.0:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    batch_size = _check_int(batch_size, "batch_size", 1)
    for name, m in (("policy", policy), ("reference", reference)):
        if not isinstance(m, Model):
            raise TypeError(f"{name} must be a calign.Model")
    tokenizer = _tokenizer(tokenizer)
    records = load_records(dataset, "dataset")
    if tokenizer is None:
        for index, record in enumerate(records):
            if "chosen_input_ids" not in record and "prompt_input_ids" not in record:
                raise ValueError(f"dataset record {index} holds text: pass tokenizer= (a "
                                 "calign.Tokenizer), or pre-tokenized fields")
    examples = prepare_preference_data(records, tokenizer, DPOConfig(output_dir="unused",
                                                                     max_length=None),
                                       "dataset")
    if len(examples) != len(records):
        raise ValueError("some records were skipped; select_by_reward_gap needs all of them")
    sums = {}
    for name, m in (("policy", policy), ("reference", reference)):
        parts = []
        for i in range(0, len(examples), batch_size):
            packed = PackedPreferences(examples[i:i + batch_size])
            hidden = m.forward_packed(packed.batch)
            parts.append(packed.sequence_sums(m.packed_scores(hidden, packed.batch)))
        sums[name] = np.concatenate(parts)
    out = losses.dpo_loss(sums["policy"][:, 0], sums["policy"][:, 1], sums["reference"][:, 0],
                          sums["reference"][:, 1], beta=beta)
    gaps = out.chosen_rewards - out.rejected_rewards
    keep = np.sort(np.argsort(gaps, kind="stable")[:max(1, int(round(fraction * len(gaps))))])
    return [records[i] for i in keep], gaps
