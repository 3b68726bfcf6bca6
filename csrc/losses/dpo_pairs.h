/* The DPO loss as the loss callback of the grouped scoring kernel
 * (logprob.h): each chunk of whole pairs gets its per-pair losses, rewards
 * and gradients from dpo_loss, the function calign.losses.dpo_loss runs.
 *
 * Only for loss types whose value for a pair depends on that pair alone
 * (every type but aot, aot_unpaired and sft, which couple the batch): then a
 * chunk's pairs give the same numbers as the whole batch. */
#ifndef CALIGN_DPO_PAIRS_H
#define CALIGN_DPO_PAIRS_H

#include "losses/losses.h"

typedef struct {
    const dpo_params *params;
    /* [B] inputs; weights may be NULL */
    const double *ref_chosen, *ref_rejected, *chosen_lengths, *rejected_lengths, *weights;
    double grad_scale; /* seq_grads are of grad_scale * sum of the losses */
    /* [B] outputs */
    double *losses, *chosen_rewards, *rejected_rewards;
    /* scratch: 4 B doubles for policy sums and gradients, and dpo_loss's own
     * (5 B doubles, 2 B ints) */
    double *pair_work, *loss_work;
    int *loss_iwork;
} dpo_pairs;

/* Sequences 2i and 2i + 1 are pair i's chosen and rejected completions. */
void dpo_pairs_sequence_grads(void *ctx, int g0, int g1, const double *seq_sums,
                              double *seq_grads);

#endif
