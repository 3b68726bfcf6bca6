"""Safety alignment (issue 18): data and evaluations from Qi et al. 2024,
"Safety Alignment Should Be Made More Than Just a Few Tokens Deep".

- recovery_examples: the paper's safety recovery examples (Eq. 2), mixed with
  utility data;
- prefilling_attack: decode after the first k tokens of a harmful answer are
  forced (the attack success rate per k);
- per_position_kl: KL(aligned || base) per response token (the paper's Fig. 1);
- backtracking_sft_records, backtracking_dpo_records: training records for
  backtracking with a reset token (Zhang et al. 2024), which
  Model.generate(reset_token_id=...) honours at decode time.

The token-wise constrained objective is SFTConfig(loss_type="token_constrained")
and calign.losses.token_constrained_loss; decode-time alignment (URIAL, RAIN,
best-of-N) is calign.decoding."""

from calign.safety.backtracking import (RESET_TOKEN, backtracking_dpo_records,
                                        backtracking_sft_records)
from calign.safety.evaluation import PrefillingResult, per_position_kl, prefilling_attack
from calign.safety.recovery import recovery_examples

__all__ = ["PrefillingResult", "RESET_TOKEN", "backtracking_dpo_records",
           "backtracking_sft_records", "per_position_kl", "prefilling_attack",
           "recovery_examples"]
