/* Advantages of the group-sampling online methods, as TRL 1.16 computes them
 * from the rewards of a generation batch: GRPO's group-relative advantages
 * (Shao et al. 2024, DeepSeekMath; scale_rewards "batch" from PPO-Lite, Hu et
 * al. 2025; normalize_then_sum from GDPO, arXiv 2601.05242) and RLOO's
 * leave-one-out baseline (Ahmadian et al. 2024). NaN marks a missing reward;
 * statistics skip NaN as torch.nanmean and TRL's nanstd do. */
#include <math.h>

#include "losses/losses.h"

const char *const SCALE_REWARDS_NAMES[N_SCALE_REWARDS] = {
    [SCALE_GROUP] = "group",
    [SCALE_BATCH] = "batch",
    [SCALE_NONE] = "none",
};

const char *const REWARD_AGGREGATION_NAMES[N_REWARD_AGGREGATIONS] = {
    [AGG_SUM_THEN_NORMALIZE] = "sum_then_normalize",
    [AGG_NORMALIZE_THEN_SUM] = "normalize_then_sum",
};

/* TRL adds this to the standard deviation before dividing by it. */
#define STD_EPS 1e-4

/* Mean of the non-NaN x[k * stride], k < n; NaN when all are NaN. */
static double nan_mean(const double *x, int n, int stride) {
    double sum = 0.0;
    int count = 0;
    for (int k = 0; k < n; k++) {
        double v = x[(long)k * stride];
        if (!isnan(v)) { sum += v; count++; }
    }
    return count ? sum / count : NAN;
}

/* Unbiased standard deviation of the non-NaN entries (TRL's nanstd); NaN
 * with fewer than two. */
static double nan_std(const double *x, int n, int stride) {
    double mean = nan_mean(x, n, stride), ss = 0.0;
    int count = 0;
    for (int k = 0; k < n; k++) {
        double v = x[(long)k * stride];
        if (!isnan(v)) { ss += (v - mean) * (v - mean); count++; }
    }
    return count > 1 ? sqrt(ss / (count - 1)) : NAN;
}

/* Weighted sum over the F rewards of each completion, NaN terms skipped; NaN
 * when every function gave NaN (the completion is unscorable). */
static void weighted_rewards(double *out, const float *rewards, const float *weights, int B,
                             int F) {
    for (int i = 0; i < B; i++) {
        double sum = 0.0;
        int scored = 0;
        for (int j = 0; j < F; j++) {
            double r = rewards[(long)i * F + j];
            if (!isnan(r)) { sum += weights[j] * r; scored = 1; }
        }
        out[i] = scored ? sum : NAN;
    }
}

/* NaN (no reward, or an undefined statistic) becomes 0, as torch.nan_to_num. */
static float advantage_or_zero(double a) { return isnan(a) ? 0.0f : (float)a; }

void group_advantages(float *advantages, const float *rewards, const float *weights, int B,
                      int F, int G, scale_rewards_kind scale, reward_aggregation aggregation,
                      double *work) {
    double *reward = work, *z = work + B;
    if (aggregation == AGG_NORMALIZE_THEN_SUM) {
        /* GDPO: each function's rewards standardised within the group, then
         * the weighted sum standardised over the batch. */
        for (int i = 0; i < B; i++) reward[i] = 0.0;
        for (int j = 0; j < F; j++) {
            for (int i = 0; i < B; i++) z[i] = rewards[(long)i * F + j];
            for (int g0 = 0; g0 < B; g0 += G) {
                double mean = nan_mean(z + g0, G, 1), std = nan_std(z + g0, G, 1);
                for (int i = g0; i < g0 + G; i++) {
                    double standardised = (z[i] - mean) / (std + STD_EPS);
                    if (!isnan(standardised)) reward[i] += weights[j] * standardised;
                }
            }
        }
        for (int i = 0; i < B; i++) {
            int scored = 0;
            for (int j = 0; j < F; j++) scored |= !isnan(rewards[(long)i * F + j]);
            if (!scored) reward[i] = NAN;
        }
        double mean = nan_mean(reward, B, 1), std = nan_std(reward, B, 1);
        for (int i = 0; i < B; i++)
            advantages[i] = advantage_or_zero((reward[i] - mean) / (std + STD_EPS));
        return;
    }
    /* sum_then_normalize: A_i = (r_i - mean_group) / (std + 1e-4), std over
     * the group or the batch, or no division for "none" (Dr. GRPO). */
    weighted_rewards(reward, rewards, weights, B, F);
    double batch_std = scale == SCALE_BATCH ? nan_std(reward, B, 1) : NAN;
    for (int g0 = 0; g0 < B; g0 += G) {
        double mean = nan_mean(reward + g0, G, 1);
        double std = scale == SCALE_BATCH ? batch_std : nan_std(reward + g0, G, 1);
        for (int i = g0; i < g0 + G; i++) {
            double a = reward[i] - mean;
            if (scale != SCALE_NONE) a /= std + STD_EPS;
            advantages[i] = advantage_or_zero(a);
        }
    }
}

void rloo_advantages(float *advantages, const float *rewards, const float *weights,
                     const double *kl, int B, int F, int G, double beta, int clip,
                     double clip_low, double clip_high, int normalize, double *work) {
    double *reward = work;
    weighted_rewards(reward, rewards, weights, B, F);
    for (int i = 0; i < B; i++) {
        if (clip && !isnan(reward[i]))
            reward[i] = reward[i] < clip_low ? clip_low : reward[i] > clip_high ? clip_high
                                                                                 : reward[i];
        /* RLOO folds the KL into the reward, per sequence (first-order k1). */
        if (kl) reward[i] -= beta * kl[i];
    }
    /* baseline_i = (sum of the group's scorable rewards - r_i) / (count - 1):
     * NaN for an unscorable completion and for a group's only scorable one. */
    for (int g0 = 0; g0 < B; g0 += G) {
        double sum = 0.0;
        int count = 0;
        for (int i = g0; i < g0 + G; i++)
            if (!isnan(reward[i])) { sum += reward[i]; count++; }
        for (int i = g0; i < g0 + G; i++)
            reward[i] = count > 1 ? reward[i] - (sum - reward[i]) / (count - 1) : NAN;
    }
    if (normalize) { /* over the batch's scorable completions */
        double mean = nan_mean(reward, B, 1), std = nan_std(reward, B, 1);
        for (int i = 0; i < B; i++) reward[i] = (reward[i] - mean) / (std + STD_EPS);
    }
    for (int i = 0; i < B; i++) advantages[i] = advantage_or_zero(reward[i]);
}

void masked_row_difference_sums(double *out, const float *x, const float *y, const float *mask,
                                int B, int T) {
    for (int i = 0; i < B; i++) {
        double sum = 0.0;
        for (long k = (long)i * T; k < (long)(i + 1) * T; k++)
            if (mask[k] != 0.0f) sum += (double)x[k] - (double)y[k];
        out[i] = sum;
    }
}
