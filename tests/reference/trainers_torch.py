"""A PyTorch reference training loop for the trainers' fidelity tests.

Written from TRL 1.16's formulas and transformers' semantics, independently
of calign: each example is run as its own unpadded row through a transformers
model; sequence log-probs are sums of log_softmax gathered at the completion
tokens; the optimizer is torch.optim.AdamW with the schedule set by hand and
clip_grad_norm_. It returns the loss of every step.
"""

import math

import torch
import torch.nn.functional as F


def completion_token_logps(model, prompt, completion):
    """Per-token log-probs of `completion` after `prompt` (1-D tensor)."""
    ids = torch.tensor([list(prompt) + list(completion)])
    logp = model(ids).logits[0].log_softmax(-1)
    return logp[len(prompt) - 1:-1].gather(1, torch.tensor(completion)[:, None])[:, 0]


def prompt_token_logps(model, prompt, completion):
    """Per-token log-probs of prompt tokens 1.. (each from the ones before)."""
    ids = torch.tensor([list(prompt) + list(completion)])
    logp = model(ids).logits[0].log_softmax(-1)
    return logp[:len(prompt) - 1].gather(1, torch.tensor(prompt[1:])[:, None])[:, 0]


def linear_schedule(lr, step, total, warmup):
    if step < warmup:
        return lr * step / max(1, warmup)
    return lr * max(0.0, (total - step) / max(1, total - warmup))


def dpo_batch_loss(policy, ref, batch, beta):
    losses = []
    for ex in batch:
        p, c, r = ex["prompt_input_ids"], ex["chosen_input_ids"], ex["rejected_input_ids"]
        pc = completion_token_logps(policy, p, c).sum()
        pr = completion_token_logps(policy, p, r).sum()
        with torch.no_grad():
            rc = completion_token_logps(ref, p, c).sum()
            rr = completion_token_logps(ref, p, r).sum()
        losses.append(-F.logsigmoid(beta * ((pc - rc) - (pr - rr))))
    return torch.stack(losses).mean()


def kto_batch_loss(policy, ref, batch, beta, desirable_weight=1.0, undesirable_weight=1.0):
    """TRL's KTO: KL from mismatched pairs (prompt i, completion i-1), clamped, no gradient."""
    n = len(batch)
    with torch.no_grad():
        kl_terms = []
        for i, ex in enumerate(batch):
            other = batch[(i - 1) % n]["completion_input_ids"]
            kl_terms.append(completion_token_logps(policy, ex["prompt_input_ids"], other).sum() -
                            completion_token_logps(ref, ex["prompt_input_ids"], other).sum())
        kl = torch.stack(kl_terms).mean().clamp(min=0)
    losses = []
    for ex in batch:
        p, c = ex["prompt_input_ids"], ex["completion_input_ids"]
        with torch.no_grad():
            ref_logp = completion_token_logps(ref, p, c).sum()
        logratio = completion_token_logps(policy, p, c).sum() - ref_logp
        if ex["label"]:
            losses.append(desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl))))
        else:
            losses.append(undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio))))
    return torch.stack(losses).mean()


def log1mexp(x):
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_batch_loss(policy, batch, beta):
    """TRL's ORPO: NLL over prompt + chosen tokens of the batch, minus
    beta * mean log sigmoid(log odds) of the average completion log-probs."""
    nll_terms, ratios = [], []
    for ex in batch:
        p, c, r = ex["prompt_input_ids"], ex["chosen_input_ids"], ex["rejected_input_ids"]
        chosen_tokens = completion_token_logps(policy, p, c)
        nll_terms += [prompt_token_logps(policy, p, c), chosen_tokens]
        avg_c = chosen_tokens.mean()
        avg_r = completion_token_logps(policy, p, r).mean()
        log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
        ratios.append(F.logsigmoid(log_odds))
    nll = -torch.cat(nll_terms).mean()
    return nll - beta * torch.stack(ratios).mean()


def simpo_batch_loss(policy, batch, beta, gamma, cpo_alpha):
    """TRL's CPO with loss_type="simpo": average log-probs, margin gamma/beta,
    plus cpo_alpha times the NLL of the chosen completions."""
    losses, chosen_tokens_all = [], []
    for ex in batch:
        p, c, r = ex["prompt_input_ids"], ex["chosen_input_ids"], ex["rejected_input_ids"]
        chosen_tokens = completion_token_logps(policy, p, c)
        chosen_tokens_all.append(chosen_tokens)
        logits = chosen_tokens.mean() - completion_token_logps(policy, p, r).mean() - gamma / beta
        losses.append(-F.logsigmoid(beta * logits))
    loss = torch.stack(losses).mean()
    if cpo_alpha:
        loss = loss - cpo_alpha * torch.cat(chosen_tokens_all).mean()
    return loss


def sft_batch_loss(policy, batch):
    """Mean token cross-entropy over every token after the first."""
    terms = [completion_token_logps(policy, ex["input_ids"][:1], ex["input_ids"][1:])
             for ex in batch]
    return -torch.cat(terms).mean()


def constrained_sft_batch_loss(policy, reference, batch, betas):
    """Qi et al. 2024's token-wise constrained loss, as the official code's
    soft_sft_loss computes its gradient: weights 2 (1 - sigmoid(beta_t (log pi
    - log ref))) held constant times the token NLL, averaged over every trained
    token of the batch; its value is the paper's Eq. 3 (2 / beta_t) *
    -log sigmoid(beta_t (log pi - log ref)) (the same gradient), so the
    returned loss is Eq. 3's with the surrogate's gradient attached."""
    values, surrogate = [], []
    for ex in batch:
        ids = ex["input_ids"]
        logp = completion_token_logps(policy, ids[:1], ids[1:])
        with torch.no_grad():
            ref_logp = completion_token_logps(reference, ids[:1], ids[1:])
        beta = torch.tensor([betas[min(t, len(betas) - 1)] for t in range(len(logp))],
                            dtype=logp.dtype)
        ratio = beta * (logp - ref_logp)
        weight = (2 * (1 - torch.sigmoid(ratio))).detach()
        values.append(-(2 / beta) * F.logsigmoid(ratio.detach()))
        surrogate.append(-(weight * logp))
    value = torch.cat(values).mean()
    surrogate = torch.cat(surrogate).mean()
    return surrogate - surrogate.detach() + value


def reward_batch_loss(model, head, batch, pad_token_id):
    """TRL's RewardTrainer: -log sigmoid(r_c - r_r - margin); the reward is the
    head on the last non-pad token of prompt + completion."""
    losses = []
    for ex in batch:
        rewards = []
        for key in ("chosen_input_ids", "rejected_input_ids"):
            ids = list(ex["prompt_input_ids"]) + list(ex[key])
            last = len(ids) - 1
            while last > len(ex["prompt_input_ids"]) and ids[last] == pad_token_id:
                last -= 1
            hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
            rewards.append(hidden[last] @ head)
        losses.append(-F.logsigmoid(rewards[0] - rewards[1] - ex.get("margin", 0.0)))
    return torch.stack(losses).mean()


def train_loop(params, batch_loss, data, steps, batch_size, lr, warmup, weight_decay,
               max_grad_norm):
    """Losses of `steps` AdamW steps over `data` in order (no shuffle)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = []
    batches_per_epoch = math.ceil(len(data) / batch_size)
    for step in range(steps):
        start = (step % batches_per_epoch) * batch_size
        batch = data[start:start + batch_size]
        for group in opt.param_groups:
            group["lr"] = linear_schedule(lr, step, steps, warmup)
        loss = batch_loss(batch)
        history.append(loss.item())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
    return history
