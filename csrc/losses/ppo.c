/* PPO for language models as TRL's experimental PPOTrainer implements it
 * (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT): a per-token KL
 * penalty folded into the rewards with the reward model's score at the end,
 * generalised advantage estimation (Schulman et al. 2016), and the clipped
 * policy and value losses of Schulman et al. 2017. */
#include <math.h>

#include "core/status.h"
#include "losses/losses.h"

const char *const KL_ESTIMATOR_NAMES[N_KL_ESTIMATORS] = {
    [KL_K1] = "k1",
    [KL_K3] = "k3",
};

void ppo_shape_rewards(float *rewards, double *kl_sums, const float *scores, const float *logps,
                       const float *ref_logps, const float *mask, const int *score_index, int B,
                       int T, double kl_coef, kl_estimator estimator) {
    for (int i = 0; i < B; i++) {
        const long o = (long)i * T;
        double kl_sum = 0.0;
        for (int t = 0; t < T; t++) {
            double kl = 0.0;
            if (mask[o + t] != 0.0f) {
                /* Schulman's estimators of KL(pi || ref) from log r = ref - logp:
                 * k1 = -log r, k3 = (r - 1) - log r */
                const double log_r = (double)ref_logps[o + t] - logps[o + t];
                kl = estimator == KL_K1 ? -log_r : expm1(log_r) - log_r;
            }
            kl_sum += kl;
            double reward = -kl_coef * kl;
            if (t == score_index[i]) reward += scores[i];
            rewards[o + t] = (float)reward;
        }
        kl_sums[i] = kl_sum;
    }
}

int masked_whiten(float *out, const float *values, const float *mask, long n, int shift_mean) {
    double count = 0.0, sum = 0.0;
    for (long k = 0; k < n; k++)
        if (mask[k] != 0.0f) { count += 1.0; sum += values[k]; }
    if (count < 2.0) return CALIGN_EINVAL;
    const double mean = sum / count;
    double ss = 0.0;
    for (long k = 0; k < n; k++)
        if (mask[k] != 0.0f) ss += ((double)values[k] - mean) * ((double)values[k] - mean);
    /* unbiased variance, as TRL's masked_var */
    const double scale = 1.0 / sqrt(ss / (count - 1.0) + 1e-8);
    for (long k = 0; k < n; k++)
        out[k] = mask[k] != 0.0f
                     ? (float)(((double)values[k] - mean) * scale + (shift_mean ? 0.0 : mean))
                     : 0.0f;
    return CALIGN_OK;
}

void gae(float *advantages, float *returns, const float *rewards, const float *values,
         const float *mask, int B, int T, double gamma, double lam) {
    for (int i = 0; i < B; i++) {
        const long o = (long)i * T;
        double next_value = 0.0, next_advantage = 0.0;
        /* reverse recursion: delta_t = r_t + gamma V_{t+1} - V_t,
         * A_t = delta_t + gamma lam A_{t+1} (V_T = A_T = 0) */
        for (int t = T - 1; t >= 0; t--) {
            const int in = mask[o + t] != 0.0f;
            const double r = in ? rewards[o + t] : 0.0, v = in ? values[o + t] : 0.0;
            const double a = r + gamma * next_value - v + gamma * lam * next_advantage;
            advantages[o + t] = (float)a;
            returns[o + t] = (float)(a + v);
            next_value = v;
            next_advantage = a;
        }
    }
}

int ppo_losses(float *grad_logps, float *grad_values, ppo_metrics *m, const float *logps,
               const float *old_logps, const float *values, const float *old_values,
               const float *advantages, const float *returns, const float *mask,
               const float *value_mask, int B, int T, double cliprange, double cliprange_value,
               double vf_coef) {
    const long n = (long)B * T;
    double tokens = 0.0, value_tokens = 0.0;
    for (long k = 0; k < n; k++) {
        tokens += mask[k];
        value_tokens += value_mask[k];
    }
    if (tokens == 0.0 || value_tokens == 0.0) return CALIGN_EINVAL;
    double pg = 0.0, vf = 0.0, pg_clipped = 0.0, vf_clipped = 0.0, sq_diff = 0.0, ratios = 0.0;
    for (long k = 0; k < n; k++) {
        grad_logps[k] = grad_values[k] = 0.0f;
        if (mask[k] != 0.0f) {
            /* max(-A r, -A clip(r, 1 - c, 1 + c)); ties split as torch.max */
            const double diff = (double)logps[k] - old_logps[k], r = exp(diff), A = advantages[k];
            const double clipped = fmin(fmax(r, 1.0 - cliprange), 1.0 + cliprange);
            const double l1 = -A * r, l2 = -A * clipped;
            const double share1 = l1 > l2 ? 1.0 : l1 < l2 ? 0.0 : 0.5;
            const double pass2 = r >= 1.0 - cliprange && r <= 1.0 + cliprange ? 1.0 : 0.0;
            pg += fmax(l1, l2);
            pg_clipped += l2 > l1;
            grad_logps[k] = (float)(-A * (share1 + (1.0 - share1) * pass2) * r / tokens);
            sq_diff += diff * diff;
            ratios += r;
        } else {
            ratios += 1.0; /* TRL's padding holds equal log-probs: ratio 1 */
        }
        if (value_mask[k] != 0.0f) {
            /* 0.5 max((v - R)^2, (clip(v, V_old +- c) - R)^2) */
            const double v = values[k], R = returns[k], ov = old_values[k];
            const double vc = fmin(fmax(v, ov - cliprange_value), ov + cliprange_value);
            const double l1 = (v - R) * (v - R), l2 = (vc - R) * (vc - R);
            const double share1 = l1 > l2 ? 1.0 : l1 < l2 ? 0.0 : 0.5;
            const double pass2 = v >= ov - cliprange_value && v <= ov + cliprange_value ? 1.0 : 0.0;
            vf += fmax(l1, l2);
            vf_clipped += l2 > l1;
            const double d = share1 * 2.0 * (v - R) + (1.0 - share1) * 2.0 * (vc - R) * pass2;
            grad_values[k] = (float)(vf_coef * 0.5 * d / value_tokens);
        }
    }
    m->pg_loss = pg / tokens;
    m->vf_loss = 0.5 * vf / value_tokens;
    m->loss = m->pg_loss + vf_coef * m->vf_loss;
    m->pg_clipfrac = pg_clipped / tokens;
    m->vf_clipfrac = vf_clipped / value_tokens;
    /* TRL: 0.5 mean(diff^2) and mean(ratio) over all B * T positions */
    m->approxkl = 0.5 * sq_diff / n;
    m->ratio_mean = ratios / n;
    if (!isfinite(m->loss)) return CALIGN_ENONFINITE;
    for (long k = 0; k < n; k++)
        if (!isfinite(grad_logps[k]) || !isfinite(grad_values[k])) return CALIGN_ENONFINITE;
    return CALIGN_OK;
}
