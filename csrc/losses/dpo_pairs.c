#include "losses/dpo_pairs.h"

#include <stddef.h>

void dpo_pairs_sequence_grads(void *ctx, int g0, int g1, const double *seq_sums,
                              double *seq_grads) {
    const dpo_pairs *c = ctx;
    const int n = g1 - g0;
    double *policy_chosen = c->pair_work, *policy_rejected = policy_chosen + n;
    double *grad_chosen = policy_rejected + n, *grad_rejected = grad_chosen + n;
    for (int i = 0; i < n; i++) {
        policy_chosen[i] = seq_sums[2 * (g0 + i)];
        policy_rejected[i] = seq_sums[2 * (g0 + i) + 1];
    }
    dpo_loss(c->losses + g0, c->chosen_rewards + g0, c->rejected_rewards + g0, grad_chosen,
             grad_rejected, policy_chosen, policy_rejected, c->ref_chosen + g0,
             c->ref_rejected + g0, c->chosen_lengths + g0, c->rejected_lengths + g0,
             c->weights ? c->weights + g0 : NULL, n, c->params, c->loss_work, c->loss_iwork);
    for (int i = 0; i < n; i++) {
        seq_grads[2 * (g0 + i)] = c->grad_scale * grad_chosen[i];
        seq_grads[2 * (g0 + i) + 1] = c->grad_scale * grad_rejected[i];
    }
}
