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

#include <stdbool.h>
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
    bool bf16;            /* the logit products take bfloat16-rounded operands (gemm_model) */
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
 *   grad_weight[V, d]  is ACCUMULATED into (+=) unless NULL (a frozen lm_head),
 *   grad_bias[V]       is accumulated into when not NULL,
 *   logprobs[N], stats are written when not NULL (the forward's values, for
 *                      free when the upstream gradient is known beforehand).
 * Returns -1 or the first non-finite row, as the forward. */
long token_logprobs_backward(float *grad_hidden, float *grad_weight, float *grad_bias,
                             float *logprobs, const logprob_stats *stats,
                             const float *grad_logprobs, const logprob_problem *p,
                             void *scratch);

/* ---- scores in groups whose loss couples them --------------------------
 *
 * A preference pair's loss depends on the summed log-probs of both its
 * completions, so d loss / d logp of a token is known once the whole pair is
 * scored. Here each chunk holds whole groups (an example's completions): its
 * logits are computed once, the group sums go to a loss callback, and the
 * backward of the chunk runs while its logits are still in memory. One
 * lm_head product fewer than forward + backward, and one call. A group with
 * more rows than a chunk is scored in chunks, then computed again for its
 * backward, so memory stays bounded by the chunk whatever the lengths.
 *
 * Rows are the problem's N rows in order; sequence s holds rows
 * [seq_first_row[s], seq_first_row[s+1]), group g sequences
 * [group_first_seq[g], group_first_seq[g+1]). Every row is scored
 * (no ignore_index). */
typedef struct {
    int n_groups;
    const int *group_first_seq; /* [n_groups + 1] */
    const long *seq_first_row;  /* [n_seq + 1] */
    const double *row_weight;   /* [N] factor of each log-prob in its sequence's sum, or NULL */
    /* A loss of the sequences' sums: writes seq_grads[s] = d loss / d
     * seq_sums[s] for the sequences of groups [g0, g1), given their seq_sums
     * (both indexed by sequence). */
    void (*sequence_grads)(void *ctx, int g0, int g1, const double *seq_sums,
                           double *seq_grads);
    /* Or (sequence_grads NULL) a loss of each token's log-prob, GRPO's:
     * writes row_grads[row] = d loss / d logprobs[row] for the rows of groups
     * [g0, g1), given their logprobs (both indexed by row). */
    void (*token_grads)(void *ctx, int g0, int g1, const float *logprobs, float *row_grads);
    float *row_grads;           /* [N], written by token_grads */
    void *ctx;
} logprob_groups;

/* Scratch bytes for token_logprobs_grouped (chunks of p->chunk_rows rows). */
size_t logprob_grouped_scratch_bytes(const logprob_problem *p);

/* Forward, loss gradient and backward in one pass: writes logprobs[N],
 * the stats (when not NULL), seq_sums[n_seq] (weighted log-prob sums) and
 * seq_grads[n_seq] (with sequence_grads; with token_grads, g->row_grads[N]
 * instead), writes grad_hidden[N, d] and ADDS into grad_weight[V, d] (unless NULL).
 * Returns -1 or the first row whose logits were not finite. */
long token_logprobs_grouped(float *grad_hidden, float *grad_weight, float *logprobs,
                            const logprob_stats *stats, double *seq_sums, double *seq_grads,
                            const logprob_problem *p, const logprob_groups *g, void *scratch);

#endif
