"""TRL 1.16's loss formulas transcribed to torch (float64), for autograd.

Each function takes policy and reference log-prob tensors (requires_grad on
the policy ones) and returns (per-example losses, chosen rewards, rejected
rewards), line for line as trl/trainer/dpo_trainer.py, kto_trainer.py and
trl/experimental/{orpo,cpo} compute them.
"""

import math

import torch
import torch.nn.functional as F


def f_scores(logratios, f_divergence_type, alpha_coef):
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "forward_kl":
        return 1 - torch.exp(-logratios)
    if f_divergence_type == "js_divergence":
        return math.log(2) + F.logsigmoid(logratios)
    if abs(alpha_coef - 1.0) < 1e-6:
        return logratios
    t = torch.clamp((alpha_coef - 1.0) * logratios, max=80.0)
    return (torch.exp(t) - 1.0) / (alpha_coef - 1.0)


def dpo(pc, pr, rc, rr, loss_type, beta=0.1, label_smoothing=0.0, f_divergence_type="reverse_kl",
        alpha_coef=1.0, discopop_tau=0.05, chosen_lengths=None, rejected_lengths=None,
        scpo_alpha=1.0):
    chosen_logratios, rejected_logratios = pc - rc, pr - rr
    chosen_scores = f_scores(chosen_logratios, f_divergence_type, alpha_coef)
    rejected_scores = f_scores(rejected_logratios, f_divergence_type, alpha_coef)
    delta = chosen_scores - rejected_scores
    eps = label_smoothing
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * delta)
    elif loss_type in ("ipo", "sigmoid_norm"):
        d = chosen_scores / chosen_lengths.clamp(min=1.0) - \
            rejected_scores / rejected_lengths.clamp(min=1.0)
        loss = (d - 1 / (2 * beta)) ** 2 if loss_type == "ipo" else -F.logsigmoid(beta * d)
    elif loss_type == "exo_pair":
        u = beta * delta
        loss = torch.sigmoid(u) * (F.logsigmoid(u) - math.log1p(-eps)) + \
            torch.sigmoid(-u) * (F.logsigmoid(-u) - math.log(eps))
    elif loss_type == "nca_pair":
        c, r = beta * chosen_logratios, beta * rejected_logratios
        loss = -F.logsigmoid(c) - 0.5 * F.logsigmoid(-c) - 0.5 * F.logsigmoid(-r)
    elif loss_type == "robust":
        loss = (-(1 - eps) * F.logsigmoid(beta * delta) + eps * F.logsigmoid(-beta * delta)) / \
            (1 - 2 * eps)
    elif loss_type == "bco_pair":
        loss = -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
    elif loss_type == "sppo_hard":
        loss = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    elif loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            a, b = torch.sort(pc - pr)[0], torch.sort(rc - rr)[0]
        else:
            a, b = torch.sort(chosen_logratios)[0], torch.sort(rejected_logratios)[0]
        d = a - b
        loss = -F.logsigmoid(beta * d) * (1 - eps) - F.logsigmoid(-beta * d) * eps
    elif loss_type == "apo_zero":
        loss = 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
    elif loss_type == "apo_down":
        loss = torch.sigmoid(beta * chosen_logratios) + 1 - \
            torch.sigmoid(beta * (chosen_logratios - rejected_logratios))
    elif loss_type == "discopop":
        logits = beta * delta
        m = torch.sigmoid(logits / discopop_tau)
        loss = -F.logsigmoid(logits) * (1 - m) + torch.exp(-logits) * m
    elif loss_type == "sft":
        loss = (-pc.sum() / chosen_lengths.sum()).expand(pc.shape[0])
    elif loss_type == "scpo":  # not in TRL: sigmoid on the f-divergence scores + NLL / |y+|
        loss = -F.logsigmoid(beta * delta) - scpo_alpha * pc / chosen_lengths.clamp(min=1.0)
    else:
        raise ValueError(loss_type)
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def kto(policy, ref, labels, kl, beta, loss_type, desirable_weight, undesirable_weight):
    """Per example in input order (TRL concatenates chosen then rejected)."""
    logratios = policy - ref
    if loss_type == "kto":
        desirable = 1 - torch.sigmoid(beta * (logratios - kl))
        undesirable = 1 - torch.sigmoid(beta * (kl - logratios))
    else:
        desirable = 1 - torch.sigmoid(beta * logratios)
        undesirable = torch.sigmoid(beta * logratios)
    loss = torch.where(labels, desirable_weight * desirable, undesirable_weight * undesirable)
    return loss, beta * logratios.detach()


def log1mexp(x):
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)),
                       torch.log(-torch.expm1(x)))


def orpo(pc, pr, beta):
    log_odds = (pc - pr) - (log1mexp(pc) - log1mexp(pr))
    return -beta * F.logsigmoid(log_odds), beta * pc.detach(), beta * pr.detach(), log_odds


def cpo(pc, pr, beta, loss_type, label_smoothing, simpo_gamma, alpha):
    if alpha != 0.0:
        rc = (1 - torch.exp(pc).pow(-alpha)) / alpha
        rr = (1 - torch.exp(pr).pow(-alpha)) / alpha
        logits = rc - rr
    else:
        rc, rr = pc, pr
        logits = pc - pr
    eps = label_smoothing
    if loss_type == "simpo":
        logits = logits - simpo_gamma / beta
        loss = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * logits) * (1 - eps) - F.logsigmoid(-beta * logits) * eps
    elif loss_type == "hinge":
        loss = torch.relu(1 - beta * logits)
    else:
        loss = (logits - 1 / (2 * beta)) ** 2
    return loss, beta * rc.detach(), beta * rr.detach()


def reward(rc, rr, margin, center):
    x = rc - rr - (margin if margin is not None else 0.0)
    loss = -F.logsigmoid(x)
    if center is not None:
        loss = loss + center * (rc + rr) ** 2
    return loss


def plackett_luce(policy, ref, beta):
    s = beta * (policy - ref)
    K = s.shape[1]
    terms = [s[:, k] - torch.logsumexp(s[:, k:], dim=1) for k in range(K - 1)]
    return -torch.stack(terms, dim=1).sum(dim=1), s.detach()
