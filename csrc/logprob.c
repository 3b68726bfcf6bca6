#include "logprob.h"
#include "core/profile.h"

#include <math.h>
#include <string.h>

#include "core/gemm.h"
#include "core/simd.h"
#include "core/threads.h"

#define CHUNK_LOGITS_BUDGET_BYTES (32L << 20)

int logprob_default_chunk_rows(int V, int d) {
    long rows = CHUNK_LOGITS_BUDGET_BYTES / ((long)sizeof(float) * (V > 0 ? V : 1));
    if (rows < 32) rows = 32;
    if (rows > 2048) rows = 2048;
    return (int)(rows / 16 * 16);
}

/* Scratch layout: logits chunk [C, V] | gathered hidden rows [C, d] |
 * grad of gathered hidden rows [C, d] | indices of the scored rows [N]. */
typedef struct {
    float *logits, *hidden_rows, *grad_hidden_rows;
    int32_t *active;
} scratch_layout;

static long chunk_capacity(const logprob_problem *p) {
    return p->chunk_rows < p->N ? p->chunk_rows : (p->N > 0 ? p->N : 1);
}

size_t logprob_scratch_bytes(const logprob_problem *p) {
    long C = chunk_capacity(p);
    return sizeof(float) * ((size_t)C * p->V + 2 * (size_t)C * p->d) +
           sizeof(int32_t) * (size_t)(p->N > 0 ? p->N : 1) + 64;
}

static scratch_layout carve_scratch(const logprob_problem *p, void *scratch) {
    long C = chunk_capacity(p);
    scratch_layout s;
    s.logits = (float *)scratch;
    s.hidden_rows = s.logits + (size_t)C * p->V;
    s.grad_hidden_rows = s.hidden_rows + (size_t)C * p->d;
    s.active = (int32_t *)(s.grad_hidden_rows + (size_t)C * p->d);
    return s;
}

/* Indices of the rows that are scored (target != ignore_index). */
static long collect_active_rows(int32_t *active, const logprob_problem *p) {
    long n = 0;
    for (long i = 0; i < p->N; i++)
        if (p->targets[i] != p->ignore_index) active[n++] = (int32_t)i;
    return n;
}

/* The rows active[0..n) as one [n, d] matrix: a view into hidden when they
 * are consecutive, else a copy into buf. */
static const float *gather_rows(float *buf, const int32_t *active, long n,
                                const float *hidden, int d) {
    if (active[n - 1] - active[0] == n - 1) return hidden + (size_t)active[0] * d;
    for (long r = 0; r < n; r++)
        memcpy(buf + (size_t)r * d, hidden + (size_t)active[r] * d, sizeof(float) * d);
    return buf;
}

/* Sums run in float over blocks of SUM_BLOCK terms, and in double across
 * blocks, so their error does not grow with the vocabulary. Inside a block the
 * `omp simd reduction` lets the compiler keep one partial sum per vector lane
 * (without it, gcc keeps the sequential order and vectorises nothing). */
#define SUM_BLOCK 512

/* z = (logits + bias) * inv_temperature in place; returns max_v z_v and sets
 * *sum_z = sum_v z_v. */
CALIGN_SIMD_CLONES
static float scale_row(float *z, const float *bias, int V, float inv_temperature,
                       double *sum_z) {
    float m = -INFINITY;
    if (bias) {
        for (int v = 0; v < V; v++) z[v] = (z[v] + bias[v]) * inv_temperature;
    } else if (inv_temperature != 1.0f) {
        for (int v = 0; v < V; v++) z[v] *= inv_temperature;
    }
    double total = 0.0;
    for (int v0 = 0; v0 < V; v0 += SUM_BLOCK) {
        int v1 = v0 + SUM_BLOCK < V ? v0 + SUM_BLOCK : V;
        float s = 0.0f;
#pragma omp simd reduction(max : m) reduction(+ : s)
        for (int v = v0; v < v1; v++) {
            m = z[v] > m ? z[v] : m;
            s += z[v];
        }
        total += s;
    }
    *sum_z = total;
    return m;
}

/* Sums over v of e_v = exp(z_v - m), e_v (z_v - m) and e_v^2 (the last two only
 * when with_moments), for entropy = log sum(e) - sum(e (z - m))/sum(e) and
 * log sum p^2 = log sum(e^2) - 2 log sum(e). */
CALIGN_SIMD_CLONES
static void exp_sums(const float *z, int V, float m, int with_moments, double *s_e,
                     double *s_ez, double *s_ee) {
    double se = 0.0, sez = 0.0, see = 0.0;
    for (int v0 = 0; v0 < V; v0 += SUM_BLOCK) {
        int v1 = v0 + SUM_BLOCK < V ? v0 + SUM_BLOCK : V;
        float be = 0.0f, bez = 0.0f, bee = 0.0f;
        if (with_moments) {
#pragma omp simd reduction(+ : be, bez, bee)
            for (int v = v0; v < v1; v++) {
                float e = exp_nonpositive(z[v] - m);
                be += e;
                bez += e * (z[v] - m);
                bee += e * e;
            }
        } else {
#pragma omp simd reduction(+ : be)
            for (int v = v0; v < v1; v++) be += exp_nonpositive(z[v] - m);
        }
        se += be;
        sez += bez;
        see += bee;
    }
    *s_e = se;
    *s_ez = sez;
    *s_ee = see;
}

/* In place: z_v <- e_v = exp(z_v - m), with the sums of exp_sums (blocks of
 * SUM_BLOCK summed in float, then in double). */
CALIGN_SIMD_CLONES
static void exp_in_place(float *z, int V, float m, int with_moments, double *s_e, double *s_ez,
                         double *s_ee) {
    double se = 0.0, sez = 0.0, see = 0.0;
    for (int v0 = 0; v0 < V; v0 += SUM_BLOCK) {
        int v1 = v0 + SUM_BLOCK < V ? v0 + SUM_BLOCK : V;
        float be = 0.0f, bez = 0.0f, bee = 0.0f;
        if (with_moments) {
#pragma omp simd reduction(+ : be, bez, bee)
            for (int v = v0; v < v1; v++) {
                float e = exp_nonpositive(z[v] - m);
                bez += e * (z[v] - m);
                bee += e * e;
                be += e;
                z[v] = e;
            }
        } else {
#pragma omp simd reduction(+ : be)
            for (int v = v0; v < v1; v++) {
                z[v] = exp_nonpositive(z[v] - m);
                be += z[v];
            }
        }
        se += be;
        sez += bez;
        see += bee;
    }
    *s_e = se;
    *s_ez = sez;
    *s_ee = see;
}

/* In place: e_v <- factor * e_v. */
CALIGN_SIMD_CLONES
static void scale_in_place_row(float *e, int V, float factor) {
    for (int v = 0; v < V; v++) e[v] *= factor;
}

/* The statistics of one row from its sums (see exp_sums). */
static void write_stats(const logprob_stats *stats, long row, float lse, float m, float z_target,
                        double sum_z, double s_e, double s_ez, double s_ee, int V) {
    if (stats->logsumexp) stats->logsumexp[row] = lse;
    if (stats->entropy) stats->entropy[row] = (float)(log(s_e) - s_ez / s_e);
    if (stats->mean_logit) stats->mean_logit[row] = (float)(sum_z / V);
    if (stats->log_sum_sq_probs) stats->log_sum_sq_probs[row] = (float)(log(s_ee) - 2.0 * log(s_e));
    if (stats->is_top1) stats->is_top1[row] = z_target >= m;
}

static int wants_moments(const logprob_stats *stats) {
    return stats && (stats->entropy || stats->log_sum_sq_probs);
}

/* Per-row forward on a chunk of logits; returns the first non-finite global
 * row index or -1. */
static long forward_chunk_rows(float *logprobs, const logprob_stats *stats,
                               float *logits, const int32_t *active_chunk, long n,
                               const logprob_problem *p) {
    const int V = p->V;
    const float inv_t = 1.0f / p->temperature;
    const int with_moments = wants_moments(stats);
    long first_bad = p->N;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) reduction(min : first_bad)
    for (long r = 0; r < n; r++) {
        float *z = logits + (size_t)r * V;
        long row = active_chunk[r];
        double sum_z, s_e, s_ez, s_ee;
        float m = scale_row(z, p->bias, V, inv_t, &sum_z);
        exp_sums(z, V, m, with_moments, &s_e, &s_ez, &s_ee);
        float lse = (float)(m + log(s_e));
        if (!isfinite(lse)) {
            if (row < first_bad) first_bad = row;
            continue;
        }
        float z_target = z[p->targets[row]];
        logprobs[row] = z_target - lse;
        if (stats) write_stats(stats, row, lse, m, z_target, sum_z, s_e, s_ez, s_ee, V);
    }
    return first_bad == p->N ? -1 : first_bad;
}

static void zero_outputs(float *logprobs, const logprob_stats *stats, long N) {
    if (logprobs) memset(logprobs, 0, sizeof(float) * N);
    if (!stats) return;
    if (stats->logsumexp) memset(stats->logsumexp, 0, sizeof(float) * N);
    if (stats->entropy) memset(stats->entropy, 0, sizeof(float) * N);
    if (stats->mean_logit) memset(stats->mean_logit, 0, sizeof(float) * N);
    if (stats->log_sum_sq_probs) memset(stats->log_sum_sq_probs, 0, sizeof(float) * N);
    if (stats->is_top1) memset(stats->is_top1, 0, N);
}

static long logprobs_forward(float *logprobs, const logprob_stats *stats,
                             const logprob_problem *p, void *scratch) {
    scratch_layout s = carve_scratch(p, scratch);
    zero_outputs(logprobs, stats, p->N);
    long n_active = collect_active_rows(s.active, p);
    for (long c0 = 0; c0 < n_active; c0 += p->chunk_rows) {
        long n = n_active - c0 < p->chunk_rows ? n_active - c0 : p->chunk_rows;
        const float *h = gather_rows(s.hidden_rows, s.active + c0, n, p->hidden, p->d);
        /* logits [n, V] = h [n, d] @ W^T */
        gemm_model(p->bf16, false, true, (int)n, p->V, p->d, 1.0f, h, p->d, p->weight, p->d, 0.0f,
                   s.logits, p->V);
        long bad = forward_chunk_rows(logprobs, stats, s.logits, s.active + c0, n, p);
        if (bad >= 0) return bad;
    }
    return -1;
}

/* Turns a chunk of logits into dL/dlogits in place:
 *   dL/dz_v = g (1[v = t] - softmax(z)_v),  dL/dlogits = dL/dz / tau,
 * writing the forward's log-probs and statistics on the way. */
static long backward_chunk_rows(float *logprobs, const logprob_stats *stats, float *logits,
                                const int32_t *active_chunk, long n, const float *grad_logprobs,
                                const logprob_problem *p) {
    const int V = p->V;
    const float inv_t = 1.0f / p->temperature;
    const int with_moments = wants_moments(stats);
    long first_bad = p->N;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) reduction(min : first_bad)
    for (long r = 0; r < n; r++) {
        float *z = logits + (size_t)r * V;
        long row = active_chunk[r];
        int64_t t = p->targets[row];
        double sum_z, s_e, s_ez, s_ee;
        float m = scale_row(z, p->bias, V, inv_t, &sum_z);
        float z_target = z[t];
        exp_in_place(z, V, m, with_moments, &s_e, &s_ez, &s_ee);
        float lse = (float)(m + log(s_e));
        if (!isfinite(lse)) {
            if (row < first_bad) first_bad = row;
            continue;
        }
        if (logprobs) logprobs[row] = z_target - lse;
        if (stats) write_stats(stats, row, lse, m, z_target, sum_z, s_e, s_ez, s_ee, V);
        /* softmax_v = e_v / s_e */
        float coef = grad_logprobs[row] * inv_t;
        scale_in_place_row(z, V, (float)(-coef / s_e));
        z[t] += coef;
    }
    return first_bad == p->N ? -1 : first_bad;
}

/* grad_bias[v] += sum over the chunk's rows of dL/dlogits[r, v]. */
static void accumulate_bias_grad(float *grad_bias, const float *g, long n, int V) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (int v0 = 0; v0 < V; v0 += 256) {
        int v1 = v0 + 256 < V ? v0 + 256 : V;
        for (long r = 0; r < n; r++) {
            const float *row = g + (size_t)r * V;
            for (int v = v0; v < v1; v++) grad_bias[v] += row[v];
        }
    }
}

static long logprobs_backward(float *grad_hidden, float *grad_weight, float *grad_bias,
                              float *logprobs, const logprob_stats *stats,
                              const float *grad_logprobs, const logprob_problem *p,
                              void *scratch) {
    scratch_layout s = carve_scratch(p, scratch);
    const int d = p->d, V = p->V;
    memset(grad_hidden, 0, sizeof(float) * (size_t)p->N * d);
    zero_outputs(logprobs, stats, p->N);
    long n_active = collect_active_rows(s.active, p);
    for (long c0 = 0; c0 < n_active; c0 += p->chunk_rows) {
        long n = n_active - c0 < p->chunk_rows ? n_active - c0 : p->chunk_rows;
        const int32_t *rows = s.active + c0;
        const float *h = gather_rows(s.hidden_rows, rows, n, p->hidden, d);
        gemm_model(p->bf16, false, true, (int)n, V, d, 1.0f, h, d, p->weight, d, 0.0f, s.logits, V);
        long bad = backward_chunk_rows(logprobs, stats, s.logits, rows, n, grad_logprobs, p);
        if (bad >= 0) return bad;
        /* grad_h [n, d] = G [n, V] @ W [V, d], straight into grad_hidden when
         * the rows are consecutive */
        int consecutive = rows[n - 1] - rows[0] == n - 1;
        float *gh = consecutive ? grad_hidden + (size_t)rows[0] * d : s.grad_hidden_rows;
        gemm_model(p->bf16, false, false, (int)n, d, V, 1.0f, s.logits, V, p->weight, d, 0.0f, gh,
                   d);
        if (!consecutive)
            for (long r = 0; r < n; r++)
                memcpy(grad_hidden + (size_t)rows[r] * d, gh + (size_t)r * d, sizeof(float) * d);
        /* grad_W [V, d] += G^T [V, n] @ h [n, d] (none for a frozen lm_head) */
        if (grad_weight)
            gemm_model(p->bf16, true, false, V, d, (int)n, 1.0f, s.logits, V, h, d, 1.0f,
                       grad_weight, d);
        if (grad_bias) accumulate_bias_grad(grad_bias, s.logits, n, V);
    }
    return -1;
}

long token_logprobs_forward(float *logprobs, const logprob_stats *stats,
                            const logprob_problem *p, void *scratch) {
    profile_mark mark = profile_begin();
    long bad = logprobs_forward(logprobs, stats, p, scratch);
    profile_end(PHASE_LOGPROB, mark);
    return bad;
}

long token_logprobs_backward(float *grad_hidden, float *grad_weight, float *grad_bias,
                             float *logprobs, const logprob_stats *stats,
                             const float *grad_logprobs, const logprob_problem *p,
                             void *scratch) {
    profile_mark mark = profile_begin();
    long bad = logprobs_backward(grad_hidden, grad_weight, grad_bias, logprobs, stats,
                                 grad_logprobs, p, scratch);
    profile_end(PHASE_LOGPROB, mark);
    return bad;
}

/* ---- grouped: forward, loss gradient and backward per chunk of whole groups */

static long group_rows(const logprob_groups *g, int g0, int g1) {
    return g->seq_first_row[g->group_first_seq[g1]] - g->seq_first_row[g->group_first_seq[g0]];
}

static double row_weight(const logprob_groups *g, long row) {
    return g->row_weight ? g->row_weight[row] : 1.0;
}

/* Scratch: logits chunk [C, V], padded to 64 bytes so the doubles after it
 * are aligned | per row: exp sum, loss coefficient [C] doubles. */
static size_t grouped_logits_floats(const logprob_problem *p) {
    return ((size_t)chunk_capacity(p) * p->V + 15) / 16 * 16;
}

size_t logprob_grouped_scratch_bytes(const logprob_problem *p) {
    long C = chunk_capacity(p);
    return sizeof(float) * grouped_logits_floats(p) + 2 * sizeof(double) * (size_t)C + 64;
}

/* Logits of rows [r0, r0 + n), turned into exps in place (each row's exp sum
 * in row_sum) with the log-probs and stats written; returns the first
 * non-finite row or -1. */
static long chunk_forward(float *logprobs, const logprob_stats *stats, double *row_sum,
                          float *logits, long r0, long n, const logprob_problem *p) {
    const int V = p->V;
    const float inv_t = 1.0f / p->temperature;
    const int with_moments = wants_moments(stats);
    gemm_model(p->bf16, false, true, (int)n, V, p->d, 1.0f, p->hidden + (size_t)r0 * p->d, p->d,
               p->weight, p->d, 0.0f, logits, V);
    long first_bad = p->N;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) reduction(min : first_bad)
    for (long r = 0; r < n; r++) {
        float *z = logits + (size_t)r * V;
        long row = r0 + r;
        double sum_z, s_e, s_ez, s_ee;
        float m = scale_row(z, p->bias, V, inv_t, &sum_z);
        float z_target = z[p->targets[row]];
        exp_in_place(z, V, m, with_moments, &s_e, &s_ez, &s_ee);
        float lse = (float)(m + log(s_e));
        if (!isfinite(lse)) {
            if (row < first_bad) first_bad = row;
            continue;
        }
        logprobs[row] = z_target - lse;
        row_sum[r] = s_e;
        if (stats) write_stats(stats, row, lse, m, z_target, sum_z, s_e, s_ez, s_ee, V);
    }
    return first_bad == p->N ? -1 : first_bad;
}

/* The chunk's exps -> dL/dlogits = coef (1[v = t] - e_v / sum e) / tau in
 * place, then grad_hidden rows = G W and grad_weight += G^T h. row_coef[r] is
 * dL/dlogp of row r0 + r. */
static void chunk_backward(float *grad_hidden, float *grad_weight, float *logits,
                           const double *row_sum, const double *row_coef, long r0, long n,
                           const logprob_problem *p) {
    const int d = p->d, V = p->V;
    const float inv_t = 1.0f / p->temperature;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long r = 0; r < n; r++) {
        float *z = logits + (size_t)r * V;
        float coef = (float)row_coef[r] * inv_t;
        scale_in_place_row(z, V, (float)(-coef / row_sum[r]));
        z[p->targets[r0 + r]] += coef;
    }
    gemm_model(p->bf16, false, false, (int)n, d, V, 1.0f, logits, V, p->weight, d, 0.0f,
               grad_hidden + (size_t)r0 * d, d);
    if (grad_weight) /* none for a frozen lm_head */
        gemm_model(p->bf16, true, false, V, d, (int)n, 1.0f, logits, V, p->hidden + (size_t)r0 * d,
                   d, 1.0f, grad_weight, d);
}

/* seq_sums[s] = sum of weight * logp over the rows of sequences [s0, s1). */
static void sequence_sums(double *seq_sums, int s0, int s1, const float *logprobs,
                          const logprob_groups *g) {
    for (int s = s0; s < s1; s++) {
        double sum = 0.0;
        for (long row = g->seq_first_row[s]; row < g->seq_first_row[s + 1]; row++)
            sum += logprobs[row] * row_weight(g, row);
        seq_sums[s] = sum;
    }
}

/* row_coef[row - r0] = d loss / d logp of the rows in [r0, r1) of sequences
 * [s0, s1): the token loss's gradient, or seq_grad * weight. */
static void row_coefficients(double *row_coef, long r0, long r1, int s0, int s1,
                             const double *seq_grads, const logprob_groups *g) {
    if (g->token_grads) {
        for (long row = r0; row < r1; row++) row_coef[row - r0] = g->row_grads[row];
        return;
    }
    for (int s = s0; s < s1; s++) {
        long a = g->seq_first_row[s] > r0 ? g->seq_first_row[s] : r0;
        long b = g->seq_first_row[s + 1] < r1 ? g->seq_first_row[s + 1] : r1;
        for (long row = a; row < b; row++) row_coef[row - r0] = seq_grads[s] * row_weight(g, row);
    }
}

/* The loss's gradient for groups [g0, g1), whose sequences are [s0, s1):
 * seq_sums and seq_grads, or the rows' gradients of a token loss. */
static void loss_grads(double *seq_sums, double *seq_grads, int g0, int g1, int s0, int s1,
                       const float *logprobs, const logprob_groups *g) {
    sequence_sums(seq_sums, s0, s1, logprobs, g);
    if (g->token_grads)
        g->token_grads(g->ctx, g0, g1, logprobs, g->row_grads);
    else
        g->sequence_grads(g->ctx, g0, g1, seq_sums, seq_grads);
}

long token_logprobs_grouped(float *grad_hidden, float *grad_weight, float *logprobs,
                            const logprob_stats *stats, double *seq_sums, double *seq_grads,
                            const logprob_problem *p, const logprob_groups *g, void *scratch) {
    profile_mark mark = profile_begin();
    const long C = chunk_capacity(p);
    float *logits = (float *)scratch;
    double *row_sum = (double *)(logits + grouped_logits_floats(p)), *row_coef = row_sum + C;
    long bad = -1;
    for (int g0 = 0, g1; g0 < g->n_groups && bad < 0; g0 = g1) {
        const int s0 = g->group_first_seq[g0];
        const long r0 = g->seq_first_row[s0];
        if (group_rows(g, g0, g0 + 1) <= C) {
            /* as many whole groups as the chunk holds: one pass */
            for (g1 = g0 + 1; g1 < g->n_groups && group_rows(g, g0, g1 + 1) <= C; g1++) {
            }
            const int s1 = g->group_first_seq[g1];
            const long n = g->seq_first_row[s1] - r0;
            if ((bad = chunk_forward(logprobs, stats, row_sum, logits, r0, n, p)) >= 0) break;
            loss_grads(seq_sums, seq_grads, g0, g1, s0, s1, logprobs, g);
            row_coefficients(row_coef, r0, r0 + n, s0, s1, seq_grads, g);
            chunk_backward(grad_hidden, grad_weight, logits, row_sum, row_coef, r0, n, p);
        } else {
            /* a group larger than a chunk: score it in chunks, take the loss's
             * gradient, then compute its logits again for the backward (the
             * memory stays bounded; one product more for this group) */
            g1 = g0 + 1;
            const int s1 = g->group_first_seq[g1];
            const long r_end = g->seq_first_row[s1];
            for (long c0 = r0; c0 < r_end && bad < 0; c0 += C)
                bad = chunk_forward(logprobs, stats, row_sum, logits, c0,
                                    r_end - c0 < C ? r_end - c0 : C, p);
            if (bad >= 0) break;
            loss_grads(seq_sums, seq_grads, g0, g1, s0, s1, logprobs, g);
            for (long c0 = r0; c0 < r_end; c0 += C) {
                long n = r_end - c0 < C ? r_end - c0 : C;
                chunk_forward(logprobs, stats, row_sum, logits, c0, n, p);
                row_coefficients(row_coef, c0, c0 + n, s0, s1, seq_grads, g);
                chunk_backward(grad_hidden, grad_weight, logits, row_sum, row_coef, c0, n, p);
            }
        }
    }
    profile_end(PHASE_LOGPROB, mark);
    return bad;
}
