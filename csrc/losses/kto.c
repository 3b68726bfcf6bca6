/* KTO (Ethayarajh et al. 2024) and APO-zero unpaired, as TRL 1.16's KTOTrainer. */
#include "losses/losses.h"
#include "losses/scalar_math.h"

const char *const KTO_LOSS_NAMES[KTO_N_LOSS_TYPES] = {
    [KTO_KTO] = "kto",
    [KTO_APO_ZERO_UNPAIRED] = "apo_zero_unpaired",
};

void kto_loss(double *losses, double *rewards, double *grad, const double *policy,
              const double *ref, const unsigned char *desirable, int B, double kl, double beta,
              kto_loss_type type, double desirable_weight, double undesirable_weight) {
    /* APO-zero has no reference point: the KL term is zero there. */
    const double z0 = type == KTO_KTO ? kl : 0.0;
    for (int i = 0; i < B; i++) {
        double logratio = policy[i] - ref[i];
        rewards[i] = beta * logratio;
        double loss, d_logratio;
        if (desirable[i]) {
            /* KTO Eq. 7: 1 - sigma(beta (r - z0)) */
            double x = beta * (logratio - z0);
            loss = desirable_weight * (1.0 - sigmoid(x));
            d_logratio = -desirable_weight * beta * sigmoid_slope(x);
        } else if (type == KTO_KTO) {
            /* 1 - sigma(beta (z0 - r)) */
            double x = beta * (z0 - logratio);
            loss = undesirable_weight * (1.0 - sigmoid(x));
            d_logratio = undesirable_weight * beta * sigmoid_slope(x);
        } else {
            /* APO-zero unpaired, undesirable: sigma(beta r) */
            double x = beta * logratio;
            loss = undesirable_weight * sigmoid(x);
            d_logratio = undesirable_weight * beta * sigmoid_slope(x);
        }
        losses[i] = loss;
        if (grad) grad[i] = d_logratio;
    }
}
