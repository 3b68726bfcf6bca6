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
 * query head h uses kv head h / (n_head / n_kv_head).
 *
 * Memory: queries go in blocks of ATTENTION_BLOCK rows and a block's scores
 * (ATTENTION_BLOCK x L) live in per-thread scratch, never an L x L matrix.
 * The forward keeps only the log-sum-exp of each query row; the backward
 * recomputes a block's probabilities from it (as FlashAttention-2's backward,
 * Dao 2023, Alg. 2), at the cost of one more Q K^T product per block. */
#ifndef CALIGN_ATTENTION_H
#define CALIGN_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    const int32_t *seq_start; /* [n_seq + 1] */
    const int32_t *branch;    /* [T] */
    int n_seq;
    long T;
    int n_head, n_kv_head, head_dim;
    float *scratch;            /* scratch_per_thread floats per thread */
    long scratch_per_thread;   /* ATTENTION_SCRATCH_PER_THREAD(longest sequence) */
    int scratch_threads;       /* threads the scratch has room for */
    bool bf16;                 /* products of bfloat16-rounded operands (gemm_model) */
} attention_shape;

#define ATTENTION_BLOCK 64
#define ATTENTION_SCRATCH_PER_THREAD(longest) (2L * ATTENTION_BLOCK * (longest))

/* out [T, n_head * head_dim] (stride ld_out); lse [n_head][T]: log sum_j
 * exp(q_i . k_j / sqrt(head_dim)) over the keys query i sees. */
void attention_forward(float *out, int ld_out, float *lse, const float *q, int ld_q,
                       const float *k, int ld_k, const float *v, int ld_v,
                       const attention_shape *a);

/* dq, dk, dv (row strides ld_dq, ld_dk, ld_dv) are written; lse from the
 * forward of the same q, k. */
void attention_backward(float *dq, int ld_dq, float *dk, int ld_dk, float *dv, int ld_dv,
                        const float *d_out, int ld_out, const float *lse, const float *q,
                        int ld_q, const float *k, int ld_k, const float *v, int ld_v,
                        const attention_shape *a);

/* Attention of new tokens against a KV cache (generation). Run s of the
 * batch (tokens [seq_start[s], seq_start[s+1])) belongs to cache slot
 * run_slot[s]; a token at position p attends to cache entries 0..p of its
 * slot (its own k, v already written there). k_cache, v_cache hold
 * [n_slots][capacity][n_kv_head * head_dim]. scores: capacity floats for
 * each of scratch_threads threads. */
void attention_cached_forward(float *out, int ld_out, const float *q, int ld_q,
                              const float *k_cache, const float *v_cache, int capacity,
                              const int32_t *run_slot, const int32_t *seq_start,
                              const int32_t *positions, int n_seq, int n_head, int n_kv_head,
                              int head_dim, float *scores, int scratch_threads);

/* Differential attention (Ye et al. 2024, as Motif runs it). q and k hold
 * n_head and n_kv_head sub-heads of head_dim; sub-heads 2i and 2i+1 are the
 * two maps of differential head i (stripe order), and kv sub-heads 2g, 2g+1
 * with the v columns [2g, 2g+2) * head_dim (2 head_dim wide) those of kv
 * group g; head i uses group i / (n_head / n_kv_head), as grouped-query
 * attention over the n_head / 2 differential heads. Both counts must be even.
 *   out_i = (softmax(q_2i k_2g^T / sqrt(hd)) - lambda softmax(q_2i+1 k_2g+1^T / sqrt(hd))) v_g
 * written to columns [2i, 2i+2) * head_dim of out; lse [n_head][T] holds the
 * log-sum-exp of each sub-head's rows. Same blocking as attention_forward;
 * the scratch must hold DIFF_ATTENTION_SCRATCH_PER_THREAD(longest) per thread. */
#define DIFF_ATTENTION_SCRATCH_PER_THREAD(longest) (4L * ATTENTION_BLOCK * (longest))
void diff_attention_forward(float *out, int ld_out, float *lse, const float *q, int ld_q,
                            const float *k, int ld_k, const float *v, int ld_v, float lambda,
                            const attention_shape *a);

/* dq, dk, dv written as attention_backward; d_lambda_parts[task] (task =
 * sequence * n_kv_head / 2 + group) gets that task's share of dL/dlambda,
 * for the caller to sum in task order. */
void diff_attention_backward(float *dq, int ld_dq, float *dk, int ld_dk, float *dv, int ld_dv,
                             const float *d_out, int ld_out, const float *lse, const float *q,
                             int ld_q, const float *k, int ld_k, const float *v, int ld_v,
                             float lambda, float *d_lambda_parts, const attention_shape *a);

/* attention_cached_forward's differential counterpart (same cache layout;
 * scores: capacity floats per thread, the two maps taken one after the other). */
void diff_attention_cached_forward(float *out, int ld_out, const float *q, int ld_q,
                                   const float *k_cache, const float *v_cache, int capacity,
                                   const int32_t *run_slot, const int32_t *seq_start,
                                   const int32_t *positions, int n_seq, int n_head,
                                   int n_kv_head, int head_dim, float lambda, float *scores,
                                   int scratch_threads);

#endif
