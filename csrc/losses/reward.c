/* Bradley-Terry reward-model loss, as TRL 1.16's RewardTrainer, with the
 * optional margin (Llama 2, Touvron et al. 2023, Eq. 2) and reward centring
 * (Eisenstein et al. 2023). */
#include "losses/losses.h"
#include "losses/scalar_math.h"

void reward_loss(double *losses, double *margins, double *grad_chosen, double *grad_rejected,
                 const double *chosen_rewards, const double *rejected_rewards,
                 const double *margin, int B, double center_coef) {
    for (int i = 0; i < B; i++) {
        double gap = chosen_rewards[i] - rejected_rewards[i];
        double x = gap - (margin ? margin[i] : 0.0);
        double total = chosen_rewards[i] + rejected_rewards[i];
        margins[i] = gap;
        losses[i] = -log_sigmoid(x) + center_coef * total * total;
        double d_x = -sigmoid(-x), d_center = 2.0 * center_coef * total;
        if (grad_chosen) grad_chosen[i] = d_x + d_center;
        if (grad_rejected) grad_rejected[i] = -d_x + d_center;
    }
}
