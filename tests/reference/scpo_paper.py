"""The ScPO loss transcribed from the paper, in torch (float64), for autograd.

Prasad et al. 2024, "Self-Consistency Preference Optimization" (arXiv
2411.04109), Section 2: for a pair (y+, y-) of the model M_t's samples with
vote counts V(y+) > V(y-) out of k samples,

    w(x) = (V(y+) - V(y-)) / k
    l_ScPO = -w(x) log sigma(beta log M_theta(y+|x)/M_t(y+|x) - beta log M_theta(y-|x)/M_t(y-|x))
             - alpha w(x) / |y+| log M_theta(y+|x)

where M_t, the model of the previous iteration, is the reference and |y+| the
number of tokens of y+.
"""

import torch.nn.functional as F


def scpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, votes_chosen,
              votes_rejected, k, chosen_tokens, beta, alpha):
    w = (votes_chosen - votes_rejected) / k
    margin = beta * (policy_chosen - ref_chosen) - beta * (policy_rejected - ref_rejected)
    return -w * F.logsigmoid(margin) - alpha * w / chosen_tokens * policy_chosen
