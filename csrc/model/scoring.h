/* Log-probabilities of chosen tokens under the model's lm_head, read at
 * chosen rows of the final hidden states (several scores may read the same
 * row: the last prompt token predicts the first token of every branch).
 *
 * Every function carves its buffers from the model's workspace (grown once,
 * see model_workspace) and returns a status (core/status.h) with a message
 * in err (CALIGN_ERR_LEN bytes): CALIGN_ENONFINITE when a logit is NaN or
 * infinite, CALIGN_ENOMEM, or CALIGN_EINVAL for a request that does not fit. */
#ifndef CALIGN_SCORING_H
#define CALIGN_SCORING_H

#include <stdint.h>

#include "logprob.h"
#include "losses/losses.h"
#include "model/model.h"

typedef struct {
    const int64_t *rows;    /* [M] row of the hidden states each score reads */
    const int64_t *targets; /* [M] token ids (or -100: not scored) */
    long M;
    float temperature;
} score_request;

/* logprobs[M] (and the per-score statistics when stats is not NULL). */
int model_score_forward(float *logprobs, const logprob_stats *stats, model *m,
                        const float *params, const float *hidden, const score_request *r,
                        char *err);

/* For upstream gradients grad_logprobs[M]: d_hidden[T, d] is ADDED to (the
 * scatter of each score's hidden gradient), the lm_head gradient is added
 * into grads, logprobs[M] and the statistics written when not NULL. */
int model_score_backward(float *d_hidden, float *grads, float *logprobs,
                         const logprob_stats *stats, model *m, const float *params,
                         const float *hidden, const double *grad_logprobs,
                         const score_request *r, char *err);

/* B preference pairs scored with the DPO loss inside the kernel: the scores
 * are the pairs' completions, chosen then rejected, completion_lengths[2B]
 * tokens each in that order (every token scored). Chunks of whole pairs get
 * their log-probs, the pair sums go through dpo_loss (losses/dpo_pairs.h),
 * and each chunk is backpropagated at once. Only for loss types whose value
 * for a pair is its own (not those with couples_batch). */
typedef struct {
    const int64_t *completion_lengths; /* [2B] */
    int n_pairs;                       /* B */
    const double *ref_chosen, *ref_rejected; /* [B] reference log-probs */
    const double *token_weights;       /* [M] factor of each log-prob in its sum, or NULL */
    const double *pair_weights;        /* [B] factor of each pair's loss, or NULL */
    double grad_scale;                 /* the gradient is of grad_scale * sum of the losses */
    const dpo_params *loss;
} dpo_pair_request;

typedef struct {
    float *d_hidden;        /* [T, d], ADDED to */
    float *logprobs;        /* [M] */
    logprob_stats stats;    /* [M] each */
    double *policy_sums;    /* [B, 2] chosen, rejected */
    double *losses, *chosen_rewards, *rejected_rewards; /* [B] */
} dpo_pair_scores;

/* Adds the lm_head gradient into grads and fills out. */
int model_score_dpo_pairs(const dpo_pair_scores *out, float *grads, model *m,
                          const float *params, const float *hidden, const score_request *r,
                          const dpo_pair_request *pairs, char *err);

/* S completions scored with the GRPO loss inside the kernel (calign.losses.
 * grpo_loss's per-row function, losses/grpo_rows.h): the scores are the
 * completions' tokens, completion_lengths[S] each in that order. Chunks of
 * whole completions get their log-probs at the request's temperature, their
 * tokens' loss gradients, and are backpropagated at once. The importance
 * ratios, masks and KL are TRL's (see grpo_loss); no entropy mask (it needs
 * every token's entropy first). */
typedef struct {
    const int64_t *completion_lengths; /* [S] */
    int n_completions;                 /* S */
    const double *advantages;          /* [S] */
    const float *old_logps, *ref_logps; /* [M] each, or NULL */
    const float *mask;                 /* [M] 0/1: the tokens in the loss */
    int max_completion_length;         /* dr_grpo's normaliser */
    double num_items_in_batch;         /* dapo/cispo/vespo's; <= 0: the mask's sum */
    int gradient_accumulation_steps;
    const grpo_params *loss;
} grpo_request;

typedef struct {
    float *d_hidden;        /* [T, d], ADDED to */
    float *logprobs;        /* [M] */
    logprob_stats stats;    /* [M] each */
    float *grad_logps;      /* [M] d loss / d logprobs */
    grpo_metrics *metrics;  /* the loss and TRL's metrics of the S completions */
} grpo_scores;

/* Adds the lm_head gradient into grads and fills out. CALIGN_ENONFINITE
 * when the loss or a gradient is not finite. */
int model_score_grpo(const grpo_scores *out, float *grads, model *m, const float *params,
                     const float *hidden, const score_request *r, const grpo_request *q,
                     char *err);

/* S sequences scored with the token-wise constrained loss inside the kernel
 * (token_constrained_row, losses/losses.h): the scores are the sequences'
 * tokens, completion_lengths[S] each in that order. Each token's gradient
 * depends on its own log-prob only, so a chunk's tokens get their log-probs,
 * their gradients and their backward at once. */
typedef struct {
    const int64_t *completion_lengths; /* [S] */
    int n_completions;                 /* S */
    const float *ref_logps;          /* [M] the reference's log-prob of each score */
    const float *betas;              /* [M] beta_t of each score (> 0) */
    double grad_scale;               /* the gradient is of grad_scale * sum of the losses */
} constrained_request;

typedef struct {
    float *d_hidden;        /* [T, d], ADDED to */
    float *logprobs;        /* [M] */
    logprob_stats stats;    /* [M] each */
    float *grad_logps;      /* [M] grad_scale * d loss / d logprobs */
    double *losses;         /* [S] each sequence's loss */
} constrained_scores;

/* Adds the lm_head gradient into grads and fills out. */
int model_score_constrained(const constrained_scores *out, float *grads, model *m,
                            const float *params, const float *hidden, const score_request *r,
                            const constrained_request *q, char *err);

#endif
