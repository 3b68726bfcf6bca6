#include "losses/grpo_rows.h"

#include <stddef.h>

#include "core/threads.h"

void grpo_rows_token_grads(void *ctx, int g0, int g1, const float *logprobs, float *row_grads) {
    const grpo_rows *c = ctx;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(dynamic)
    for (int s = g0; s < g1; s++) {
        const long first = c->seq_first_row[s];
        const int T = (int)(c->seq_first_row[s + 1] - first);
        grpo_loss_row(row_grads + first, &c->stats[s], logprobs + first,
                      c->old_logps ? c->old_logps + first : NULL,
                      c->ref_logps ? c->ref_logps + first : NULL, c->mask + first, NULL,
                      c->advantages[s], c->weights[s], T, c->params);
    }
}
