/* bfloat16 weights for inference: the top 16 bits of a float32 (8 exponent
 * bits, 7 mantissa bits), rounded to nearest even as torch's
 * tensor.to(torch.bfloat16) rounds. A matrix of them is read as float32 in
 * registers (a 16-bit shift), so a product that is bound by reading its
 * weights (decoding) reads half the bytes; the arithmetic stays float32. */
#ifndef CALIGN_BF16_H
#define CALIGN_BF16_H

#include <stdint.h>
#include <string.h>

/* The bits of float32 u rounded to bfloat16 (nearest, ties to even; every
 * NaN the quiet NaN 0xFFFF), left in the top 16 bits: bit for bit torch's
 * CPU conversion. Branch-free, so loops over it vectorise. */
static inline uint32_t bf16_rounded_bits(uint32_t u) {
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? 0xFFFF0000u : r;
}

/* x rounded to bfloat16. */
static inline uint16_t round_to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)(bf16_rounded_bits(u) >> 16);
}

static inline float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* dst[i] = src[i] rounded to bfloat16 (every NaN becomes 0xFFFF, a quiet NaN;
 * inf stays inf; a finite value past bfloat16's largest rounds to inf), bit
 * for bit as torch's CPU conversion. */
void bf16_from_f32(uint16_t *dst, const float *src, long n);

/* dst [cols, rows] = the transpose of src [rows, cols], rounded to bfloat16. */
void bf16_from_f32_transposed(uint16_t *dst, const float *src, int rows, int cols);

/* Rows of B a thread converts at a time for a product with many rows of A. */
#define BF16_PANEL_ROWS 64

/* Floats of scratch gemm_f32_bf16 needs for inner dimension K: a panel per
 * thread, for `threads` threads. */
long bf16_scratch_floats(int K, int threads);

/* C[M, N] = A[M, K] B^T, B [N, K] bfloat16 with row stride ldb: few rows of
 * A (decoding) read B once with the conversion in registers; more rows
 * convert B a panel at a time into `scratch` (bf16_scratch_floats(K,
 * scratch_threads) floats) for the BLAS product. Parallel over the columns of
 * C on at most scratch_threads threads (calign_team), single-threaded when
 * called inside a parallel region. */
void gemm_f32_bf16(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb,
                   float *C, int ldc, float *scratch, int scratch_threads);

#endif
