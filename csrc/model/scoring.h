/* Log-probabilities of chosen tokens under the model's lm_head, read at
 * chosen rows of the final hidden states (several scores may read the same
 * row: the last prompt token predicts the first token of every branch). */
#ifndef CALIGN_SCORING_H
#define CALIGN_SCORING_H

#include <stdint.h>

#include "logprob.h"
#include "model/model.h"

typedef struct {
    const int64_t *rows;    /* [M] row of the hidden states each score reads */
    const int64_t *targets; /* [M] token ids (or ignore_index) */
    long M;
    float temperature;
} score_request;

/* Scratch floats the two functions need. */
long scoring_scratch_floats(const model *m, const score_request *r);

/* logprobs[M] (and the per-score statistics when stats is not NULL);
 * returns -1 or the first score whose logits were not finite. */
long model_score_forward(float *logprobs, const logprob_stats *stats, const model *m,
                         const float *params, const float *hidden, const score_request *r,
                         float *scratch);

/* For upstream gradients grad_logprobs[M]: d_hidden[T, d] is ADDED to (the
 * scatter of each score's hidden gradient), the lm_head gradient is added
 * into grads, logprobs[M] and the statistics written when not NULL. */
long model_score_backward(float *d_hidden, float *grads, float *logprobs,
                          const logprob_stats *stats, const model *m, const float *params,
                          const float *hidden, const float *grad_logprobs,
                          const score_request *r, float *scratch);

/* Scores in groups (see token_logprobs_grouped): forward, the loss's
 * gradient through g->sequence_grads, and backward in one pass; d_hidden is
 * ADDED to, the lm_head gradient added into grads. */
long scoring_grouped_scratch_floats(const model *m, const score_request *r);
long model_score_grouped(float *d_hidden, float *grads, float *logprobs,
                         const logprob_stats *stats, double *seq_sums, double *seq_grads,
                         const model *m, const float *params, const float *hidden,
                         const score_request *r, const logprob_groups *g, float *scratch);

#endif
