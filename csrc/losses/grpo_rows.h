/* The GRPO loss as the token-loss callback of the grouped scoring kernel
 * (logprob.h): each group is one completion, whose tokens' gradients come
 * from grpo_loss_row, the function calign.losses.grpo_loss runs per row.
 *
 * Every input is in score order (the completions' tokens end to end); the
 * row weights (grpo_row_weight) are known before any log-prob, so a chunk's
 * completions give the same numbers as the whole batch. */
#ifndef CALIGN_GRPO_ROWS_H
#define CALIGN_GRPO_ROWS_H

#include "losses/losses.h"

typedef struct {
    const grpo_params *params;
    const long *seq_first_row;   /* [S + 1] first score of each completion */
    const float *old_logps;      /* [M] or NULL (the current ones, detached) */
    const float *ref_logps;      /* [M] or NULL (beta == 0) */
    const float *mask;           /* [M] 0/1 */
    const double *advantages;    /* [S] */
    const double *weights;       /* [S] grpo_row_weight of each completion */
    grpo_row_stats *stats;       /* [S] out */
} grpo_rows;

/* Completion s is group s. */
void grpo_rows_token_grads(void *ctx, int g0, int g1, const float *logprobs, float *row_grads);

#endif
