#include "layers/lora.h"

#include "core/gemm.h"

const char *const LORA_SITE_NAMES[LORA_N_SITES] = {
    [LORA_QKV] = "qkv", [LORA_O] = "o", [LORA_UP] = "up", [LORA_DOWN] = "down",
};

void lora_forward(float *y, int ld_y, float *xa, const float *x, const float *adapter_params,
                  long T, const lora_adapter *ad, bool bf16) {
    if (T == 0) return;
    const float *A = adapter_params + ad->a_offset, *B = adapter_params + ad->b_offset;
    /* xa [T, r] = x [T, in] A^T */
    gemm_model(bf16, false, true, (int)T, ad->r, ad->in_dim, 1.0f, x, ad->in_dim, A, ad->in_dim,
               0.0f, xa, ad->r);
    /* y[:, block] += s xa B^T */
    gemm_model(bf16, false, true, (int)T, ad->out_dim, ad->r, ad->scale, xa, ad->r, B, ad->r, 1.0f,
               y + ad->out_offset, ld_y);
}

void lora_backward(float *d_x, float *adapter_grads, float *xa, float *d_xa, const float *dy,
                   int ld_dy, const float *x, const float *adapter_params, long T,
                   const lora_adapter *ad, bool bf16) {
    if (T == 0) return;
    const int r = ad->r, in = ad->in_dim, out = ad->out_dim;
    const float *A = adapter_params + ad->a_offset, *B = adapter_params + ad->b_offset;
    float *dA = adapter_grads + ad->a_offset, *dB = adapter_grads + ad->b_offset;
    dy += ad->out_offset;
    /* with u = x A^T: y += s u B^T, so du = s dy B, dB += s dy^T u, dA += du^T x, dx += du A */
    gemm_model(bf16, false, true, (int)T, r, in, 1.0f, x, in, A, in, 0.0f, xa, r);
    gemm_model(bf16, false, false, (int)T, r, out, ad->scale, dy, ld_dy, B, r, 0.0f, d_xa, r);
    gemm_model(bf16, true, false, out, r, (int)T, ad->scale, dy, ld_dy, xa, r, 1.0f, dB, r);
    gemm_model(bf16, true, false, r, in, (int)T, 1.0f, d_xa, r, x, in, 1.0f, dA, in);
    gemm_model(bf16, false, false, (int)T, in, r, 1.0f, d_xa, r, A, in, 1.0f, d_x, in);
}
