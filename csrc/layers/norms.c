#include "layers/norms.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/threads.h"

/* One row of the output from its statistics: the forward and the backward's
 * recomputation share it, so both give the same floats. */
static inline void layernorm_row(float *y, const float *x, const float *weight,
                                 const float *bias, float m, float s, int dim) {
    for (int i = 0; i < dim; i++) y[i] = (x[i] - m) * s * weight[i] + bias[i];
}

static inline void rmsnorm_row(float *y, const float *x, const float *weight, float s, int dim) {
    for (int i = 0; i < dim; i++) y[i] = weight[i] * (x[i] * s);
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, long n_rows, int dim, float eps) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long r = 0; r < n_rows; r++) {
        const float *x = inp + r * dim;
        double sum = 0.0;
        for (int i = 0; i < dim; i++) sum += x[i];
        float m = (float)(sum / dim);
        double var = 0.0;
        for (int i = 0; i < dim; i++) var += (double)(x[i] - m) * (x[i] - m);
        float s = 1.0f / sqrtf((float)(var / dim) + eps);
        layernorm_row(out + r * dim, x, weight, bias, m, s, dim);
        mean[r] = m;
        rstd[r] = s;
    }
}

void layernorm_recompute(float *out, const float *inp, const float *weight, const float *bias,
                         const float *mean, const float *rstd, long n_rows, int dim) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long r = 0; r < n_rows; r++)
        layernorm_row(out + r * dim, inp + r * dim, weight, bias, mean[r], rstd[r], dim);
}

/* Parameter gradients are sums over rows: each thread sums its rows into a
 * private slice of `partial` (2 * dim floats per thread, from the caller's
 * scratch), then the slices are added in thread order (the same result for
 * the same thread count). */
static float *thread_partials(float *scratch, int n_threads, int dim) {
    memset(scratch, 0, sizeof(float) * (size_t)n_threads * dim * 2);
    return scratch;
}

static void add_partials(float *d_weight, float *d_bias, const float *partial, int n_threads,
                         int dim) {
    if (!d_weight) return; /* a frozen norm (LoRA): only d_inp was wanted */
    for (int t = 0; t < n_threads; t++) {
        const float *pw = partial + (size_t)t * dim * 2;
        for (int i = 0; i < dim; i++) d_weight[i] += pw[i];
        if (d_bias)
            for (int i = 0; i < dim; i++) d_bias[i] += pw[dim + i];
    }
}

void layernorm_backward(float *d_inp, float *d_weight, float *d_bias, const float *d_out,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, long n_rows, int dim, float *scratch,
                        int scratch_threads) {
    int n_threads = calign_team(scratch_threads);
    float *partial = thread_partials(scratch, n_threads, dim);
#pragma omp parallel num_threads(n_threads)
    {
        int tid = omp_get_thread_num();
        float *pw = partial + (size_t)tid * dim * 2, *pb = pw + dim;
#pragma omp for schedule(static)
        for (long r = 0; r < n_rows; r++) {
            const float *x = inp + r * dim, *dy = d_out + r * dim;
            float *dx = d_inp + r * dim;
            float m = mean[r], s = rstd[r];
            /* dx = s * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * weight */
            double mean_g = 0.0, mean_gx = 0.0;
            for (int i = 0; i < dim; i++) {
                float xhat = (x[i] - m) * s, g = dy[i] * weight[i];
                mean_g += g;
                mean_gx += g * xhat;
                pw[i] += dy[i] * xhat;
                pb[i] += dy[i];
            }
            float a = (float)(mean_g / dim), b = (float)(mean_gx / dim);
            for (int i = 0; i < dim; i++) {
                float xhat = (x[i] - m) * s;
                dx[i] += s * (dy[i] * weight[i] - a - xhat * b);
            }
        }
    }
    add_partials(d_weight, d_bias, partial, n_threads, dim);
}

void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                     long n_rows, int dim, float eps) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long r = 0; r < n_rows; r++) {
        const float *x = inp + r * dim;
        double ss = 0.0;
        for (int i = 0; i < dim; i++) ss += (double)x[i] * x[i];
        float s = 1.0f / sqrtf((float)(ss / dim) + eps);
        rmsnorm_row(out + r * dim, x, weight, s, dim);
        rstd[r] = s;
    }
}

void rmsnorm_recompute(float *out, const float *inp, const float *weight, const float *rstd,
                       long n_rows, int dim) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long r = 0; r < n_rows; r++) rmsnorm_row(out + r * dim, inp + r * dim, weight, rstd[r], dim);
}

void rmsnorm_backward(float *d_inp, float *d_weight, const float *d_out, const float *inp,
                      const float *weight, const float *rstd, long n_rows, int dim,
                      int overwrite_d_inp, float *scratch, int scratch_threads) {
    int n_threads = calign_team(scratch_threads);
    float *partial = thread_partials(scratch, n_threads, dim);
#pragma omp parallel num_threads(n_threads)
    {
        int tid = omp_get_thread_num();
        float *pw = partial + (size_t)tid * dim * 2;
#pragma omp for schedule(static)
        for (long r = 0; r < n_rows; r++) {
            const float *x = inp + r * dim, *dy = d_out + r * dim;
            float *dx = d_inp + r * dim;
            float s = rstd[r];
            /* y = w x s:  dx = s (g - xhat mean(g xhat)),  g = dy w,  xhat = x s */
            double mean_gx = 0.0;
            for (int i = 0; i < dim; i++) {
                float xhat = x[i] * s, g = dy[i] * weight[i];
                mean_gx += g * xhat;
                pw[i] += dy[i] * xhat;
            }
            float b = (float)(mean_gx / dim);
            for (int i = 0; i < dim; i++) {
                float v = s * (dy[i] * weight[i] - x[i] * s * b);
                dx[i] = overwrite_d_inp ? v : dx[i] + v;
            }
        }
    }
    add_partials(d_weight, NULL, partial, n_threads, dim);
}
