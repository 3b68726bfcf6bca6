"""Preference data from the model's own samples.

Each builder samples N completions per prompt with `Model.generate` (one
prefill per prompt, shared by its samples, seeded), scores or compares them,
and returns (records in the DPO trainer's format, a summary of what was kept).
Records hold the sampled `*_input_ids` (what DPO trains on) and, when a
tokenizer is given, the decoded text too.

- on_policy_pairs: best vs worst sample by a scorer (Tajwar et al. 2024).
- scpo_pairs: self-consistency votes over extracted answers, vote-weighted
  (Prasad et al. 2024, ScPO).
- divpo_pairs: diverse preference optimisation (Lanchantin et al. 2025).
- self_rewarding_pairs: the policy judges its own samples with an additive
  5-point rubric (Yuan et al. 2024).
- select_by_reward_gap: keep the pairs whose DPO implicit reward gap is
  smallest (Qi et al. 2025).
- iterate: rounds of "build pairs with the current model, DPO from it" (the
  Self-Rewarding loop M1 -> M2 -> M3 of Yuan et al. 2024 by default; any
  builder above, e.g. ScPO's rounds with DPOConfig(loss_type="scpo")).
"""

from calign.selfimprove.builders import divpo_pairs, on_policy_pairs, scpo_pairs
from calign.selfimprove.judge import (DEFAULT_JUDGE_TEMPLATE, SCORE_PATTERN, parse_judge_score,
                                      self_rewarding_pairs)
from calign.selfimprove.rounds import iterate
from calign.selfimprove.sampling import sample
from calign.selfimprove.selection import select_by_reward_gap

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "SCORE_PATTERN", "divpo_pairs", "iterate",
           "on_policy_pairs", "parse_judge_score", "sample", "scpo_pairs",
           "select_by_reward_gap", "self_rewarding_pairs"]
