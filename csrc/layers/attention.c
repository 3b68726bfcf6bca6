#include "layers/attention.h"
#include "core/profile.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/gemm.h"
#include "core/simd.h"
#include "core/threads.h"

/* Query block [r0, r1) only looks at keys [0, r1), so the causal upper
 * triangle is mostly skipped while the products stay large enough for sgemm.
 * A block's scores S are [r1 - r0, r1] with row stride r1. */

/* Softmax in place over the keys each query row sees (j <= i, branch rule),
 * exact zeros elsewhere; lse[i] = log sum_j exp(S_ij) over those keys.
 * Branch-free inner loops with `omp simd` reductions, so they vectorise. */
CALIGN_SIMD_CLONES
static void masked_softmax_rows(float *S, float *lse, long r0, long r1, long start,
                                const int32_t *branch) {
    const int32_t *key_branch = branch + start;
    for (long i = r0; i < r1; i++) {
        float *row = S + (i - r0) * r1;
        const int32_t own = key_branch[i];
        float m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (long j = 0; j <= i; j++) {
            float x = (key_branch[j] == 0) | (key_branch[j] == own) ? row[j] : -INFINITY;
            row[j] = x;
            m = x > m ? x : m;
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (long j = 0; j <= i; j++) {
            float e = exp_nonpositive(row[j] - m); /* exp(-inf) = 0 */
            row[j] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
        for (long j = 0; j <= i; j++) row[j] *= inv;
        for (long j = i + 1; j < r1; j++) row[j] = 0.0f;
        lse[i] = m + logf(sum);
    }
}

/* The forward's probabilities again from the scores and lse:
 * P_ij = exp(S_ij - lse_i) on the keys query i sees, 0 elsewhere. */
CALIGN_SIMD_CLONES
static void recompute_probs(float *S, const float *lse, long r0, long r1, long start,
                            const int32_t *branch) {
    const int32_t *key_branch = branch + start;
    for (long i = r0; i < r1; i++) {
        float *row = S + (i - r0) * r1;
        const int32_t own = key_branch[i];
        const float row_lse = lse[i];
        for (long j = 0; j <= i; j++) { /* masked first: exp_nonpositive wants x <= 0 */
            float x = (key_branch[j] == 0) | (key_branch[j] == own) ? row[j] - row_lse : -INFINITY;
            row[j] = exp_nonpositive(x);
        }
        for (long j = i + 1; j < r1; j++) row[j] = 0.0f;
    }
}

/* dS = P * (dP - sum_j P dP) / sqrt(head_dim), row by row (softmax backward);
 * dS holds dP on entry. */
CALIGN_SIMD_CLONES
static void softmax_backward_rows(float *dS, const float *P, long n, long width, float scale) {
    for (long i = 0; i < n; i++) {
        const float *p_row = P + i * width;
        float *row = dS + i * width;
        float weighted = 0.0f;
#pragma omp simd reduction(+ : weighted)
        for (long j = 0; j < width; j++) weighted += p_row[j] * row[j];
        for (long j = 0; j < width; j++) row[j] = p_row[j] * (row[j] - weighted) * scale;
    }
}

void attention_forward(float *out, int ld_out, float *lse, const float *q, int ld_q,
                       const float *k, int ld_k, const float *v, int ld_v,
                       const attention_shape *a) {
    const int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    const long n_tasks = (long)a->n_seq * a->n_head;
    profile_mark mark = profile_begin();
    /* one (sequence, head) per task; the products inside run single-threaded */
#pragma omp parallel for num_threads(calign_team(a->scratch_threads)) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / a->n_head), h = (int)(task % a->n_head), kvh = h / group;
        long start = a->seq_start[s], L = a->seq_start[s + 1] - start;
        float *P = a->scratch + (long)omp_get_thread_num() * a->scratch_per_thread;
        float *row_lse = lse + h * a->T + start;
        const float *Q = q + start * ld_q + (long)h * hd;
        const float *K = k + start * ld_k + (long)kvh * hd;
        const float *V = v + start * ld_v + (long)kvh * hd;
        float *O = out + start * ld_out + (long)h * hd;
        for (long r0 = 0; r0 < L; r0 += ATTENTION_BLOCK) {
            long r1 = r0 + ATTENTION_BLOCK < L ? r0 + ATTENTION_BLOCK : L;
            /* S = Q K^T / sqrt(head_dim), then softmax over visible keys */
            gemm_model(a->bf16, false, true, (int)(r1 - r0), (int)r1, hd, scale, Q + r0 * ld_q,
                       ld_q, K, ld_k, 0.0f, P, (int)r1);
            masked_softmax_rows(P, row_lse, r0, r1, start, a->branch);
            /* O = P V */
            gemm_model(a->bf16, false, false, (int)(r1 - r0), hd, (int)r1, 1.0f, P, (int)r1, V,
                       ld_v, 0.0f, O + r0 * ld_out, ld_out);
        }
    }
    profile_end(PHASE_ATTENTION, mark);
}

void attention_backward(float *dq, int ld_dq, float *dk, int ld_dk, float *dv, int ld_dv,
                        const float *d_out, int ld_out, const float *lse, const float *q,
                        int ld_q, const float *k, int ld_k, const float *v, int ld_v,
                        const attention_shape *a) {
    const int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    profile_mark mark = profile_begin();
    for (long t = 0; t < a->T; t++) {
        memset(dk + t * ld_dk, 0, sizeof(float) * (size_t)a->n_kv_head * hd);
        memset(dv + t * ld_dv, 0, sizeof(float) * (size_t)a->n_kv_head * hd);
    }
    /* One task per (sequence, kv head): the query heads of a group share the
     * same dk, dv rows, so they are handled by the same thread. */
    const long n_tasks = (long)a->n_seq * a->n_kv_head;
#pragma omp parallel for num_threads(calign_team(a->scratch_threads)) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / a->n_kv_head), kvh = (int)(task % a->n_kv_head);
        long start = a->seq_start[s], L = a->seq_start[s + 1] - start;
        float *P = a->scratch + (long)omp_get_thread_num() * a->scratch_per_thread;
        float *dS = P + ATTENTION_BLOCK * L;
        const float *K = k + start * ld_k + (long)kvh * hd;
        const float *V = v + start * ld_v + (long)kvh * hd;
        float *dK = dk + start * ld_dk + (long)kvh * hd;
        float *dV = dv + start * ld_dv + (long)kvh * hd;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *row_lse = lse + h * a->T + start;
            const float *Q = q + start * ld_q + (long)h * hd;
            const float *dO = d_out + start * ld_out + (long)h * hd;
            float *dQ = dq + start * ld_dq + (long)h * hd;
            for (long r0 = 0; r0 < L; r0 += ATTENTION_BLOCK) {
                long r1 = r0 + ATTENTION_BLOCK < L ? r0 + ATTENTION_BLOCK : L, n = r1 - r0;
                /* P = softmax(Q K^T / sqrt(head_dim)) of this block, from lse */
                gemm_model(a->bf16, false, true, (int)n, (int)r1, hd, scale, Q + r0 * ld_q, ld_q, K,
                           ld_k, 0.0f, P, (int)r1);
                recompute_probs(P, row_lse, r0, r1, start, a->branch);
                /* dV[0:r1] += P^T dO;  dP = dO V^T */
                gemm_model(a->bf16, true, false, (int)r1, hd, (int)n, 1.0f, P, (int)r1,
                           dO + r0 * ld_out, ld_out, 1.0f, dV, ld_dv);
                gemm_model(a->bf16, false, true, (int)n, (int)r1, hd, 1.0f, dO + r0 * ld_out,
                           ld_out, V, ld_v, 0.0f, dS, (int)r1);
                softmax_backward_rows(dS, P, n, r1, scale);
                /* dQ = dS K;  dK[0:r1] += dS^T Q */
                gemm_model(a->bf16, false, false, (int)n, hd, (int)r1, 1.0f, dS, (int)r1, K, ld_k,
                           0.0f, dQ + r0 * ld_dq, ld_dq);
                gemm_model(a->bf16, true, false, (int)r1, hd, (int)n, 1.0f, dS, (int)r1,
                           Q + r0 * ld_q, ld_q, 1.0f, dK, ld_dk);
            }
        }
    }
    profile_end(PHASE_ATTENTION, mark);
}

void attention_cached_forward(float *out, int ld_out, const float *q, int ld_q,
                              const float *k_cache, const float *v_cache, int capacity,
                              const int32_t *run_slot, const int32_t *seq_start,
                              const int32_t *positions, int n_seq, int n_head, int n_kv_head,
                              int head_dim, float *scores, int scratch_threads) {
    const int hd = head_dim, group = n_head / n_kv_head, kv_dim = n_kv_head * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const long n_tasks = (long)n_seq * n_head;
#pragma omp parallel for num_threads(calign_team(scratch_threads)) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / n_head), h = (int)(task % n_head), kvh = h / group;
        float *row = scores + (long)omp_get_thread_num() * capacity;
        const float *K = k_cache + (long)run_slot[s] * capacity * kv_dim + (long)kvh * hd;
        const float *V = v_cache + (long)run_slot[s] * capacity * kv_dim + (long)kvh * hd;
        for (long t = seq_start[s]; t < seq_start[s + 1]; t++) {
            const float *qt = q + t * ld_q + (long)h * hd;
            int p = positions[t];
            float m = -INFINITY;
            for (int j = 0; j <= p; j++) {
                const float *kj = K + (long)j * kv_dim;
                float dot = 0.0f;
                for (int c = 0; c < hd; c++) dot += qt[c] * kj[c];
                row[j] = dot * scale;
                m = row[j] > m ? row[j] : m;
            }
            float sum = 0.0f;
            for (int j = 0; j <= p; j++) {
                row[j] = expf(row[j] - m);
                sum += row[j];
            }
            float *ot = out + t * ld_out + (long)h * hd;
            memset(ot, 0, sizeof(float) * hd);
            for (int j = 0; j <= p; j++) {
                const float *vj = V + (long)j * kv_dim;
                float w = row[j] / sum;
                for (int c = 0; c < hd; c++) ot[c] += w * vj[c];
            }
        }
    }
}

/* ---- differential attention -------------------------------------------- */

/* A block's scores of one map: S = Q K^T / sqrt(hd), [r1 - r0, r1]. */
static void block_scores(float *S, const float *Q, int ld_q, const float *K, int ld_k, long r0,
                         long r1, int hd, float scale, const attention_shape *a) {
    gemm_model(a->bf16, false, true, (int)(r1 - r0), (int)r1, hd, scale, Q + r0 * ld_q, ld_q, K,
               ld_k, 0.0f, S, (int)r1);
}

/* out = a - lambda * b, elementwise over n */
CALIGN_SIMD_CLONES
static void subtract_scaled(float *out, const float *a, const float *b, float lambda, long n) {
    for (long i = 0; i < n; i++) out[i] = a[i] - lambda * b[i];
}

/* dS = P * (dP - sum_j P dP) * scale row by row, dP kept (softmax_backward_rows
 * into another buffer) */
CALIGN_SIMD_CLONES
static void softmax_backward_into(float *dS, const float *dP, const float *P, long n, long width,
                                  float scale) {
    for (long i = 0; i < n; i++) {
        const float *p_row = P + i * width, *dp_row = dP + i * width;
        float *row = dS + i * width;
        float weighted = 0.0f;
#pragma omp simd reduction(+ : weighted)
        for (long j = 0; j < width; j++) weighted += p_row[j] * dp_row[j];
        for (long j = 0; j < width; j++) row[j] = p_row[j] * (dp_row[j] - weighted) * scale;
    }
}

/* sum over the block of dP * P */
CALIGN_SIMD_CLONES
static double dot_block(const float *dP, const float *P, long n) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (long i = 0; i < n; i++) sum += (double)dP[i] * P[i];
    return sum;
}

void diff_attention_forward(float *out, int ld_out, float *lse, const float *q, int ld_q,
                            const float *k, int ld_k, const float *v, int ld_v, float lambda,
                            const attention_shape *a) {
    const int hd = a->head_dim, n_diff = a->n_head / 2, group = a->n_head / a->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    const long n_tasks = (long)a->n_seq * n_diff;
    profile_mark mark = profile_begin();
#pragma omp parallel for num_threads(calign_team(a->scratch_threads)) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / n_diff), h = (int)(task % n_diff), g = h / group;
        long start = a->seq_start[s], L = a->seq_start[s + 1] - start;
        float *P1 = a->scratch + (long)omp_get_thread_num() * a->scratch_per_thread;
        float *P2 = P1 + ATTENTION_BLOCK * L;
        float *lse1 = lse + (2L * h) * a->T + start, *lse2 = lse1 + a->T;
        const float *Q1 = q + start * ld_q + 2L * h * hd, *Q2 = Q1 + hd;
        const float *K1 = k + start * ld_k + 2L * g * hd, *K2 = K1 + hd;
        const float *V = v + start * ld_v + 2L * g * hd;
        float *O = out + start * ld_out + 2L * h * hd;
        for (long r0 = 0; r0 < L; r0 += ATTENTION_BLOCK) {
            long r1 = r0 + ATTENTION_BLOCK < L ? r0 + ATTENTION_BLOCK : L;
            block_scores(P1, Q1, ld_q, K1, ld_k, r0, r1, hd, scale, a);
            masked_softmax_rows(P1, lse1, r0, r1, start, a->branch);
            block_scores(P2, Q2, ld_q, K2, ld_k, r0, r1, hd, scale, a);
            masked_softmax_rows(P2, lse2, r0, r1, start, a->branch);
            subtract_scaled(P1, P1, P2, lambda, (r1 - r0) * r1);
            /* O = (P1 - lambda P2) V, 2 hd wide */
            gemm_model(a->bf16, false, false, (int)(r1 - r0), 2 * hd, (int)r1, 1.0f, P1, (int)r1, V,
                       ld_v, 0.0f, O + r0 * ld_out, ld_out);
        }
    }
    profile_end(PHASE_ATTENTION, mark);
}

void diff_attention_backward(float *dq, int ld_dq, float *dk, int ld_dk, float *dv, int ld_dv,
                             const float *d_out, int ld_out, const float *lse, const float *q,
                             int ld_q, const float *k, int ld_k, const float *v, int ld_v,
                             float lambda, float *d_lambda_parts, const attention_shape *a) {
    const int hd = a->head_dim, n_groups = a->n_kv_head / 2, group = a->n_head / a->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    profile_mark mark = profile_begin();
    for (long t = 0; t < a->T; t++) {
        memset(dk + t * ld_dk, 0, sizeof(float) * (size_t)a->n_kv_head * hd);
        memset(dv + t * ld_dv, 0, sizeof(float) * (size_t)a->n_kv_head * hd);
    }
    /* one task per (sequence, kv group): its heads share the dk, dv rows */
    const long n_tasks = (long)a->n_seq * n_groups;
#pragma omp parallel for num_threads(calign_team(a->scratch_threads)) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / n_groups), g = (int)(task % n_groups);
        long start = a->seq_start[s], L = a->seq_start[s + 1] - start;
        float *P1 = a->scratch + (long)omp_get_thread_num() * a->scratch_per_thread;
        float *P2 = P1 + ATTENTION_BLOCK * L, *dP = P2 + ATTENTION_BLOCK * L;
        float *work = dP + ATTENTION_BLOCK * L;
        const float *K1 = k + start * ld_k + 2L * g * hd, *K2 = K1 + hd;
        const float *V = v + start * ld_v + 2L * g * hd;
        float *dK1 = dk + start * ld_dk + 2L * g * hd, *dK2 = dK1 + hd;
        float *dV = dv + start * ld_dv + 2L * g * hd;
        double d_lambda = 0.0;
        for (int h = g * group; h < (g + 1) * group; h++) {
            const float *lse1 = lse + (2L * h) * a->T + start, *lse2 = lse1 + a->T;
            const float *Q1 = q + start * ld_q + 2L * h * hd, *Q2 = Q1 + hd;
            const float *dO = d_out + start * ld_out + 2L * h * hd;
            float *dQ1 = dq + start * ld_dq + 2L * h * hd, *dQ2 = dQ1 + hd;
            for (long r0 = 0; r0 < L; r0 += ATTENTION_BLOCK) {
                long r1 = r0 + ATTENTION_BLOCK < L ? r0 + ATTENTION_BLOCK : L, n = r1 - r0;
                block_scores(P1, Q1, ld_q, K1, ld_k, r0, r1, hd, scale, a);
                recompute_probs(P1, lse1, r0, r1, start, a->branch);
                block_scores(P2, Q2, ld_q, K2, ld_k, r0, r1, hd, scale, a);
                recompute_probs(P2, lse2, r0, r1, start, a->branch);
                /* dV[0:r1] += (P1 - lambda P2)^T dO;  dP = dO V^T (the combined map's) */
                subtract_scaled(work, P1, P2, lambda, n * r1);
                gemm_model(a->bf16, true, false, (int)r1, 2 * hd, (int)n, 1.0f, work, (int)r1,
                           dO + r0 * ld_out, ld_out, 1.0f, dV, ld_dv);
                gemm_model(a->bf16, false, true, (int)n, (int)r1, 2 * hd, 1.0f, dO + r0 * ld_out,
                           ld_out, V, ld_v, 0.0f, dP, (int)r1);
                /* dL/dlambda = -sum dP * P2 */
                d_lambda -= dot_block(dP, P2, n * r1);
                /* first map: dS1 = softmax backward of dP; dQ1 = dS1 K1; dK1 += dS1^T Q1 */
                softmax_backward_into(work, dP, P1, n, r1, scale);
                gemm_model(a->bf16, false, false, (int)n, hd, (int)r1, 1.0f, work, (int)r1, K1,
                           ld_k, 0.0f, dQ1 + r0 * ld_dq, ld_dq);
                gemm_model(a->bf16, true, false, (int)r1, hd, (int)n, 1.0f, work, (int)r1,
                           Q1 + r0 * ld_q, ld_q, 1.0f, dK1, ld_dk);
                /* second map, whose gradient is -lambda dP */
                softmax_backward_into(work, dP, P2, n, r1, -lambda * scale);
                gemm_model(a->bf16, false, false, (int)n, hd, (int)r1, 1.0f, work, (int)r1, K2,
                           ld_k, 0.0f, dQ2 + r0 * ld_dq, ld_dq);
                gemm_model(a->bf16, true, false, (int)r1, hd, (int)n, 1.0f, work, (int)r1,
                           Q2 + r0 * ld_q, ld_q, 1.0f, dK2, ld_dk);
            }
        }
        d_lambda_parts[task] = (float)d_lambda;
    }
    profile_end(PHASE_ATTENTION, mark);
}

/* One map of one cached token: out += weight * softmax(q . k_j / sqrt(hd)) v_j
 * over cache entries 0..p (v rows vw wide). */
static void cached_map(float *out, const float *qt, const float *K, const float *V, int p,
                       int kv_dim, int hd, int vw, float scale, float weight, float *row) {
    float m = -INFINITY;
    for (int j = 0; j <= p; j++) {
        const float *kj = K + (long)j * kv_dim;
        float dot = 0.0f;
        for (int c = 0; c < hd; c++) dot += qt[c] * kj[c];
        row[j] = dot * scale;
        m = row[j] > m ? row[j] : m;
    }
    float sum = 0.0f;
    for (int j = 0; j <= p; j++) {
        row[j] = expf(row[j] - m);
        sum += row[j];
    }
    for (int j = 0; j <= p; j++) {
        const float *vj = V + (long)j * kv_dim;
        float w = weight * row[j] / sum;
        for (int c = 0; c < vw; c++) out[c] += w * vj[c];
    }
}

void diff_attention_cached_forward(float *out, int ld_out, const float *q, int ld_q,
                                   const float *k_cache, const float *v_cache, int capacity,
                                   const int32_t *run_slot, const int32_t *seq_start,
                                   const int32_t *positions, int n_seq, int n_head,
                                   int n_kv_head, int head_dim, float lambda, float *scores,
                                   int scratch_threads) {
    const int hd = head_dim, n_diff = n_head / 2, group = n_head / n_kv_head;
    const int kv_dim = n_kv_head * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const long n_tasks = (long)n_seq * n_diff;
#pragma omp parallel for num_threads(calign_team(scratch_threads)) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / n_diff), h = (int)(task % n_diff), g = h / group;
        float *row = scores + (long)omp_get_thread_num() * capacity;
        const float *K1 = k_cache + (long)run_slot[s] * capacity * kv_dim + 2L * g * hd;
        const float *V = v_cache + (long)run_slot[s] * capacity * kv_dim + 2L * g * hd;
        for (long t = seq_start[s]; t < seq_start[s + 1]; t++) {
            const float *q1 = q + t * ld_q + 2L * h * hd;
            float *ot = out + t * ld_out + 2L * h * hd;
            memset(ot, 0, sizeof(float) * 2 * hd);
            cached_map(ot, q1, K1, V, positions[t], kv_dim, hd, 2 * hd, scale, 1.0f, row);
            cached_map(ot, q1 + hd, K1 + hd, V, positions[t], kv_dim, hd, 2 * hd, scale, -lambda,
                       row);
        }
    }
}
