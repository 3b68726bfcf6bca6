/* The products of a model's forward and backward, in float32 or with
 * bfloat16 operands (gemm.h, gemm_model): on the CPU's bfloat16 units
 * through oneDNN (onednn.h) where it is loaded, else emulated by rounding
 * the operands and multiplying them with the float32 sgemm. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/bf16.h"
#include "core/gemm.h"
#include "core/onednn.h"
#include "core/profile.h"
#include "core/simd.h"
#include "core/threads.h"

/* A call rounds its operands a block of the inner dimension at a time into
 * at most this much scratch (64 MiB), so the copy of a wide operand (the
 * lm_head's [V, d]) never costs its whole size again. A block's product
 * with a short inner dimension runs slower in BLAS: with 16 MiB the lm_head
 * products of a GPT-2 124M DPO step took 0.6 s more. */
#define ROUNDED_SCRATCH_FLOATS (16L << 20)

/* float32 storage read as its bits */
typedef uint32_t __attribute__((may_alias)) float_bits;

/* One row of each copy below; compiled for AVX-512, AVX2 and baseline. */
CALIGN_SIMD_CLONES
static void row_rounded(float_bits *out, const float_bits *in, int n) {
    for (int c = 0; c < n; c++) out[c] = bf16_rounded_bits(in[c]);
}

CALIGN_SIMD_CLONES
static void row_to_bf16(uint16_t *out, const float_bits *in, int n) {
    for (int c = 0; c < n; c++) out[c] = (uint16_t)(bf16_rounded_bits(in[c]) >> 16);
}

/* dst[r * cols + c] = src[r * ld + c] rounded to bfloat16 (held in a float). */
static void copy_rounded(float *dst, const float *src, int ld, int rows, int cols) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) if (rows > 64)
    for (int r = 0; r < rows; r++)
        row_rounded((float_bits *)(dst + (long)r * cols), (const float_bits *)(src + (long)r * ld),
                    cols);
}

/* dst[r * cols + c] = src[r * ld + c] as bfloat16. */
static void copy_to_bf16(uint16_t *dst, const float *src, int ld, int rows, int cols) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) if (rows > 64)
    for (int r = 0; r < rows; r++)
        row_to_bf16(dst + (long)r * cols, (const float_bits *)(src + (long)r * ld), cols);
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

static _Atomic bool use_bf16_units; /* set under the GIL, read by any thread */

/* products sent to the units: [0] done there, [1] refused (in part) and
 * finished emulated */
static _Atomic long products_counted[2];

bool gemm_set_bf16_units(bool on) {
    use_bf16_units = on && cpu_has_bf16_units() && onednn_version();
    return use_bf16_units == on;
}

bool gemm_bf16_units(void) { return use_bf16_units; }

void gemm_bf16_units_counts(long *done, long *refused) {
    *done = products_counted[0];
    *refused = products_counted[1];
}

/* The inner-dimension block [k0, k0 + n) of op(A) and op(B), rounded into
 * a (bfloat16 when to_bf16, else float32 holding bfloat16 values) and b in
 * their own orientation: a [M, n] ([n, M] when trans_a), b [n, N] ([N, n]
 * when trans_b). */
static void copy_k_block(bool to_bf16, bool trans_a, bool trans_b, int M, int N, int k0, int n,
                         const float *A, int lda, const float *B, int ldb, void *a, void *b) {
    const float *a_src = trans_a ? A + (long)k0 * lda : A + k0; /* A stored [K, M] or [M, K] */
    const float *b_src = trans_b ? B + k0 : B + (long)k0 * ldb; /* B stored [N, K] or [K, N] */
    const int a_rows = trans_a ? n : M, a_cols = trans_a ? M : n;
    const int b_rows = trans_b ? N : n, b_cols = trans_b ? n : N;
    if (to_bf16) {
        copy_to_bf16(a, a_src, lda, a_rows, a_cols);
        copy_to_bf16(b, b_src, ldb, b_rows, b_cols);
    } else {
        copy_rounded(a, a_src, lda, a_rows, a_cols);
        copy_rounded(b, b_src, ldb, b_rows, b_cols);
    }
}

/* Inner-dimension block for operands of per_k elements per step of K, each
 * `bytes` wide, within the scratch cap; 0 when no scratch can be had. */
static long k_block(long per_k, int K, int bytes, void **scratch) {
    long kb = ROUNDED_SCRATCH_FLOATS * (long)sizeof(float) / bytes / per_k;
    kb = kb < 1 ? 1 : kb > K ? K : kb;
    while (!(*scratch = thread_scratch((per_k * kb * bytes + 3) / 4)) && kb > 1) kb /= 2;
    return *scratch ? kb : 0;
}

/* The product on the bfloat16 units, a block of the inner dimension at a
 * time. Returns how far along K it got: K when done; less when oneDNN
 * refused a block or no scratch could be had, the rest of C left to add. */
static int units_product(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta, float *C,
                         int ldc) {
    void *scratch;
    const long per_k = (long)M + N, kb = k_block(per_k, K, sizeof(uint16_t), &scratch);
    int k0 = 0;
    while (kb && k0 < K) {
        int n = K - k0 < kb ? K - k0 : (int)kb;
        uint16_t *a = scratch, *b = a + (long)M * n;
        copy_k_block(true, trans_a, trans_b, M, N, k0, n, A, lda, B, ldb, a, b);
        if (!onednn_gemm_bf16(trans_a, trans_b, M, N, n, alpha, a, trans_a ? M : n, b,
                              trans_b ? n : N, k0 == 0 ? beta : 1.0f, C, ldc))
            break;
        k0 += n;
    }
    products_counted[k0 == K ? 0 : 1]++;
    return k0;
}

/* The product emulated: operands rounded into float32 copies, multiplied by
 * the float32 sgemm. */
static void emulated_product(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta, float *C,
                             int ldc) {
    void *scratch;
    const long per_k = (long)M + N, kb = k_block(per_k, K, sizeof(float), &scratch);
    if (!kb) {
        rounded_naive(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* C = alpha sum over blocks [k0, k0 + n) of round(op(A)[:, block]) round(op(B)[block, :])
     * (+ beta C once) */
    for (int k0 = 0; k0 < K; k0 += (int)kb) {
        int n = K - k0 < kb ? K - k0 : (int)kb;
        float *a = scratch, *b = a + (long)M * n;
        copy_k_block(false, trans_a, trans_b, M, N, k0, n, A, lda, B, ldb, a, b);
        gemm_f32(trans_a, trans_b, M, N, n, alpha, a, trans_a ? M : n, b, trans_b ? n : N,
                 k0 == 0 ? beta : 1.0f, C, ldc);
    }
}

void gemm_model(bool bf16_operands, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (!bf16_operands || K <= 0 || M <= 0 || N <= 0) {
        gemm_f32(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    profile_mark mark = profile_begin();
    /* Inside a parallel region (attention's per-head blocks) a product runs
     * on one thread and is small; there oneDNN's cost per call outweighs its
     * speed: attention of a SmolLM-135M-shaped step took 0.30-0.34 s on the
     * units against 0.20-0.22 s emulated (128-token rows, measured) */
    const bool units = use_bf16_units && !omp_in_parallel();
    const int k0 =
        units ? units_product(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) : 0;
    profile_end(PHASE_MATMUL, mark); /* the emulated path's sgemm calls count themselves */
    if (k0 == K) return;
    /* what the units did not add: the product over inner indices [k0, K) */
    emulated_product(trans_a, trans_b, M, N, K - k0, alpha, trans_a ? A + (long)k0 * lda : A + k0,
                     lda, trans_b ? B + k0 : B + (long)k0 * ldb, ldb, k0 == 0 ? beta : 1.0f, C,
                     ldc);
}

void gemm_model_bf16_weights(int M, int N, int K, const float *A, int lda, const uint16_t *B,
                             int ldb, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (use_bf16_units && K > 0 && !omp_in_parallel()) {
        /* A rounded a block of rows at a time (within the cap) */
        profile_mark mark = profile_begin();
        long mb = ROUNDED_SCRATCH_FLOATS * 2L / K;
        mb = mb < 1 ? 1 : mb > M ? M : mb;
        uint16_t *a;
        while (!(a = (uint16_t *)thread_scratch((mb * K + 1) / 2)) && mb > 1) mb /= 2;
        int i0 = 0;
        while (a && i0 < M) {
            int rows = M - i0 < mb ? M - i0 : (int)mb;
            copy_to_bf16(a, A + (long)i0 * lda, lda, rows, K);
            if (!onednn_gemm_bf16(false, true, rows, N, K, 1.0f, a, K, B, ldb, 0.0f,
                                  C + (long)i0 * ldc, ldc))
                break;
            i0 += rows;
        }
        products_counted[i0 == M ? 0 : 1]++;
        profile_end(PHASE_MATMUL, mark);
        if (i0 == M) return;
        /* the rows the units did not compute, emulated below */
        A += (long)i0 * lda;
        C += (long)i0 * ldc;
        M -= i0;
    }
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
