"""Synthetic alignment data.

- magpie: instructions and answers an aligned model writes from its chat
  template alone (Xu et al. 2024), filters, and preference pairs.
- sycophancy: Wei et al. (2023)'s synthetic claims against sycophancy, its
  evaluation, and the opinion-flip measure.
- self_taught: Self-Taught Evaluators (Wang et al. 2024), a judge trained
  on its own correct verdicts over pairs that are worse by construction.
- toy: the arithmetic toy world they are measured on.
"""
