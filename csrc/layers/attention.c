#include "layers/attention.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/threads.h"

static inline int visible(const int32_t *branch, long i, long j) {
    return branch[j] == 0 || branch[j] == branch[i];
}

void attention_forward(float *out, int ld_out, float *probs, const float *q, int ld_q,
                       const float *k, int ld_k, const float *v, int ld_v,
                       const attention_shape *a) {
    const int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    const long n_tasks = (long)a->n_seq * a->n_head;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / a->n_head), h = (int)(task % a->n_head), kvh = h / group;
        long start = a->seq_start[s], L = a->seq_start[s + 1] - start;
        float *P = probs + h * a->probs_per_head + a->probs_offset[s];
        for (long i = 0; i < L; i++) {
            const float *qi = q + (start + i) * ld_q + (long)h * hd;
            float *row = P + i * L;
            /* softmax over visible keys of (q_i . k_j) / sqrt(head_dim) */
            float m = -INFINITY;
            for (long j = 0; j <= i; j++) {
                if (!visible(a->branch, start + i, start + j)) {
                    row[j] = -INFINITY;
                    continue;
                }
                const float *kj = k + (start + j) * ld_k + (long)kvh * hd;
                float dot = 0.0f;
                for (int c = 0; c < hd; c++) dot += qi[c] * kj[c];
                row[j] = dot * scale;
                m = row[j] > m ? row[j] : m;
            }
            float sum = 0.0f;
            for (long j = 0; j <= i; j++) {
                row[j] = row[j] == -INFINITY ? 0.0f : expf(row[j] - m);
                sum += row[j];
            }
            float inv = 1.0f / sum;
            float *oi = out + (start + i) * ld_out + (long)h * hd;
            memset(oi, 0, sizeof(float) * hd);
            for (long j = 0; j <= i; j++) {
                row[j] *= inv;
                if (row[j] == 0.0f) continue;
                const float *vj = v + (start + j) * ld_v + (long)kvh * hd;
                for (int c = 0; c < hd; c++) oi[c] += row[j] * vj[c];
            }
        }
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *d_out, int ld_out,
                        const float *probs, const float *q, int ld_q, const float *k, int ld_k,
                        const float *v, int ld_v, long T, const attention_shape *a) {
    const int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    for (long t = 0; t < T; t++) {
        memset(dk + t * ld_k, 0, sizeof(float) * (size_t)a->n_kv_head * hd);
        memset(dv + t * ld_v, 0, sizeof(float) * (size_t)a->n_kv_head * hd);
    }
    /* One task per (sequence, kv head): the query heads of a group share the
     * same dk, dv rows, so they are handled by the same thread. */
    const long n_tasks = (long)a->n_seq * a->n_kv_head;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(dynamic, 1)
    for (long task = 0; task < n_tasks; task++) {
        int s = (int)(task / a->n_kv_head), kvh = (int)(task % a->n_kv_head);
        long start = a->seq_start[s], L = a->seq_start[s + 1] - start;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *P = probs + h * a->probs_per_head + a->probs_offset[s];
            for (long i = 0; i < L; i++) {
                const float *row = P + i * L;
                const float *doi = d_out + (start + i) * ld_out + (long)h * hd;
                const float *qi = q + (start + i) * ld_q + (long)h * hd;
                float *dqi = dq + (start + i) * ld_q + (long)h * hd;
                memset(dqi, 0, sizeof(float) * hd);
                /* dP_ij = do_i . v_j;  dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij) */
                float weighted = 0.0f;
                for (long j = 0; j <= i; j++) {
                    if (row[j] == 0.0f) continue;
                    const float *vj = v + (start + j) * ld_v + (long)kvh * hd;
                    float dp = 0.0f;
                    for (int c = 0; c < hd; c++) dp += doi[c] * vj[c];
                    weighted += row[j] * dp;
                }
                for (long j = 0; j <= i; j++) {
                    if (row[j] == 0.0f) continue;
                    const float *vj = v + (start + j) * ld_v + (long)kvh * hd;
                    const float *kj = k + (start + j) * ld_k + (long)kvh * hd;
                    float *dvj = dv + (start + j) * ld_v + (long)kvh * hd;
                    float *dkj = dk + (start + j) * ld_k + (long)kvh * hd;
                    float dp = 0.0f;
                    for (int c = 0; c < hd; c++) {
                        dp += doi[c] * vj[c];
                        dvj[c] += row[j] * doi[c];
                    }
                    float ds = row[j] * (dp - weighted) * scale;
                    for (int c = 0; c < hd; c++) {
                        dqi[c] += ds * kj[c];
                        dkj[c] += ds * qi[c];
                    }
                }
            }
        }
    }
}

void attention_cached_forward(float *out, int ld_out, const float *q, int ld_q,
                              const float *k_cache, const float *v_cache, int capacity,
                              const int32_t *run_slot, const int32_t *seq_start,
                              const int32_t *positions, int n_seq, int n_head, int n_kv_head,
                              int head_dim, float *scores) {
    const int hd = head_dim, group = n_head / n_kv_head, kv_dim = n_kv_head * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    const long n_tasks = (long)n_seq * n_head;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(dynamic, 1)
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
