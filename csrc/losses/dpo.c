/* DPO and its variants: every loss_type of TRL 1.16's DPOTrainer. */
#define _GNU_SOURCE /* qsort_r */
#include <stdlib.h>
#include <string.h>

#include "losses/losses.h"
#include "losses/scalar_math.h"

/* In dpo_loss_type order. Length-normalised types need completion token
 * counts (ipo and sigmoid_norm both sides', sft and scpo the chosen one's);
 * aot pairs the batch's sorted margins and sft averages over the batch. */
const dpo_loss_info DPO_LOSS_INFO[DPO_N_LOSS_TYPES] = {
    [DPO_SIGMOID] = {"sigmoid", 0, 0, 0},
    [DPO_HINGE] = {"hinge", 0, 0, 0},
    [DPO_IPO] = {"ipo", 1, 1, 0},
    [DPO_EXO_PAIR] = {"exo_pair", 0, 0, 0},
    [DPO_NCA_PAIR] = {"nca_pair", 0, 0, 0},
    [DPO_ROBUST] = {"robust", 0, 0, 0},
    [DPO_BCO_PAIR] = {"bco_pair", 0, 0, 0},
    [DPO_SPPO_HARD] = {"sppo_hard", 0, 0, 0},
    [DPO_AOT] = {"aot", 0, 0, 1},
    [DPO_AOT_UNPAIRED] = {"aot_unpaired", 0, 0, 1},
    [DPO_APO_ZERO] = {"apo_zero", 0, 0, 0},
    [DPO_APO_DOWN] = {"apo_down", 0, 0, 0},
    [DPO_DISCOPOP] = {"discopop", 0, 0, 0},
    [DPO_SIGMOID_NORM] = {"sigmoid_norm", 1, 1, 0},
    [DPO_SFT] = {"sft", 1, 0, 1},
    [DPO_SCPO] = {"scpo", 1, 0, 0},
};

const char *const F_DIVERGENCE_NAMES[F_N_DIVERGENCES] = {
    [F_REVERSE_KL] = "reverse_kl",
    [F_FORWARD_KL] = "forward_kl",
    [F_JS_DIVERGENCE] = "js_divergence",
    [F_ALPHA_DIVERGENCE] = "alpha_divergence",
};

/* The f-divergence "score" f'(t) at t = pi/pi_ref, written in the log-ratio
 * lr = log t, and its derivative d score / d lr (Wang et al. 2023, "Beyond
 * Reverse KL", Table 1). reverse_kl gives plain DPO. */
static void divergence_score(double lr, const dpo_params *p, double *score, double *slope) {
    switch (p->divergence) {
    case F_FORWARD_KL: /* f'(t) = 1 - 1/t */
        *score = 1.0 - exp(-lr);
        *slope = exp(-lr);
        return;
    case F_JS_DIVERGENCE: /* f'(t) = log 2t/(t+1) = log 2 + log sigma(lr) */
        *score = M_LN2 + log_sigmoid(lr);
        *slope = sigmoid(-lr);
        return;
    case F_ALPHA_DIVERGENCE: {
        double a = p->f_alpha_divergence_coef;
        if (fabs(a - 1.0) >= 1e-6) {
            /* f'(t) = (t^(a-1) - 1)/(a-1); TRL clamps the exponent at 80 */
            double t = (a - 1.0) * lr;
            double clamped = t > 80.0 ? 80.0 : t;
            *score = (exp(clamped) - 1.0) / (a - 1.0);
            *slope = t > 80.0 ? 0.0 : exp(t);
            return;
        }
        /* a -> 1 is the reverse KL */
    }
    /* fall through */
    case F_REVERSE_KL:
    default:
        *score = lr;
        *slope = 1.0;
    }
}

/* One example's view of the inputs. */
typedef struct {
    double chosen_logps;                         /* log pi(y+|x), summed over tokens */
    double chosen_logratio, rejected_logratio;   /* log pi - log pi_ref */
    double chosen_score, rejected_score;         /* f'(t) of each */
    double chosen_slope, rejected_slope;         /* d score / d logratio */
    double chosen_length, rejected_length;       /* clamped at 1 */
} pair_view;

/* A loss value and its derivatives with respect to the two log-ratios. */
typedef struct {
    double loss, d_chosen, d_rejected;
} loss_term;

/* -(1-eps) log sigma(u) - eps log sigma(-u) and its derivative in u: the
 * conservative ("label-smoothed") logistic loss (Mitchell 2023, cDPO). */
static loss_term smoothed_logistic(double u, double eps) {
    loss_term r = {0};
    r.loss = -(1.0 - eps) * log_sigmoid(u) - eps * log_sigmoid(-u);
    r.d_chosen = -(1.0 - eps) * sigmoid(-u) + eps * sigmoid(u); /* d/du, stored here */
    return r;
}

/* A loss of delta = chosen_score - rejected_score, given value and d/d delta. */
static loss_term of_score_delta(double loss, double d_delta, const pair_view *v) {
    return (loss_term){loss, d_delta * v->chosen_slope, -d_delta * v->rejected_slope};
}

/* Losses that depend on one pair only. */
static loss_term pair_loss(dpo_loss_type type, const pair_view *v, const dpo_params *p) {
    const double beta = p->beta, eps = p->label_smoothing;
    const double delta = v->chosen_score - v->rejected_score;
    const double u = beta * delta;
    const double rc = beta * v->chosen_logratio, rr = beta * v->rejected_logratio;
    loss_term r = {0};
    switch (type) {
    case DPO_SIGMOID: /* DPO, Rafailov et al. 2023, Eq. 7 */
        return of_score_delta(-log_sigmoid(u), -beta * sigmoid(-u), v);
    case DPO_SCPO: {
        /* ScPO, Prasad et al. 2024 (arXiv 2411.04109, Sec. 2, the loss l_ScPO)
         * without its vote weight w(x), which multiplies the whole loss through
         * `weights`: -log sigma(u) - alpha log pi(y+|x) / |y+|. With w = 1 it
         * is IRPO's loss (Pang et al. 2024). */
        r = of_score_delta(-log_sigmoid(u), -beta * sigmoid(-u), v);
        r.loss -= p->scpo_alpha * v->chosen_logps / v->chosen_length;
        r.d_chosen -= p->scpo_alpha / v->chosen_length;
        return r;
    }
    case DPO_HINGE: /* SLiC, Zhao et al. 2023 */
        return of_score_delta(1.0 - u > 0 ? 1.0 - u : 0.0, 1.0 - u > 0 ? -beta : 0.0, v);
    case DPO_IPO:          /* IPO, Azar et al. 2023, Eq. 17, per-token averaged scores */
    case DPO_SIGMOID_NORM: /* DPO on length-normalised scores */
    {
        double d = v->chosen_score / v->chosen_length - v->rejected_score / v->rejected_length;
        double d_loss_d_d;
        if (type == DPO_IPO) {
            double gap = d - 1.0 / (2.0 * beta);
            r.loss = gap * gap;
            d_loss_d_d = 2.0 * gap;
        } else {
            r.loss = -log_sigmoid(beta * d);
            d_loss_d_d = -beta * sigmoid(-beta * d);
        }
        r.d_chosen = d_loss_d_d / v->chosen_length * v->chosen_slope;
        r.d_rejected = -d_loss_d_d / v->rejected_length * v->rejected_slope;
        return r;
    }
    case DPO_EXO_PAIR: {
        /* EXO, Ji et al. 2024, Eq. 16: KL(softmax(u, 0) || (1-eps, eps));
         * d/du = q(1-q) (u + log eps - log(1-eps)) with q = sigma(u). */
        double q = sigmoid(u), qbar = sigmoid(-u);
        double loss = q * (log_sigmoid(u) - log1p(-eps)) + qbar * (log_sigmoid(-u) - log(eps));
        return of_score_delta(loss, beta * q * qbar * (u + log(eps) - log1p(-eps)), v);
    }
    case DPO_ROBUST: { /* rDPO, Chowdhury et al. 2024, Eq. 5 */
        double loss = (-(1.0 - eps) * log_sigmoid(u) + eps * log_sigmoid(-u)) / (1.0 - 2.0 * eps);
        double d_u = (-(1.0 - eps) * sigmoid(-u) - eps * sigmoid(u)) / (1.0 - 2.0 * eps);
        return of_score_delta(loss, beta * d_u, v);
    }
    case DPO_NCA_PAIR: /* NCA, Chen et al. 2024, Eq. 10 */
        r.loss = -log_sigmoid(rc) - 0.5 * log_sigmoid(-rc) - 0.5 * log_sigmoid(-rr);
        r.d_chosen = beta * (-sigmoid(-rc) + 0.5 * sigmoid(rc));
        r.d_rejected = beta * 0.5 * sigmoid(rr);
        return r;
    case DPO_BCO_PAIR: { /* BCO, Jung et al. 2024, Eq. 8 (reward shift delta explicit) */
        double shift = p->bco_reward_shift;
        r.loss = -log_sigmoid(rc - shift) - log_sigmoid(-(rr - shift));
        r.d_chosen = -beta * sigmoid(-(rc - shift));
        r.d_rejected = beta * sigmoid(rr - shift);
        return r;
    }
    case DPO_SPPO_HARD: { /* SPPO, Wu et al. 2024, Eq. 4.7 with hard P in {0, 1} */
        double win = v->chosen_logratio - 0.5 / beta, lose = v->rejected_logratio + 0.5 / beta;
        return (loss_term){win * win + lose * lose, 2.0 * win, 2.0 * lose};
    }
    case DPO_APO_ZERO: /* APO-zero, D'Oosterlinck et al. 2024, Eq. 7 */
        r.loss = 1.0 - sigmoid(rc) + sigmoid(rr);
        r.d_chosen = -beta * sigmoid_slope(rc);
        r.d_rejected = beta * sigmoid_slope(rr);
        return r;
    case DPO_APO_DOWN: { /* APO-down, Eq. 8 */
        double a = rc - rr;
        r.loss = sigmoid(rc) + 1.0 - sigmoid(a);
        r.d_chosen = beta * sigmoid_slope(rc) - beta * sigmoid_slope(a);
        r.d_rejected = beta * sigmoid_slope(a);
        return r;
    }
    case DPO_DISCOPOP: {
        /* DiscoPOP, Chris Lu et al. 2024, Eq. 5: a logistic/exponential blend,
         * L = A (1 - m) + B m with A = -log sigma(l), B = e^-l, m = sigma(l/tau).
         * B m is evaluated as exp(-l + log sigma(l/tau)) so that it stays finite. */
        double tau = p->discopop_tau, l = u;
        double m = sigmoid(l / tau), A = -log_sigmoid(l);
        double Bm = exp(-l + log_sigmoid(l / tau));
        double B_dm = Bm * sigmoid(-l / tau) / tau;          /* B * dm/dl */
        double A_dm = A * m * sigmoid(-l / tau) / tau;       /* A * dm/dl */
        double loss = A * (1.0 - m) + Bm;
        double d_l = -sigmoid(-l) * (1.0 - m) - A_dm - Bm + B_dm;
        return of_score_delta(loss, beta * d_l, v);
    }
    default:
        return r;
    }
}

/* Stable order: order[k] = index of the k-th smallest key (ties by index). */
static int compare_by_key(const void *a, const void *b, void *keys_ptr) {
    const double *keys = keys_ptr;
    int i = *(const int *)a, j = *(const int *)b;
    if (keys[i] < keys[j]) return -1;
    if (keys[i] > keys[j]) return 1;
    return i - j;
}
static void argsort(int *order, const double *keys, int B) {
    for (int i = 0; i < B; i++) order[i] = i;
    qsort_r(order, B, sizeof(int), compare_by_key, (void *)keys);
}

/* AOT, Melnyk et al. 2024: the logistic loss on sorted log-ratio gaps,
 * delta_k = sort(a)_k - sort(b)_k. paired: a = policy chosen - rejected log-prob
 * gap, b = the reference's; unpaired: a = chosen log-ratios, b = rejected ones.
 * loss[k] is attached to example k; its gradient flows to the examples that
 * sit at sorted position k. Writes term_loss[k] and weighted gradients. */
static void aot_terms(double *term_loss, double *d_chosen, double *d_rejected,
                      const double *policy_chosen, const double *policy_rejected,
                      const double *ref_chosen, const double *ref_rejected,
                      const double *weights, int B, int paired, const dpo_params *p,
                      double *work, int *iwork) {
    double *a = work, *b = work + B;
    int *order_a = iwork, *order_b = iwork + B;
    for (int i = 0; i < B; i++) {
        if (paired) {
            a[i] = policy_chosen[i] - policy_rejected[i];
            b[i] = ref_chosen[i] - ref_rejected[i];
        } else {
            a[i] = policy_chosen[i] - ref_chosen[i];
            b[i] = policy_rejected[i] - ref_rejected[i];
        }
    }
    argsort(order_a, a, B);
    argsort(order_b, b, B);
    memset(d_chosen, 0, sizeof(double) * B);
    memset(d_rejected, 0, sizeof(double) * B);
    for (int k = 0; k < B; k++) {
        double delta = a[order_a[k]] - b[order_b[k]];
        loss_term t = smoothed_logistic(p->beta * delta, p->label_smoothing);
        double w = weights ? weights[k] : 1.0;
        double d_delta = w * p->beta * t.d_chosen;
        term_loss[k] = t.loss;
        /* d delta_k / d a[order_a[k]] = 1, d delta_k / d b[order_b[k]] = -1 */
        if (paired) {
            d_chosen[order_a[k]] += d_delta;
            d_rejected[order_a[k]] -= d_delta;
        } else {
            d_chosen[order_a[k]] += d_delta;
            d_rejected[order_b[k]] -= d_delta;
        }
    }
}

void dpo_loss(double *losses, double *chosen_rewards, double *rejected_rewards,
              double *grad_chosen, double *grad_rejected, const double *policy_chosen,
              const double *policy_rejected, const double *ref_chosen,
              const double *ref_rejected, const double *chosen_lengths,
              const double *rejected_lengths, const double *weights, int B,
              const dpo_params *p, double *work, int *iwork) {
    memset(losses, 0, sizeof(double) * B);
    if (grad_chosen) memset(grad_chosen, 0, sizeof(double) * B);
    if (grad_rejected) memset(grad_rejected, 0, sizeof(double) * B);
    for (int i = 0; i < B; i++) {
        chosen_rewards[i] = p->beta * (policy_chosen[i] - ref_chosen[i]);
        rejected_rewards[i] = p->beta * (policy_rejected[i] - ref_rejected[i]);
    }
    /* work: [0, 2B) sort keys of aot, then one loss term and its two gradients */
    double *term_loss = work + 2 * B, *term_grad_c = work + 3 * B, *term_grad_r = work + 4 * B;
    for (int t = 0; t < p->n_loss_types; t++) {
        dpo_loss_type type = (dpo_loss_type)p->loss_types[t];
        double lw = p->loss_weights[t];
        if (type == DPO_AOT || type == DPO_AOT_UNPAIRED) {
            aot_terms(term_loss, term_grad_c, term_grad_r, policy_chosen, policy_rejected,
                      ref_chosen, ref_rejected, weights, B, type == DPO_AOT, p, work, iwork);
            for (int i = 0; i < B; i++) {
                losses[i] += lw * (weights ? weights[i] : 1.0) * term_loss[i];
                if (grad_chosen) grad_chosen[i] += lw * term_grad_c[i];
                if (grad_rejected) grad_rejected[i] += lw * term_grad_r[i];
            }
            continue;
        }
        if (type == DPO_SFT) {
            /* TRL's "sft" term: mean NLL over all chosen completion tokens of
             * the batch, the same value for every example. */
            double logp_sum = 0.0, tokens = 0.0, weight_sum = 0.0;
            for (int i = 0; i < B; i++) {
                logp_sum += policy_chosen[i];
                tokens += chosen_lengths[i];
                weight_sum += weights ? weights[i] : 1.0;
            }
            if (tokens < 1.0) tokens = 1.0;
            for (int i = 0; i < B; i++) {
                losses[i] += lw * (weights ? weights[i] : 1.0) * (-logp_sum / tokens);
                if (grad_chosen) grad_chosen[i] += lw * (-weight_sum / tokens);
            }
            continue;
        }
        for (int i = 0; i < B; i++) {
            pair_view v;
            v.chosen_logps = policy_chosen[i];
            v.chosen_logratio = policy_chosen[i] - ref_chosen[i];
            v.rejected_logratio = policy_rejected[i] - ref_rejected[i];
            divergence_score(v.chosen_logratio, p, &v.chosen_score, &v.chosen_slope);
            divergence_score(v.rejected_logratio, p, &v.rejected_score, &v.rejected_slope);
            v.chosen_length = chosen_lengths && chosen_lengths[i] > 1.0 ? chosen_lengths[i] : 1.0;
            v.rejected_length =
                rejected_lengths && rejected_lengths[i] > 1.0 ? rejected_lengths[i] : 1.0;
            loss_term r = pair_loss(type, &v, p);
            double scale = lw * (weights ? weights[i] : 1.0);
            losses[i] += scale * r.loss;
            if (grad_chosen) grad_chosen[i] += scale * r.d_chosen;
            if (grad_rejected) grad_rejected[i] += scale * r.d_rejected;
        }
    }
}
