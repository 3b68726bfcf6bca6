/* CPO (Xu et al. 2024), SimPO (Meng et al. 2024) and AlphaPO rewards, as
 * TRL 1.16's CPOTrainer (its NLL term on chosen is the trainer's). */
#include <math.h>

#include "losses/losses.h"
#include "losses/scalar_math.h"

const char *const CPO_LOSS_NAMES[CPO_N_LOSS_TYPES] = {
    [CPO_SIGMOID] = "sigmoid",
    [CPO_HINGE] = "hinge",
    [CPO_IPO] = "ipo",
    [CPO_SIMPO] = "simpo",
};

/* AlphaPO reward r = (1 - p^-alpha)/alpha = (1 - e^(-alpha logp))/alpha and
 * dr/dlogp = e^(-alpha logp); alpha = 0 is the plain log-prob. */
static double alphapo_reward(double logp, double alpha, double *slope) {
    if (alpha == 0.0) {
        *slope = 1.0;
        return logp;
    }
    double e = exp(-alpha * logp);
    *slope = e;
    return (1.0 - e) / alpha;
}

void cpo_loss(double *losses, double *chosen_rewards, double *rejected_rewards,
              double *grad_chosen, double *grad_rejected, const double *policy_chosen,
              const double *policy_rejected, int B, double beta, cpo_loss_type type,
              double label_smoothing, double simpo_gamma, double alpha) {
    const double eps = label_smoothing;
    for (int i = 0; i < B; i++) {
        double slope_c, slope_r;
        double rc = alphapo_reward(policy_chosen[i], alpha, &slope_c);
        double rr = alphapo_reward(policy_rejected[i], alpha, &slope_r);
        double logits = rc - rr;
        double loss, d_logits;
        switch (type) {
        case CPO_HINGE:
            loss = 1.0 - beta * logits > 0 ? 1.0 - beta * logits : 0.0;
            d_logits = 1.0 - beta * logits > 0 ? -beta : 0.0;
            break;
        case CPO_IPO: {
            double gap = logits - 1.0 / (2.0 * beta);
            loss = gap * gap;
            d_logits = 2.0 * gap;
            break;
        }
        case CPO_SIMPO: /* SimPO Eq. 6: target reward margin gamma */
            logits -= simpo_gamma / beta;
            /* fall through */
        case CPO_SIGMOID:
        default: {
            double u = beta * logits;
            loss = -(1.0 - eps) * log_sigmoid(u) - eps * log_sigmoid(-u);
            d_logits = beta * (-(1.0 - eps) * sigmoid(-u) + eps * sigmoid(u));
        }
        }
        losses[i] = loss;
        chosen_rewards[i] = beta * rc;
        rejected_rewards[i] = beta * rr;
        if (grad_chosen) grad_chosen[i] = d_logits * slope_c;
        if (grad_rejected) grad_rejected[i] = -d_logits * slope_r;
    }
}
