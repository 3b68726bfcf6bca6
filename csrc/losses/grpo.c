/* GRPO's per-token policy loss and its gradient with respect to the current
 * policy's token log-probs, for every loss_type of TRL 1.16's GRPOTrainer:
 *   grpo     Shao et al. 2024 (DeepSeekMath), per-sequence token mean
 *   bnpo     token mean over the batch
 *   dr_grpo  Liu et al. 2025 (Dr. GRPO), fixed normaliser B * L
 *   dapo     Yu et al. 2025 (DAPO), token mean over the accumulated batch
 *   cispo    MiniMax-M1 2025: clipped, detached IS weight times log pi
 *   sapo     arXiv 2511.20347: sigmoid gate instead of the hard clip
 *   luspo    arXiv 2602.05261: sequence loss times the sequence length
 *   vespo    arXiv 2602.10693: detached gamma weight of the sequence ratio
 * with GSPO's sequence-level ratio (Zheng et al. 2025), INTELLECT-2's delta,
 * the k3 KL of Schulman (2020) with DeepSeek-V3.2's bias correction, and
 * DeepSeek-V3.2's off-policy sequence mask (eq. 9, old log-probs as the
 * sampler's).
 *
 * Gradients follow torch's conventions where TRL's loss is not smooth: the
 * min of two equal terms sends half the gradient through each, and a clamp
 * passes the gradient on its closed interval. */
#include <float.h>
#include <math.h>
#include <stddef.h>

#include "core/status.h"
#include "core/threads.h"
#include "losses/losses.h"
#include "losses/scalar_math.h"

const char *const GRPO_LOSS_NAMES[GRPO_N_LOSS_TYPES] = {
    [GRPO_GRPO] = "grpo",   [GRPO_BNPO] = "bnpo", [GRPO_DR_GRPO] = "dr_grpo",
    [GRPO_DAPO] = "dapo",   [GRPO_CISPO] = "cispo", [GRPO_SAPO] = "sapo",
    [GRPO_LUSPO] = "luspo", [GRPO_VESPO] = "vespo",
};

const char *const IMPORTANCE_SAMPLING_LEVEL_NAMES[N_IMPORTANCE_SAMPLING_LEVELS] = {
    [IS_TOKEN] = "token",
    [IS_SEQUENCE] = "sequence",
};

static int is_clipped_surrogate(grpo_loss_type t) {
    return t == GRPO_GRPO || t == GRPO_BNPO || t == GRPO_DR_GRPO || t == GRPO_DAPO ||
           t == GRPO_LUSPO;
}

double grpo_row_weight(const grpo_params *p, double row_tokens, double batch_tokens, int B,
                       int max_completion_length, double num_items_in_batch,
                       int gradient_accumulation_steps) {
    double per_step = 1.0 / gradient_accumulation_steps;
    switch (p->loss_type) {
    case GRPO_GRPO:
    case GRPO_SAPO: return per_step / (B * fmax(row_tokens, 1.0));
    case GRPO_BNPO: return per_step / fmax(batch_tokens, 1.0);
    case GRPO_DR_GRPO: return per_step / ((double)B * max_completion_length);
    case GRPO_LUSPO: return per_step / B;
    default: return 1.0 / fmax(num_items_in_batch, 1.0); /* dapo, cispo, vespo */
    }
}

/* The policy term of one token (or of the sequence, at sequence level) as a
 * function of the importance weight w: value, d value / d w (through w) and
 * d value / d logp (direct, for cispo and vespo, whose weights are
 * detached and multiply log pi). Also the clip flags TRL logs. */
typedef struct {
    double value, d_weight, d_logp;
    int low, high, cispo_clipped;
} policy_term;

static policy_term policy_term_at(double w, double logp, double A, double phi,
                                  const grpo_params *p) {
    policy_term r = {0};
    switch (p->loss_type) {
    case GRPO_CISPO: { /* -min(w, eps_high).detach() A logp */
        double coef = fmin(w, p->epsilon_high);
        r.value = -coef * A * logp;
        r.d_logp = -coef * A;
        r.cispo_clipped = w > p->epsilon_high && A > 0;
        return r;
    }
    case GRPO_SAPO: { /* -sigma(tau (w - 1)) 4 / tau A, tau by the sign of A */
        double tau = A > 0 ? p->sapo_temperature_pos : p->sapo_temperature_neg;
        double x = tau * (w - 1.0);
        r.value = -sigmoid(x) * 4.0 / tau * A;
        r.d_weight = -4.0 * A * sigmoid_slope(x);
        return r;
    }
    case GRPO_VESPO: /* -phi.detach() A logp */
        r.value = -phi * A * logp;
        r.d_logp = -phi * A;
        return r;
    default: { /* -min(w' A, clip(w, 1 - eps_low, 1 + eps_high) A), w' = min(w, delta) */
        double lo = 1.0 - p->epsilon_low, hi = 1.0 + p->epsilon_high;
        double unclipped = fmin(w, p->delta), clipped = fmin(fmax(w, lo), hi);
        double a = unclipped * A, b = clipped * A;
        double share_a = a < b ? 1.0 : a > b ? 0.0 : 0.5;
        double pass_a = w <= p->delta ? 1.0 : 0.0, pass_b = w >= lo && w <= hi ? 1.0 : 0.0;
        r.value = -fmin(a, b);
        r.d_weight = -A * (share_a * pass_a + (1.0 - share_a) * pass_b);
        /* TRL flags the ratio after the delta bound */
        r.low = unclipped < lo && A < 0;
        r.high = unclipped > hi && A > 0;
        return r;
    }
    }
}

/* VESPO's detached sequence weight phi(w) = e^{lambda} w^k e^{-lambda w}, w
 * the product of the token ratios (log-ratios clamped to +-20, log w to
 * [log 1e-8, 20]), k and lambda by the sign of A. TRL computes it in float32
 * and maps a non-finite phi to 0; so does this. */
static double vespo_phi(const float *logps, const float *old, const float *mask, int T,
                        double A, const grpo_params *p) {
    double log_w = 0.0;
    for (int t = 0; t < T; t++)
        if (mask[t] != 0.0f) log_w += fmin(fmax((double)logps[t] - old[t], -20.0), 20.0);
    log_w = fmin(fmax(log_w, log(1e-8)), 20.0);
    double k = A >= 0 ? p->vespo_k_pos : p->vespo_k_neg;
    double lambda = fmax(A >= 0 ? p->vespo_lambda_pos : p->vespo_lambda_neg, 1e-4);
    double log_phi = lambda + k * log_w - lambda * exp(log_w);
    return log_phi > log(FLT_MAX) || isnan(log_phi) ? 0.0 : exp(log_phi);
}

/* One token's loss (policy term times keep -- the off-policy and entropy
 * masks --, plus beta times the KL term)
 * with its derivative through logp directly and through the weight w. */
typedef struct {
    double value, d_logp, d_weight, kl;
    policy_term policy;
} token_part;

static token_part token_at(double x, double ref, double w, double A, double phi, double keep,
                           const grpo_params *p) {
    token_part r;
    r.policy = policy_term_at(w, x, A, phi, p);
    r.value = keep * r.policy.value;
    r.d_weight = keep * r.policy.d_weight;
    r.d_logp = keep * r.policy.d_logp;
    r.kl = 0.0;
    if (p->beta != 0.0) {
        /* k3: e^{ref - x} - (ref - x) - 1, d/dx = 1 - e^{ref - x} */
        const double diff = ref - x, e = exp(diff);
        double kl = e - diff - 1.0, d_kl = 1.0 - e;
        if (p->use_bias_correction_kl) { /* kl * w: the product rule */
            r.d_weight += p->beta * kl;
            d_kl *= w;
            kl *= w;
        }
        r.value += p->beta * kl;
        r.d_logp += p->beta * d_kl;
        r.kl = kl;
    }
    return r;
}

void grpo_loss_row(float *grad_logps, grpo_row_stats *stats, const float *logps,
                   const float *old_logps, const float *ref_logps, const float *mask,
                   const float *entropy_mask, double advantage, double weight, int T,
                   const grpo_params *p) {
    const float *old = old_logps ? old_logps : logps;
    const double A = advantage;
    grpo_row_stats s = {0};
    double log_ratio_sum = 0.0;
    for (int t = 0; t < T; t++) {
        s.tokens += mask[t];
        if (mask[t] != 0.0f) log_ratio_sum += (double)logps[t] - old[t];
    }
    const double tokens1 = fmax(s.tokens, 1.0);
    /* DeepSeek-V3.2's off-policy mask: drop a sequence with A < 0 whose mean
     * KL(old || current) exceeds the threshold. */
    double keep = 1.0;
    if (!isnan(p->off_policy_mask_threshold))
        keep = A >= 0 || -log_ratio_sum / tokens1 <= p->off_policy_mask_threshold ? 1.0 : 0.0;
    const double phi = p->loss_type == GRPO_VESPO ? vespo_phi(logps, old, mask, T, A, p) : 0.0;
    s.phi = phi;
    /* Sequence level (GSPO): one weight w = exp(mean masked log-ratio) for the
     * row, d w / d logp_t = w mask_t / tokens1, so every token's gradient
     * also carries d_row = d (sum_t mask_t loss_t) / d w: a second pass. */
    const int sequence = p->level == IS_SEQUENCE;
    const double w_row = sequence ? exp(log_ratio_sum / tokens1) : 0.0;
    double d_row = 0.0, loss = 0.0;
    for (int t = 0; t < T; t++) {
        if (mask[t] == 0.0f) {
            grad_logps[t] = 0.0f;
            continue;
        }
        const double x = logps[t], w = sequence ? w_row : exp(x - old[t]);
        const double kept = entropy_mask ? keep * entropy_mask[t] : keep;
        token_part part = token_at(x, ref_logps ? ref_logps[t] : 0.0, w, A, phi, kept, p);
        loss += part.value;
        s.kl += part.kl;
        if (sequence) {
            d_row += part.d_weight;
            continue;
        }
        s.clip_low += part.policy.low;
        s.clip_high += part.policy.high;
        s.clip_region += part.policy.low || part.policy.high;
        s.cispo_clipped += part.policy.cispo_clipped;
        grad_logps[t] = (float)(weight * (part.d_logp + part.d_weight * w));
    }
    if (sequence) {
        policy_term row = policy_term_at(w_row, 0.0, A, phi, p);
        s.clip_low = row.low;
        s.clip_high = row.high;
        s.clip_region = row.low || row.high;
        s.cispo_clipped = row.cispo_clipped;
        for (int t = 0; t < T; t++) {
            if (mask[t] == 0.0f) continue;
            const double kept = entropy_mask ? keep * entropy_mask[t] : keep;
            token_part part = token_at(logps[t], ref_logps ? ref_logps[t] : 0.0, w_row, A, phi,
                                       kept, p);
            grad_logps[t] = (float)(weight * (part.d_logp + d_row * w_row / tokens1));
        }
    }
    s.loss = weight * loss;
    *stats = s;
}

int grpo_loss(float *grad_logps, grpo_metrics *m, const float *logps, const float *old_logps,
              const float *ref_logps, const float *advantages, const float *mask,
              const float *entropy_mask, int B, int T,
              int max_completion_length, double num_items_in_batch,
              int gradient_accumulation_steps, const grpo_params *p, grpo_row_stats *rows) {
    double batch_tokens = 0.0;
    for (long k = 0; k < (long)B * T; k++) batch_tokens += mask[k];
    if (num_items_in_batch <= 0.0) num_items_in_batch = batch_tokens;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (int i = 0; i < B; i++) {
        const long o = (long)i * T;
        double row_tokens = 0.0;
        for (int t = 0; t < T; t++) row_tokens += mask[o + t];
        double weight = grpo_row_weight(p, row_tokens, batch_tokens, B, max_completion_length,
                                        num_items_in_batch, gradient_accumulation_steps);
        grpo_loss_row(grad_logps + o, &rows[i], logps + o, old_logps ? old_logps + o : NULL,
                      ref_logps ? ref_logps + o : NULL, mask + o,
                      entropy_mask ? entropy_mask + o : NULL, advantages[i], weight, T, p);
    }
    grpo_aggregate(m, rows, B, batch_tokens, p);
    if (!isfinite(m->loss)) return CALIGN_ENONFINITE;
    for (long k = 0; k < (long)B * T; k++)
        if (!isfinite(grad_logps[k])) return CALIGN_ENONFINITE;
    return CALIGN_OK;
}

void grpo_aggregate(grpo_metrics *m, const grpo_row_stats *rows, int B, double batch_tokens,
                    const grpo_params *p) {
    /* TRL's metrics: token-level means over the batch's tokens; at sequence
     * level the clip flags are one per row, averaged over the B rows. The
     * min/max are over rows of each row's mean (rows without tokens skipped). */
    const int sequence = p->level == IS_SEQUENCE;
    double loss = 0.0, kl = 0.0, low = 0.0, high = 0.0, region = 0.0, cispo = 0.0, phi = 0.0;
    double low_min = NAN, high_max = NAN;
    for (int i = 0; i < B; i++) {
        const grpo_row_stats *r = &rows[i];
        loss += r->loss;
        kl += r->kl;
        low += r->clip_low;
        high += r->clip_high;
        region += r->clip_region;
        cispo += r->cispo_clipped;
        phi += r->phi;
        if (!sequence && r->tokens == 0.0) continue;
        double row_low = sequence ? r->clip_low : r->clip_low / r->tokens;
        double row_high = sequence ? r->clip_high : r->clip_high / r->tokens;
        if (isnan(low_min) || row_low < low_min) low_min = row_low;
        if (isnan(high_max) || row_high > high_max) high_max = row_high;
    }
    const double flag_count = sequence ? (double)B : fmax(batch_tokens, 1.0);
    const int clipped = is_clipped_surrogate(p->loss_type);
    m->loss = loss;
    m->kl = p->beta != 0.0 ? kl / fmax(batch_tokens, 1.0) : NAN;
    m->clip_low_mean = clipped ? low / flag_count : NAN;
    m->clip_high_mean = clipped ? high / flag_count : NAN;
    m->clip_region_mean = clipped ? region / flag_count : NAN;
    m->clip_low_min = clipped ? low_min : NAN;
    m->clip_high_max = clipped ? high_max : NAN;
    m->cispo_clip_ratio = p->loss_type == GRPO_CISPO ? cispo / flag_count : NAN;
    m->vespo_phi_seq_mean = p->loss_type == GRPO_VESPO ? phi / B : NAN;
}
