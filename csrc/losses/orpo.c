/* ORPO (Hong et al. 2024), the odds-ratio term of TRL's ORPOTrainer. */
#include "losses/losses.h"
#include "losses/scalar_math.h"

/* A probability that rounds to 1 has log-prob 0 and infinite log-odds; the
 * inputs are capped just below 0 so the loss and gradient stay finite. */
#define ORPO_MAX_LOGP (-1e-12)

void orpo_loss(double *losses, double *chosen_rewards, double *rejected_rewards,
               double *log_odds, double *grad_chosen, double *grad_rejected,
               const double *policy_chosen, const double *policy_rejected, int B, double beta) {
    for (int i = 0; i < B; i++) {
        double c = policy_chosen[i] < ORPO_MAX_LOGP ? policy_chosen[i] : ORPO_MAX_LOGP;
        double r = policy_rejected[i] < ORPO_MAX_LOGP ? policy_rejected[i] : ORPO_MAX_LOGP;
        /* Eqs. 4 and 7: log odds(y) = log p - log(1 - p), with p = e^logp */
        double lo = (c - r) - (log1mexp(c) - log1mexp(r));
        log_odds[i] = lo;
        losses[i] = -beta * log_sigmoid(lo);
        chosen_rewards[i] = beta * policy_chosen[i];
        rejected_rewards[i] = beta * policy_rejected[i];
        double d_lo = -beta * sigmoid(-lo);
        if (grad_chosen)
            grad_chosen[i] = policy_chosen[i] < ORPO_MAX_LOGP ? d_lo * (1.0 - log1mexp_slope(c)) : 0.0;
        if (grad_rejected)
            grad_rejected[i] =
                policy_rejected[i] < ORPO_MAX_LOGP ? d_lo * (log1mexp_slope(r) - 1.0) : 0.0;
    }
}
