"""The online RL formulas of TRL transcribed to torch (float64), for autograd.

GRPO and RLOO as TRL 1.16's grpo_trainer.py / rloo_trainer.py compute them
(advantages in _generate_and_score_completions, losses in _compute_loss);
PPO as TRL v1.9's trl/experimental/ppo/ppo_trainer.py (the installed TRL has
no PPOTrainer). Written from the formulas, independently of calign's C code.
"""

import math

import torch


def nanstd(x, dim=None):
    """Unbiased std skipping NaN; NaN with fewer than two values."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    var = torch.where(count > 1, var, torch.full_like(var, float("nan")))
    return torch.sqrt(var).squeeze(dim)


def aggregate(rewards_per_func, weights):
    unscorable = torch.isnan(rewards_per_func).all(dim=1)
    rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = float("nan")
    return rewards, unscorable


def group_advantages(rewards_per_func, weights, G, scale_rewards, aggregation):
    if aggregation == "sum_then_normalize":
        rewards, _ = aggregate(rewards_per_func, weights)
        mean = torch.nanmean(rewards.view(-1, G), dim=1).repeat_interleave(G)
        if scale_rewards in ("group", "none"):
            std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
        else:
            std = nanstd(rewards).expand_as(rewards)
        advantages = rewards - mean
        if scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
    else:
        F = rewards_per_func.shape[1]
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        grouped = rewards_per_func.view(-1, G, F)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1).unsqueeze(1)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, F)
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = float("nan")
        advantages = (rewards - torch.nanmean(rewards)) / (nanstd(rewards) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def rloo_advantages(rewards_per_func, weights, G, beta=0.0, old=None, ref=None, mask=None,
                    clip_range=None, normalize=False):
    rewards, _ = aggregate(rewards_per_func, weights)
    if clip_range:
        rewards = rewards.clamp(min=clip_range[0], max=clip_range[1])
    kl = None
    if beta != 0.0:
        kl = ((old - ref) * mask).sum(-1)
        rewards = rewards - beta * kl
    grouped = rewards.view(-1, G)
    counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    advantages = rewards - ((total - grouped) / (counts - 1)).view(-1)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nanstd(advantages) + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), kl


def vespo_phi(advantages, log_ratio, mask, k_pos, lambda_pos, k_neg, lambda_neg):
    with torch.no_grad():
        seq = torch.sum(torch.clamp(log_ratio, -20.0, 20.0) * mask, dim=-1, keepdim=True)
        log_w = torch.clamp(seq, math.log(1e-8), 20.0)
        nonneg = advantages >= 0
        k = torch.where(nonneg, k_pos, k_neg)
        lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def grpo_loss(logps, old, ref, advantages, mask, loss_type="dapo", level="token",
              epsilon=0.2, epsilon_high=None, delta=None, beta=0.0, bias_correction=True,
              sapo_pos=1.0, sapo_neg=1.05, vespo=(2.0, 3.0, 3.0, 2.0), off_policy=None,
              max_completion_length=None, num_items=None, accumulation=1):
    """(loss, metrics); logps requires grad. The metrics are TRL's, for one process."""
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    A = advantages.unsqueeze(1)
    old = logps.detach() if old is None else old
    if off_policy is not None:
        kl_div = old - logps.detach()
        avg = (kl_div * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
        keep = ((A >= 0) | (avg <= off_policy)).to(mask.dtype)
    log_ratio = logps - old
    if level == "token":
        log_w = log_ratio
    else:
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_w)
    if beta != 0.0:
        kl = torch.exp(ref - logps) - (ref - logps) - 1
        if bias_correction:
            kl = kl * coef_1
    if loss_type == "cispo":
        per_token = -torch.clamp(coef_1, max=eps_high).detach() * A * logps
    elif loss_type == "sapo":
        tau = torch.where(A > 0, sapo_pos, sapo_neg)
        per_token = -torch.sigmoid(tau * (coef_1 - 1)) * 4 / tau * A
    elif loss_type == "vespo":
        phi = vespo_phi(A, log_ratio, mask, *vespo)
        per_token = -phi * A * logps
    else:
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        per_token = -torch.min(coef_1 * A, coef_2 * A)
    if off_policy is not None:
        per_token = per_token * keep
    if beta != 0.0:
        per_token = per_token + beta * kl
    B = logps.shape[0]
    if loss_type in ("grpo", "sapo"):
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0) / accumulation
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (B * max_completion_length) / accumulation
    elif loss_type == "luspo":
        loss = (per_token * mask).sum(-1).mean() / accumulation
    else:
        n = mask.sum() if num_items is None else torch.tensor(float(num_items))
        loss = (per_token * mask).sum() / n.clamp(min=1.0)

    def global_mean(x):
        if x.shape[1] == 1:
            return (x.sum() / x.shape[0]).item()
        return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()

    def row_means(x):
        return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

    def nan_extreme(x, fn):
        x = x[~torch.isnan(x)]
        return float("nan") if x.numel() == 0 else fn(x).item()

    metrics = {}
    if beta != 0.0:
        metrics["kl"] = global_mean(kl.detach())
    if loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):
        c = coef_1.detach()
        low = ((c < 1 - eps_low) & (A < 0)).double()
        high = ((c > 1 + eps_high) & (A > 0)).double()
        metrics["clip_ratio/low_mean"] = global_mean(low)
        metrics["clip_ratio/high_mean"] = global_mean(high)
        metrics["clip_ratio/region_mean"] = global_mean(((low + high) > 0).double())
        metrics["clip_ratio/low_min"] = nan_extreme(row_means(low), torch.min)
        metrics["clip_ratio/high_max"] = nan_extreme(row_means(high), torch.max)
    elif loss_type == "cispo":
        metrics["cispo_clip_ratio"] = global_mean(((coef_1.detach() > eps_high) & (A > 0)).double())
    elif loss_type == "vespo":
        metrics["vespo/phi_seq_mean"] = global_mean(phi)
    return loss, metrics


def rloo_loss(logps, old_logps, advantages, mask, epsilon=0.2, epsilon_high=None):
    eps_high = epsilon if epsilon_high is None else epsilon_high
    seq = (logps * mask).sum(1)
    old_logps = seq.detach() if old_logps is None else old_logps
    coef_1 = torch.exp(seq - old_logps)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + eps_high)
    loss = (-torch.min(coef_1 * advantages, coef_2 * advantages)).mean()
    c = coef_1.detach()
    low = ((c < 1 - epsilon) & (advantages < 0)).double()
    high = ((c > 1 + eps_high) & (advantages > 0)).double()
    region = ((low + high) > 0).double()
    return loss, {"clip_ratio/low_mean": low.mean().item(), "clip_ratio/low_min": low.min().item(),
                  "clip_ratio/high_mean": high.mean().item(),
                  "clip_ratio/high_max": high.max().item(),
                  "clip_ratio/region_mean": region.mean().item()}


# ---- PPO, TRL v1.9 trl/experimental/ppo/ppo_trainer.py ------------------------------------

INVALID_LOGPROB = 1.0


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def masked_whiten(values, mask, shift_mean=True):
    mean = masked_mean(values, mask)
    n = mask.sum()
    var = masked_mean((values - mean) ** 2, mask) * n / (n - 1)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def ppo_rollout(logprobs, ref_logprobs, values, scores, sequence_lengths, kl_coef, kl_estimator,
                whiten_rewards, gamma, lam):
    """TRL's PPO rollout post-processing: masks, shaped rewards, GAE, whitening.
    sequence_lengths[i] is the index of the row's last completion token (-1: none)."""
    B, T = logprobs.shape
    idx = torch.arange(T).repeat(B, 1)
    padding_mask = idx > sequence_lengths.unsqueeze(1)
    logprobs = torch.masked_fill(logprobs, padding_mask, INVALID_LOGPROB)
    ref_logprobs = torch.masked_fill(ref_logprobs, padding_mask, INVALID_LOGPROB)
    lengths_p1 = sequence_lengths + 1
    padding_mask_p1 = idx > lengths_p1.unsqueeze(1)
    values = torch.masked_fill(values, padding_mask_p1, 0)
    logr = ref_logprobs - logprobs
    kl = -logr if kl_estimator == "k1" else (logr.exp() - 1) - logr
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.clone()
    end = torch.where(lengths_p1 < T, lengths_p1, sequence_lengths)
    rewards[torch.arange(B), end] += scores
    if whiten_rewards:
        rewards = masked_whiten(rewards, ~padding_mask_p1, shift_mean=False)
        rewards = torch.masked_fill(rewards, padding_mask_p1, 0)
    last = 0
    reversed_adv = []
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t < T - 1 else 0.0
        d = rewards[:, t] + gamma * next_values - values[:, t]
        last = d + gamma * lam * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], axis=1)
    returns = advantages + values
    whitened = torch.masked_fill(masked_whiten(advantages, ~padding_mask), padding_mask, 0)
    return dict(rewards=rewards, raw_advantages=advantages, advantages=whitened, returns=returns,
                values=values, padding_mask=padding_mask, padding_mask_p1=padding_mask_p1,
                kl=kl, non_score_reward=non_score_reward)


def ppo_minibatch_loss(new_logprobs, vpred, mb_logprobs, mb_values, mb_advantage, mb_return,
                       padding_mask, padding_mask_p1, cliprange, cliprange_value, vf_coef):
    new_logprobs = torch.masked_fill(new_logprobs, padding_mask, INVALID_LOGPROB)
    mb_logprobs = torch.masked_fill(mb_logprobs, padding_mask, INVALID_LOGPROB)
    vpred = torch.masked_fill(vpred, padding_mask_p1, 0)
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), ~padding_mask_p1)
    vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).double(), ~padding_mask_p1)
    diff = new_logprobs - mb_logprobs
    ratio = torch.exp(diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), ~padding_mask)
    loss = pg_loss + vf_coef * vf_loss
    metrics = {"policy/approxkl_avg": (0.5 * (diff ** 2).mean()).item(),
               "policy/clipfrac_avg": masked_mean((pg_losses2 > pg_losses).double(),
                                                  ~padding_mask).item(),
               "loss/policy_avg": pg_loss.item(), "loss/value_avg": vf_loss.item(),
               "val/clipfrac_avg": vf_clipfrac.item(), "val/ratio": ratio.mean().item()}
    return loss, pg_loss, vf_loss, metrics
