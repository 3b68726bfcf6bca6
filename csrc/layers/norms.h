/* LayerNorm (GPT-2) and RMSNorm (Llama, Qwen; also Qwen3's per-head q/k norm).
 * Rows of length dim; per-row statistics are kept for the backward. The
 * backwards take scratch of NORM_SCRATCH_FLOATS(scratch_threads, dim) floats
 * and run at most scratch_threads threads. */
#ifndef CALIGN_NORMS_H
#define CALIGN_NORMS_H

/* out = (x - mean) * rstd * weight + bias;  rstd = 1/sqrt(var + eps) */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *weight, const float *bias, long n_rows, int dim, float eps);
/* The forward's out again from inp and the kept statistics (bit for bit),
 * so the backward need not keep the normalised activations. */
void layernorm_recompute(float *out, const float *inp, const float *weight, const float *bias,
                         const float *mean, const float *rstd, long n_rows, int dim);
/* d_inp is ADDED to (residual streams accumulate); d_weight, d_bias += (both
 * NULL: a frozen norm) */
void layernorm_backward(float *d_inp, float *d_weight, float *d_bias, const float *d_out,
                        const float *inp, const float *weight, const float *mean,
                        const float *rstd, long n_rows, int dim, float *scratch,
                        int scratch_threads);

/* out = x * rstd * weight;  rstd = 1/sqrt(mean(x^2) + eps) (transformers'
 * LlamaRMSNorm: statistics in float, then times weight) */
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight,
                     long n_rows, int dim, float eps);
void rmsnorm_recompute(float *out, const float *inp, const float *weight, const float *rstd,
                       long n_rows, int dim);
/* d_inp is written when overwrite_d_inp, else added to. d_weight += (NULL:
 * a frozen norm) */
void rmsnorm_backward(float *d_inp, float *d_weight, const float *d_out, const float *inp,
                      const float *weight, const float *rstd, long n_rows, int dim,
                      int overwrite_d_inp, float *scratch, int scratch_threads);

#define NORM_SCRATCH_FLOATS(n_threads, dim) ((long)(n_threads) * (dim) * 2)

#endif
