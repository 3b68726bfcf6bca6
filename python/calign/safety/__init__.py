"""Safety alignment (issue 18): data and evaluations from Qi et al. 2024,
"Safety Alignment Should Be Made More Than Just a Few Tokens Deep".

- recovery_examples: the paper's safety recovery examples (Eq. 2), mixed with
  utility data;
- prefilling_attack: decode after the first k tokens of a harmful answer are
  forced (the attack success rate per k);
- per_position_kl: KL(aligned || base) per response token (the paper's Fig. 1)."""

from calign.safety.evaluation import PrefillingResult, per_position_kl, prefilling_attack
from calign.safety.recovery import recovery_examples

__all__ = ["PrefillingResult", "per_position_kl", "prefilling_attack", "recovery_examples"]
