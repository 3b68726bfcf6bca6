/* Affine layers out = in @ W^T + b (nn.Linear, W stored [out, in]) or
 * out = in @ W + b (GPT-2's Conv1D, W stored [in, out]). */
#ifndef CALIGN_LINEAR_H
#define CALIGN_LINEAR_H

#include <stdbool.h>

typedef enum { WEIGHT_OUT_IN, WEIGHT_IN_OUT } weight_layout;

/* out[T, n_out] = in[T, n_in] W (+ bias); ld_out is the row stride of out.
 * bf16: the products take bfloat16-rounded operands (gemm_model). */
void linear_forward(float *out, int ld_out, const float *in, const float *weight, const float *bias,
                    int T, int n_in, int n_out, weight_layout layout, bool bf16);

/* The backward, in two halves for a caller that needs something between
 * them: d_in [T, n_in] = d_out W^T-ish (written, or added when
 * accumulate_d_in; ld_d_out is d_out's row stride), and d_weight += ...,
 * d_bias += column sums of d_out (when not NULL). */
void linear_backward_input(float *d_in, const float *d_out, int ld_d_out, const float *weight,
                           int T, int n_in, int n_out, weight_layout layout, bool accumulate_d_in,
                           bool bf16);
void linear_backward_weight(float *d_weight, float *d_bias, const float *d_out, int ld_d_out,
                            const float *in, int T, int n_in, int n_out, weight_layout layout,
                            bool bf16);

/* out[t][j] += bias[j] for T rows of n_out (nothing when bias is NULL). */
void add_bias_rows(float *out, int ld_out, const float *bias, int T, int n_out);

/* sums[j] += sum_t x[t * ld + j] for j < n (a column sum, parallel over columns). */
void column_sums_add(float *sums, const float *x, int ld, int T, int n);

#endif
