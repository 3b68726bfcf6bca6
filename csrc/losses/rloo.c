/* RLOO's policy loss (Ahmadian et al. 2024, "Back to Basics") as TRL 1.16's
 * RLOOTrainer: a PPO-style clipped surrogate on the SEQUENCE log-prob, one
 * importance ratio per completion, averaged over the batch. */
#include <math.h>

#include "core/status.h"
#include "losses/losses.h"

int rloo_loss(float *grad_logps, rloo_metrics *m, const float *logps, const float *old_logps,
              const float *advantages, const float *mask, int B, int T, double epsilon_low,
              double epsilon_high) {
    const double lo = 1.0 - epsilon_low, hi = 1.0 + epsilon_high;
    double loss = 0.0, low = 0.0, high = 0.0, region = 0.0, low_min = INFINITY,
           high_max = -INFINITY;
    int finite = 1;
    for (int i = 0; i < B; i++) {
        const long o = (long)i * T;
        double logp = 0.0;
        for (int t = 0; t < T; t++)
            if (mask[o + t] != 0.0f) logp += logps[o + t];
        const double old = old_logps ? old_logps[i] : logp, A = advantages[i];
        /* -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = e^{logp - old};
         * a tie sends half the gradient through each term, as torch.min. */
        const double r = exp(logp - old), clipped = fmin(fmax(r, lo), hi);
        const double a = r * A, b = clipped * A;
        const double share_a = a < b ? 1.0 : a > b ? 0.0 : 0.5;
        const double pass_b = r >= lo && r <= hi ? 1.0 : 0.0;
        loss += -fmin(a, b) / B;
        /* d loss / d logps[i, t] = mask_t r d(-min)/dr / B */
        const double d_logp = -A * (share_a + (1.0 - share_a) * pass_b) * r / B;
        for (int t = 0; t < T; t++) {
            grad_logps[o + t] = mask[o + t] != 0.0f ? (float)d_logp : 0.0f;
            finite &= isfinite(grad_logps[o + t]);
        }
        const int is_low = r < lo && A < 0, is_high = r > hi && A > 0;
        low += is_low;
        high += is_high;
        region += is_low || is_high;
        low_min = fmin(low_min, is_low);
        high_max = fmax(high_max, is_high);
    }
    m->loss = loss;
    m->clip_low_mean = low / B;
    m->clip_high_mean = high / B;
    m->clip_region_mean = region / B;
    m->clip_low_min = low_min;
    m->clip_high_max = high_max;
    return finite && isfinite(loss) ? CALIGN_OK : CALIGN_ENONFINITE;
}
