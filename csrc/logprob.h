/* Fused token log-probabilities: lm_head matmul -> log-softmax -> gather,
 * and its backward, computed a chunk of rows at a time so that the
 * (tokens x vocab) logits are never materialised.
 *
 * For row i with hidden state h_i (d floats), target t_i and temperature tau:
 *   z_i = (W h_i + b) / tau                     (V logits)
 *   logp_i = z_i[t_i] - logsumexp(z_i)
 * Rows whose target equals ignore_index are skipped: every output is 0 there. */
#ifndef CALIGN_LOGPROB_H
#define CALIGN_LOGPROB_H

#include <stddef.h>
#include <stdint.h>

/* Optional per-row statistics of the tempered distribution p = softmax(z),
 * the ones TRL logs. Any pointer may be NULL. */
typedef struct {
    float *logsumexp;        /* log sum_v exp(z_v) */
    float *entropy;          /* -sum_v p_v log p_v */
    float *mean_logit;       /* mean_v z_v */
    float *log_sum_sq_probs; /* log sum_v p_v^2 (WPO weights) */
    uint8_t *is_top1;        /* z[target] is the largest logit */
} logprob_stats;

typedef struct {
    const float *hidden;  /* [N, d] */
    const float *weight;  /* [V, d] */
    const float *bias;    /* [V] or NULL */
    const int64_t *targets; /* [N] */
    long N;
    int d, V;
    float temperature;
    int64_t ignore_index;
    int chunk_rows;       /* rows per chunk, >= 1 */
} logprob_problem;

/* Rows per chunk chosen from the vocabulary size: a chunk's logits stay near
 * 32 MiB (large enough for efficient matmuls, small against N x V). */
int logprob_default_chunk_rows(int V, int d);

/* Bytes of scratch space the two functions below need. */
size_t logprob_scratch_bytes(const logprob_problem *p);

/* Forward. Writes logprobs[N] (and the requested stats). Returns -1 on
 * success, or the index of the first row whose logits were not finite (NaN or
 * infinity in hidden, weight or bias). */
long token_logprobs_forward(float *logprobs, const logprob_stats *stats,
                            const logprob_problem *p, void *scratch);

/* Backward for upstream gradient grad_logprobs[N]:
 *   grad_hidden[N, d]  is written (zero on ignored rows),
 *   grad_weight[V, d]  is ACCUMULATED into (+=),
 *   grad_bias[V]       is accumulated into when not NULL,
 *   logprobs[N], stats are written when not NULL (the forward's values, for
 *                      free when the upstream gradient is known beforehand).
 * Returns -1 or the first non-finite row, as the forward. */
long token_logprobs_backward(float *grad_hidden, float *grad_weight, float *grad_bias,
                             float *logprobs, const logprob_stats *stats,
                             const float *grad_logprobs, const logprob_problem *p,
                             void *scratch);

#endif
