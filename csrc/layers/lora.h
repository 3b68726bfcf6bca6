/* LoRA (Hu et al. 2021, Eq. 3): a frozen linear h = W x gets a low-rank
 * update, h = W x + s B A x with A [r, in], B [out, r] and s = alpha / r
 * (PEFT's LoraLayer; alpha / sqrt(r) with rsLoRA). One adapter covers a
 * block of output columns of one of the engine's fused projections (q_proj
 * is the first rows of qkv, gate_proj the first half of up, ...), which is
 * how PEFT's per-module adapters map onto calign's fused weights. */
#ifndef CALIGN_LORA_H
#define CALIGN_LORA_H

#include <stdbool.h>

/* The projections of a layer an adapter can sit on. */
typedef enum { LORA_QKV, LORA_O, LORA_UP, LORA_DOWN, LORA_N_SITES } lora_site;
extern const char *const LORA_SITE_NAMES[LORA_N_SITES];

typedef struct {
    int layer;
    lora_site site;
    int out_offset, out_dim; /* the output columns [out_offset, out_offset + out_dim) */
    int in_dim, r;
    long a_offset, b_offset; /* A [r, in_dim] and B [out_dim, r] in the adapter vector */
    float scale;
} lora_adapter;

/* y[:, out_offset ..] += scale * (x A^T) B^T for the T rows of x [T, in_dim]
 * (y rows of stride ld_y); xa [T, r] is scratch. bf16: the products take
 * bfloat16-rounded operands (gemm_model). */
void lora_forward(float *y, int ld_y, float *xa, const float *x, const float *adapter_params,
                  long T, const lora_adapter *ad, bool bf16);

/* Backward of lora_forward for dy (rows of stride ld_dy, the adapter's block
 * starting at column out_offset): d_x [T, in_dim] += d(x), and the adapter's
 * gradients dA, dB (inside adapter_grads) are ADDED to. xa and d_xa [T, r]
 * are scratch (x A^T is computed again, not kept from the forward). */
void lora_backward(float *d_x, float *adapter_grads, float *xa, float *d_xa, const float *dy,
                   int ld_dy, const float *x, const float *adapter_params, long T,
                   const lora_adapter *ad, bool bf16);

#endif
