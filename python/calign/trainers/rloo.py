"""RLOOTrainer (Ahmadian et al. 2024; TRL 1.16's RLOOTrainer): k completions
per prompt, each completion's baseline the mean reward of the other k - 1,
the KL to the reference folded into the reward (beta), and PPO's clipped
surrogate on whole-sequence ratios. calign.losses' C functions."""

import numpy as np

from calign import losses
from calign.trainers import rollouts
from calign.trainers.online_rl import OnlineRLTrainer
from calign.trainers.rl_config import RLOOConfig


class RLOOTrainer(OnlineRLTrainer):
    """RLOO, with GRPOTrainer's data, reward functions and batch scheme. The
    old policy's sequence log-probs (the ratio's denominator, and the KL's
    policy side) are the sampler's own log-probs summed: TRL computes the
    same numbers with a second forward."""

    config_class = RLOOConfig

    def _advantages(self, rollout, G):
        a = self.args
        width = max(len(c) for c in rollout.completion_ids)
        mask = rollouts.padded([np.full(len(c), t, np.float32)
                                for c, t in zip(rollout.completion_ids, rollout.trained)], width)
        kl_inputs = {}
        if a.beta != 0.0:
            kl_inputs = dict(old_per_token_logps=rollouts.padded(rollout.sampling_logps, width),
                             ref_per_token_logps=rollouts.padded(rollout.ref_logps, width),
                             completion_mask=mask)
        result = losses.rloo_advantages(
            rollout.rewards, G, beta=a.beta, reward_weights=self.reward_functions.weights,
            reward_clip_range=a.reward_clip_range, normalize_advantages=a.normalize_advantages,
            **kl_inputs)
        # TRL's frac_reward_zero_std: the groups' std of the (KL-shaped, clipped) rewards
        total = rollouts.weighted_rewards(rollout.rewards, self.reward_functions.weights)
        if a.reward_clip_range is not None:
            total = np.clip(total, *a.reward_clip_range)
        if result.kl is not None:
            total = total - a.beta * result.kl
        std = np.repeat(rollouts.nanstd(total.reshape(-1, G), axis=1), G)
        return result.advantages, std, dict(result.metrics)

    def _policy_loss(self, rollout, rows, logps, entropies, mask, train):
        a = self.args
        old = np.array([float(np.sum(rollout.sampling_logps[r], dtype=np.float64))
                        if rollout.trained[r] else 0.0 for r in rows])
        result = losses.rloo_loss(logps, rollout.advantages[rows], mask, old_logps=old,
                                  epsilon=a.epsilon, epsilon_high=a.epsilon_high)
        accum = self._accumulation(train)
        # transformers divides a loss that is not scaled for accumulation (TRL's RLOO's)
        result = result._replace(grad_logps=result.grad_logps / accum)
        metrics = {"loss": result.loss}
        metrics.update({k: v for k, v in result.metrics.items() if v is not None})
        return result, metrics
