#include "layers/linear.h"

#include "core/gemm.h"
#include "core/threads.h"

void column_sums_add(float *sums, const float *x, int ld, int T, int n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (int j0 = 0; j0 < n; j0 += 64) {
        int j1 = j0 + 64 < n ? j0 + 64 : n;
        for (int t = 0; t < T; t++) {
            const float *row = x + (long)t * ld;
            for (int j = j0; j < j1; j++) sums[j] += row[j];
        }
    }
}

void linear_forward(float *out, int ld_out, const float *in, const float *weight, const float *bias,
                    int T, int n_in, int n_out, weight_layout layout, bool bf16) {
    if (T == 0) return;
    if (layout == WEIGHT_OUT_IN)
        gemm_model(bf16, false, true, T, n_out, n_in, 1.0f, in, n_in, weight, n_in, 0.0f, out,
                   ld_out);
    else
        gemm_model(bf16, false, false, T, n_out, n_in, 1.0f, in, n_in, weight, n_out, 0.0f, out,
                   ld_out);
    add_bias_rows(out, ld_out, bias, T, n_out);
}

void add_bias_rows(float *out, int ld_out, const float *bias, int T, int n_out) {
    if (!bias) return;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (int t = 0; t < T; t++) {
        float *row = out + (long)t * ld_out;
        for (int j = 0; j < n_out; j++) row[j] += bias[j];
    }
}

void linear_backward_input(float *d_in, const float *d_out, int ld_d_out, const float *weight,
                           int T, int n_in, int n_out, weight_layout layout, bool accumulate_d_in,
                           bool bf16) {
    if (T == 0) return;
    float beta_in = accumulate_d_in ? 1.0f : 0.0f;
    if (layout == WEIGHT_OUT_IN) /* d_in = d_out [T, out] @ W [out, in] */
        gemm_model(bf16, false, false, T, n_in, n_out, 1.0f, d_out, ld_d_out, weight, n_in, beta_in,
                   d_in, n_in);
    else /* d_in = d_out @ W^T with W [in, out] */
        gemm_model(bf16, false, true, T, n_in, n_out, 1.0f, d_out, ld_d_out, weight, n_out, beta_in,
                   d_in, n_in);
}

void linear_backward_weight(float *d_weight, float *d_bias, const float *d_out, int ld_d_out,
                            const float *in, int T, int n_in, int n_out, weight_layout layout,
                            bool bf16) {
    if (T == 0) return;
    if (layout == WEIGHT_OUT_IN) /* dW [out, in] += d_out^T @ in */
        gemm_model(bf16, true, false, n_out, n_in, T, 1.0f, d_out, ld_d_out, in, n_in, 1.0f,
                   d_weight, n_in);
    else /* dW [in, out] += in^T @ d_out */
        gemm_model(bf16, true, false, n_in, n_out, T, 1.0f, in, n_in, d_out, ld_d_out, 1.0f,
                   d_weight, n_out);
    if (d_bias) column_sums_add(d_bias, d_out, ld_d_out, T, n_out);
}
