/* The products of a model's forward and backward, in float32 or with
 * bfloat16 operands (gemm.h, gemm_model). */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/bf16.h"
#include "core/gemm.h"
#include "core/threads.h"

/* A call rounds its operands a block of the inner dimension at a time into
 * at most this much scratch (64 MiB), so the copy of a wide operand (the
 * lm_head's [V, d]) never costs its whole size again. A block's product
 * with a short inner dimension runs slower in BLAS: with 16 MiB the lm_head
 * products of a GPT-2 124M DPO step took 0.6 s more. */
#define ROUNDED_SCRATCH_FLOATS (16L << 20)

/* float32 storage read as its bits */
typedef uint32_t __attribute__((may_alias)) float_bits;

/* dst[r * cols + c] = src[r * ld + c] rounded to bfloat16 (held in a float). */
static void copy_rounded(float *dst, const float *src, int ld, int rows, int cols) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) if (rows > 64)
    for (int r = 0; r < rows; r++) {
        const float_bits *in = (const float_bits *)(src + (long)r * ld);
        float_bits *out = (float_bits *)(dst + (long)r * cols);
        for (int c = 0; c < cols; c++) out[c] = bf16_rounded_bits(in[c]);
    }
}

static float rounded(float x) {
    float_bits *bits = (float_bits *)&x;
    *bits = bf16_rounded_bits(*bits);
    return x;
}

/* The product with no scratch at all, for when none can be had: slow, exact. */
static void rounded_naive(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                          const float *A, int lda, const float *B, int ldb, float beta, float *C,
                          int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++) {
                float a = trans_a ? A[(long)k * lda + i] : A[(long)i * lda + k];
                float b = trans_b ? B[(long)j * ldb + k] : B[(long)k * ldb + j];
                acc += rounded(a) * rounded(b);
            }
            float *c = C + (long)i * ldc + j;
            *c = beta == 0.0f ? alpha * acc : alpha * acc + beta * *c;
        }
}

/* Each thread keeps its scratch for its life (about ROUNDED_SCRATCH_FLOATS
 * floats at most, 64 MiB; a fresh allocation of that size would be
 * page-faulted in again on every product). Returns NULL when even `floats`
 * cannot be had. */
static float *thread_scratch(long floats) {
    static _Thread_local float *scratch;
    static _Thread_local long capacity;
    if (floats <= capacity) return scratch;
    float *grown = realloc(scratch, sizeof(float) * floats);
    if (!grown) return NULL;
    scratch = grown;
    capacity = floats;
    return scratch;
}

void gemm_model(bool bf16_operands, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (!bf16_operands || K <= 0 || M <= 0 || N <= 0) {
        gemm_f32(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    long per_k = (long)M + N; /* scratch floats per step of the inner dimension */
    long kb = ROUNDED_SCRATCH_FLOATS / per_k;
    kb = kb < 1 ? 1 : kb > K ? K : kb;
    float *scratch;
    while (!(scratch = thread_scratch(per_k * kb)) && kb > 1) kb /= 2;
    if (!scratch) {
        rounded_naive(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* C = alpha sum over blocks [k0, k0 + n) of round(op(A)[:, block]) round(op(B)[block, :])
     * (+ beta C once); each block's copies keep their operand's orientation */
    for (int k0 = 0; k0 < K; k0 += (int)kb) {
        int n = K - k0 < kb ? K - k0 : (int)kb;
        float *a = scratch, *b = scratch + (long)M * n;
        if (trans_a) /* A stored [K, M] */
            copy_rounded(a, A + (long)k0 * lda, lda, n, M);
        else
            copy_rounded(a, A + k0, lda, M, n);
        if (trans_b) /* B stored [N, K] */
            copy_rounded(b, B + k0, ldb, N, n);
        else
            copy_rounded(b, B + (long)k0 * ldb, ldb, n, N);
        gemm_f32(trans_a, trans_b, M, N, n, alpha, a, trans_a ? M : n, b, trans_b ? n : N,
                 k0 == 0 ? beta : 1.0f, C, ldc);
    }
}

void gemm_model_bf16_weights(int M, int N, int K, const float *A, int lda, const uint16_t *B,
                             int ldb, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    const int threads = omp_in_parallel() ? 1 : calign_num_threads();
    const long panels = bf16_scratch_floats(K, threads);
    /* rows of A a pass rounds (all of them unless that overruns the cap) */
    long mb = (ROUNDED_SCRATCH_FLOATS - panels) / (K > 0 ? K : 1);
    mb = mb < 1 ? 1 : mb > M ? M : mb;
    float *scratch;
    while (!(scratch = thread_scratch(panels + mb * K)) && mb > 1) mb /= 2;
    if (!scratch) { /* no scratch at all: slow, exact */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float acc = 0.0f;
                for (int k = 0; k < K; k++)
                    acc += rounded(A[(long)i * lda + k]) * bf16_value(B[(long)j * ldb + k]);
                C[(long)i * ldc + j] = acc;
            }
        return;
    }
    float *a = scratch + panels;
    for (int i0 = 0; i0 < M; i0 += (int)mb) {
        int rows = M - i0 < mb ? M - i0 : (int)mb;
        copy_rounded(a, A + (long)i0 * lda, lda, rows, K);
        gemm_f32_bf16(rows, N, K, a, K, B, ldb, C + (long)i0 * ldc, ldc, scratch, threads);
    }
}
