/* Causal self-attention over a packed batch of sequences with shared-prefix
 * branches (grouped-query heads allowed).
 *
 * Sequence s holds tokens [seq_start[s], seq_start[s+1]). Within it, query i
 * sees key j iff j <= i and (branch[j] == 0 or branch[j] == branch[i]):
 * branch 0 is a prefix every branch sees; branch k > 0 sees only the prefix
 * and itself. So `prompt | chosen | rejected` is one sequence in which the
 * prompt is computed once.
 *
 * q, k, v are [T, heads * head_dim] views with row strides ld_q, ld_k, ld_v;
 * query head h uses kv head h / (n_head / n_kv_head). The attention
 * probabilities are kept in `probs` for the backward: for head h and
 * sequence s a [L_s, L_s] block at h * attention_probs_per_head + offset[s]. */
#ifndef CALIGN_ATTENTION_H
#define CALIGN_ATTENTION_H

#include <stdint.h>

typedef struct {
    const int32_t *seq_start; /* [n_seq + 1] */
    const long *probs_offset; /* [n_seq]: sum of L^2 of the sequences before */
    long probs_per_head;      /* sum of L^2 over all sequences */
    const int32_t *branch;    /* [T] */
    int n_seq;
    int n_head, n_kv_head, head_dim;
    float *scratch;            /* backward: scratch_per_thread floats per thread */
    long scratch_per_thread;   /* ATTENTION_SCRATCH_PER_THREAD(longest sequence) */
} attention_shape;

#define ATTENTION_SCRATCH_PER_THREAD(longest) (64L * (longest))

void attention_forward(float *out, int ld_out, float *probs, const float *q, int ld_q,
                       const float *k, int ld_k, const float *v, int ld_v,
                       const attention_shape *a);

/* dq is written; dk and dv are written (zeroed first), all with the strides
 * of q, k, v. */
void attention_backward(float *dq, float *dk, float *dv, const float *d_out, int ld_out,
                        const float *probs, const float *q, int ld_q, const float *k, int ld_k,
                        const float *v, int ld_v, long T, const attention_shape *a);

/* Attention of new tokens against a KV cache (generation). Run s of the
 * batch (tokens [seq_start[s], seq_start[s+1])) belongs to cache slot
 * run_slot[s]; a token at position p attends to cache entries 0..p of its
 * slot (its own k, v already written there). k_cache, v_cache hold
 * [n_slots][capacity][n_kv_head * head_dim]. scores: capacity floats per
 * thread. */
void attention_cached_forward(float *out, int ld_out, const float *q, int ld_q,
                              const float *k_cache, const float *v_cache, int capacity,
                              const int32_t *run_slot, const int32_t *seq_start,
                              const int32_t *positions, int n_seq, int n_head, int n_kv_head,
                              int head_dim, float *scores);

#endif
