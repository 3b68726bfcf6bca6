#include "core/bf16.h"

#include <omp.h>
#include <string.h>

#include "core/gemm.h"
#include "core/profile.h"
#include "core/simd.h"
#include "core/threads.h"

/* Rows of A up to which a product reads B in place (as gemm.c's dot
 * products of decoding); more rows go through float32 panels and BLAS. */
#define BF16_DOTS_MAX_ROWS 8

void bf16_from_f32(uint16_t *dst, const float *src, long n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i++) dst[i] = round_to_bf16(src[i]);
}

void bf16_from_f32_transposed(uint16_t *dst, const float *src, int rows, int cols) {
    enum { TILE = 32 }; /* tiles keep both sides' cache lines in use */
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) collapse(2)
    for (int r0 = 0; r0 < rows; r0 += TILE)
        for (int c0 = 0; c0 < cols; c0 += TILE)
            for (int r = r0; r < r0 + TILE && r < rows; r++)
                for (int c = c0; c < c0 + TILE && c < cols; c++)
                    dst[(long)c * rows + r] = round_to_bf16(src[(long)r * cols + c]);
}

long bf16_scratch_floats(int K, int threads) { return (long)BF16_PANEL_ROWS * K * threads; }

/* C[i][j] = sum_k A[i][k] B[j][k] for columns [j0, j1), B read in place and
 * once: each row of B (in L1 after the first pass) against four rows of A at
 * a time. (Measured slower on an AVX2 EPYC: three rows of B against four of
 * A, and each sum split over the two halves of k.) */
CALIGN_SIMD_CLONES
static void bf16_dots(int M, int j0, int j1, int K, const float *A, int lda, const uint16_t *B,
                      int ldb, float *C, int ldc) {
    for (int j = j0; j < j1; j++) {
        const uint16_t *b = B + (long)j * ldb;
        /* fetch the row of B four ahead (32 bfloat16 a cache line): the
         * loop below stalled on loading b (44% of its samples in perf); with
         * this the batch-8 decoding products of GPT-2 124M took 1.26-1.38 s
         * against 1.64-1.68 on the AVX512-BF16 EPYC (4 ahead or 8: the same) */
        if (j + 4 < j1)
            for (int k = 0; k < K; k += 32) __builtin_prefetch(b + 4L * ldb + k);
        int i = 0;
        for (; i + 4 <= M; i += 4) {
            const float *a0 = A + (long)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
#pragma omp simd reduction(+ : c0, c1, c2, c3)
            for (int k = 0; k < K; k++) {
                float w = bf16_value(b[k]);
                c0 += a0[k] * w;
                c1 += a1[k] * w;
                c2 += a2[k] * w;
                c3 += a3[k] * w;
            }
            C[(long)i * ldc + j] = c0;
            C[(long)(i + 1) * ldc + j] = c1;
            C[(long)(i + 2) * ldc + j] = c2;
            C[(long)(i + 3) * ldc + j] = c3;
        }
        for (; i < M; i++) {
            const float *a = A + (long)i * lda;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int k = 0; k < K; k++) acc += a[k] * bf16_value(b[k]);
            C[(long)i * ldc + j] = acc;
        }
    }
}

/* Columns [j0, j1) through float32 panels of B in `panel` and BLAS. */
static void bf16_panels(int M, int j0, int j1, int K, const float *A, int lda,
                        const uint16_t *B, int ldb, float *C, int ldc, float *panel) {
    for (int p = j0; p < j1; p += BF16_PANEL_ROWS) {
        int rows = j1 - p < BF16_PANEL_ROWS ? j1 - p : BF16_PANEL_ROWS;
        for (int r = 0; r < rows; r++) {
            const uint16_t *b = B + (long)(p + r) * ldb;
            float *out = panel + (long)r * K;
            for (int k = 0; k < K; k++) out[k] = bf16_value(b[k]);
        }
        gemm_f32(false, true, M, rows, K, 1.0f, A, lda, panel, K, 0.0f, C + p, ldc);
    }
}

void gemm_f32_bf16(int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb,
                   float *C, int ldc, float *scratch, int scratch_threads) {
    if (M <= 0 || N <= 0) return;
    profile_mark mark = profile_begin();
    /* never more threads than the scratch has panels for (set_num_threads may
     * have raised the count since the caller sized it) */
    const int threads = omp_in_parallel() ? 1 : calign_team(scratch_threads);
    int block = (N + threads - 1) / threads;
    block = (block + 15) / 16 * 16;
    const int blocks = (N + block - 1) / block;
    /* gemm_f32 inside the region runs single-threaded (omp_in_parallel) */
#pragma omp parallel for num_threads(blocks < threads ? blocks : threads) schedule(static, 1) \
    if (threads > 1)
    for (int b = 0; b < blocks; b++) {
        int j0 = b * block, j1 = j0 + block < N ? j0 + block : N;
        if (M <= BF16_DOTS_MAX_ROWS)
            bf16_dots(M, j0, j1, K, A, lda, B, ldb, C, ldc);
        else
            bf16_panels(M, j0, j1, K, A, lda, B, ldb, C, ldc,
                        scratch + (long)omp_get_thread_num() * BF16_PANEL_ROWS * K);
    }
    profile_end(PHASE_MATMUL, mark);
}
