"""GRPOTrainer (Shao et al. 2024, DeepSeekMath; TRL 1.16's GRPOTrainer):
G completions per prompt from the current policy, rewards from reward
functions and/or reward models, group-relative advantages, and the clipped
per-token policy loss of the config's loss_type, with an optional k3 KL to
a reference. The advantages and the loss are calign.losses' C functions."""

import numpy as np

from calign import losses
from calign.trainers import rollouts
from calign.trainers.online_rl import OnlineRLTrainer
from calign.trainers.rl_config import GRPOConfig


class GRPOTrainer(OnlineRLTrainer):
    """GRPO. train_dataset holds {"prompt": text or messages, ...} records;
    reward_funcs is a function with TRL's signature, a calign.RewardModel, a
    reward model folder, or a list of them (weighted by args.reward_weights).

    The old policy's log-probs, needed when a generation batch outlives one
    optimizer step (steps_per_generation > gradient_accumulation_steps or
    num_iterations > 1), are the sampler's own (log_softmax(logits / T) of
    each drawn token): TRL computes the same numbers with a second forward."""

    config_class = GRPOConfig

    def _advantages(self, rollout, G):
        a = self.args
        advantages = losses.group_advantages(
            rollout.rewards, G, scale_rewards=a.scale_rewards,
            reward_weights=self.reward_functions.weights,
            multi_objective_aggregation=a.multi_objective_aggregation)
        return advantages, self._logged_std(rollout, G), {}

    def _logged_std(self, rollout, G):
        """The std TRL's frac_reward_zero_std tests, one per row: the group's
        (or the batch's) std of the weighted rewards; with normalize_then_sum,
        the batch std of the summed normalised rewards."""
        a = self.args
        if a.multi_objective_aggregation == "normalize_then_sum":
            grouped = rollout.rewards.astype(np.float64).reshape(-1, G, len(self.reward_functions))
            with np.errstate(all="ignore"):
                mean = np.nanmean(grouped, axis=1, keepdims=True)
                normalised = (grouped - mean) / (rollouts.nanstd(grouped, axis=1)[:, None, :]
                                                 + 1e-4)
            total = rollouts.weighted_rewards(normalised.reshape(-1, len(self.reward_functions)),
                                              self.reward_functions.weights)
            return np.full(total.size, rollouts.nanstd(total))
        total = rollouts.weighted_rewards(rollout.rewards, self.reward_functions.weights)
        if a.scale_rewards == "batch":
            return np.full(total.size, rollouts.nanstd(total))
        return np.repeat(rollouts.nanstd(total.reshape(-1, G), axis=1), G)

    def _needs_old_logps(self):
        """TRL keeps the old policy's log-probs when a generation batch serves
        more than one optimizer step."""
        a = self.args
        return a.gradient_accumulation_steps % (a.steps_per_generation * a.num_iterations) != 0

    def _entropy_mask(self, entropies, mask):
        """TRL's top_entropy_quantile: the tokens whose entropy reaches the
        (1 - q) quantile of the micro-batch's."""
        q = self.args.top_entropy_quantile
        if q >= 1.0:
            return None
        chosen = mask > 0
        if not chosen.any():
            return np.zeros_like(mask)
        threshold = np.quantile(entropies[chosen].astype(np.float64), 1.0 - q)
        return ((entropies * mask >= threshold) & chosen).astype(np.float32)

    def _loss_settings(self):
        a = self.args
        return losses.grpo_settings(
            loss_type=a.loss_type, importance_sampling_level=a.importance_sampling_level,
            epsilon=a.epsilon, epsilon_high=a.epsilon_high, delta=a.delta, beta=a.beta,
            use_bias_correction_kl=a.use_bias_correction_kl,
            sapo_temperature_pos=a.sapo_temperature_pos,
            sapo_temperature_neg=a.sapo_temperature_neg, vespo_k_pos=a.vespo_k_pos,
            vespo_lambda_pos=a.vespo_lambda_pos, vespo_k_neg=a.vespo_k_neg,
            vespo_lambda_neg=a.vespo_lambda_neg,
            off_policy_mask_threshold=a.off_policy_mask_threshold)

    def _num_items(self, rollout, train):
        """dapo/cispo/vespo's normaliser: the tokens of the generation batch,
        spread over the micro-batches it is split into (TRL's)."""
        a = self.args
        share = a.gradient_accumulation_steps / a.steps_per_generation if train else 1.0
        return max(rollout.num_items * share, 1.0)

    def _train_rows(self, rollout, rows, train):
        """The training step of a micro-batch in one fused pass (Model.score_grpo):
        log-probs, loss and lm_head backward chunk by chunk. top_entropy_quantile
        needs every token's entropy before any loss, and evaluation no gradient:
        those take the two-pass path."""
        if not train or self.args.top_entropy_quantile < 1.0:
            return super()._train_rows(rollout, rows, train)
        a = self.args
        packed = rollouts.PackedRows(rollout, rows)
        order = packed.order
        mask = np.concatenate([np.full(len(rollout.completion_ids[r]), rollout.trained[r],
                                       np.float32) for r in order])
        old = (np.concatenate([rollout.sampling_logps[r] for r in order])
               if self._needs_old_logps() else None)
        ref = (np.concatenate([rollout.ref_logps[r] for r in order])
               if self.ref_model is not None else None)
        hidden = self.model.forward_packed(packed.batch, train=True)
        out = self.model.score_grpo(
            hidden, packed.batch, packed.lengths, rollout.advantages[order], mask,
            self._loss_settings(), old_logps=old, ref_logps=ref, temperature=a.temperature,
            max_completion_length=a.max_completion_length,
            num_items_in_batch=self._num_items(rollout, train),
            gradient_accumulation_steps=self._accumulation(train=True))
        self.model.backward_packed(packed.batch, out.d_hidden)
        metrics = {"loss": out.loss * self._accumulation(train=True),
                   "entropy": float((out.stats["entropy"] * mask).sum() /
                                    max(float(mask.sum()), 1.0))}
        metrics.update({k: v for k, v in out.metrics.items() if v is not None})
        return metrics

    def _policy_loss(self, rollout, rows, logps, entropies, mask, train):
        a = self.args
        width = logps.shape[1]
        accum = self._accumulation(train)
        old = (rollouts.padded([rollout.sampling_logps[r] for r in rows], width)
               if train and self._needs_old_logps() else None)
        ref = (rollouts.padded([rollout.ref_logps[r] for r in rows], width)
               if self.ref_model is not None else None)
        result = losses.grpo_loss(
            logps, rollout.advantages[rows], mask, old_per_token_logps=old,
            ref_per_token_logps=ref, entropy_mask=self._entropy_mask(entropies, mask),
            **self._loss_settings(), max_completion_length=a.max_completion_length,
            num_items_in_batch=self._num_items(rollout, train),
            gradient_accumulation_steps=accum)
        # TRL logs the window's summed micro-batch losses; the trainer averages
        # micro-batch metrics, hence the factor
        metrics = {"loss": result.loss * accum}
        metrics.update({k: v for k, v in result.metrics.items() if v is not None})
        return result, metrics
