#include "core/gemm.h"
#include "core/profile.h"

#include <omp.h>

#include "core/simd.h"
#include "core/threads.h"

#if defined(CALIGN_BLAS_SCIPY_OPENBLAS)
#include <cblas.h> /* scipy-openblas32's header: every symbol prefixed scipy_ */
#define SGEMM scipy_cblas_sgemm
#define BLAS_SET_THREADS scipy_openblas_set_num_threads
#define BLAS_CONFIG scipy_openblas_get_config
#define BLAS_CORENAME scipy_openblas_get_corename
#elif defined(CALIGN_BLAS_SYSTEM)
#include <cblas.h>
#define SGEMM cblas_sgemm
#define BLAS_SET_THREADS openblas_set_num_threads
#define BLAS_CONFIG openblas_get_config
#define BLAS_CORENAME openblas_get_corename
#else
#error "define CALIGN_BLAS_SCIPY_OPENBLAS or CALIGN_BLAS_SYSTEM (see setup.py)"
#endif

void blas_pin_single_thread(void) { BLAS_SET_THREADS(1); }
const char *blas_config(void) { return BLAS_CONFIG(); }
const char *blas_core_name(void) { return BLAS_CORENAME(); }

/* Below this many multiply-adds a product runs on one thread: splitting it
 * costs more than it saves. */
#define GEMM_PARALLEL_MIN_WORK (1L << 18)

/* ---- few rows: the products of decoding --------------------------------
 *
 * With a few rows of A (the tokens of one decoding step), a product reads B
 * once and is bound by memory; OpenBLAS would first copy (pack) all of B,
 * which here costs as much again. These loops read B in place, once, and
 * keep A and a block of C in cache. Where they pay was measured against
 * OpenBLAS 0.3.34 on one core (sgemm_gflops, K = 384..1536): */
#define SMALL_M_DOTS_MAX 8  /* B^T: 2.5x at 1 row, 1.2x at 8, slower at 16 */
#define SMALL_M_AXPYS_MAX 2 /* B: 3x at 1 row, 2x at 2, slower at 4 */
#define SMALL_N_BLOCK 256

static void store(float *c, float acc, float alpha, float beta) {
    *c = beta == 0.0f ? alpha * acc : alpha * acc + beta * *c;
}

/* C[i][j] = alpha sum_k A[i][k] B[j][k] + beta C[i][j] for columns [j0, j1):
 * each B row is a contiguous K-vector, dotted with every row of A. */
CALIGN_SIMD_CLONES
static void small_m_dots(int M, int j0, int j1, int K, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc) {
    for (int j = j0; j < j1; j++) {
        const float *b = B + (long)j * ldb;
        int i = 0;
        for (; i + 4 <= M; i += 4) { /* four rows of A per pass over b */
            const float *a0 = A + (long)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
            float c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f;
#pragma omp simd reduction(+ : c0, c1, c2, c3)
            for (int k = 0; k < K; k++) {
                c0 += a0[k] * b[k];
                c1 += a1[k] * b[k];
                c2 += a2[k] * b[k];
                c3 += a3[k] * b[k];
            }
            store(C + (long)i * ldc + j, c0, alpha, beta);
            store(C + (long)(i + 1) * ldc + j, c1, alpha, beta);
            store(C + (long)(i + 2) * ldc + j, c2, alpha, beta);
            store(C + (long)(i + 3) * ldc + j, c3, alpha, beta);
        }
        for (; i < M; i++) {
            const float *a = A + (long)i * lda;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int k = 0; k < K; k++) acc += a[k] * b[k];
            store(C + (long)i * ldc + j, acc, alpha, beta);
        }
    }
}

/* C[i][j] = alpha sum_k A[i][k] B[k][j] + beta C[i][j] for columns [j0, j1):
 * rows of B are added into a block of accumulators per row of A. */
CALIGN_SIMD_CLONES
static void small_m_axpys(int M, int j0, int j1, int K, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, int ldc) {
    float acc[SMALL_M_AXPYS_MAX][SMALL_N_BLOCK];
    for (int jb = j0; jb < j1; jb += SMALL_N_BLOCK) {
        int n = j1 - jb < SMALL_N_BLOCK ? j1 - jb : SMALL_N_BLOCK;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < n; j++) acc[i][j] = 0.0f;
        for (int k = 0; k < K; k++) {
            const float *b = B + (long)k * ldb + jb;
            for (int i = 0; i < M; i++) {
                float a = A[(long)i * lda + k];
                for (int j = 0; j < n; j++) acc[i][j] += a * b[j];
            }
        }
        for (int i = 0; i < M; i++)
            for (int j = 0; j < n; j++) store(C + (long)i * ldc + jb + j, acc[i][j], alpha, beta);
    }
}

static void small_m_gemm(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc) {
    int n_threads = omp_in_parallel() || (long)M * N * K < GEMM_PARALLEL_MIN_WORK
                        ? 1 : calign_num_threads();
    int block = (N + n_threads - 1) / n_threads;
    block = (block + 15) / 16 * 16;
#pragma omp parallel for num_threads(n_threads) schedule(static, 1) if (n_threads > 1)
    for (int j0 = 0; j0 < N; j0 += block) {
        int j1 = j0 + block < N ? j0 + block : N;
        if (trans_b)
            small_m_dots(M, j0, j1, K, alpha, A, lda, B, ldb, beta, C, ldc);
        else
            small_m_axpys(M, j0, j1, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
}

void gemm_f32(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    profile_mark mark = profile_begin();
    if (!trans_a && K > 0 && M <= (trans_b ? SMALL_M_DOTS_MAX : SMALL_M_AXPYS_MAX)) {
        small_m_gemm(trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        profile_end(PHASE_MATMUL, mark);
        return;
    }
    enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
    int n_threads = calign_num_threads();
    long work = (long)M * N * (K > 0 ? K : 1);
    if (n_threads <= 1 || work < GEMM_PARALLEL_MIN_WORK || omp_in_parallel()) {
        SGEMM(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        profile_end(PHASE_MATMUL, mark);
        return;
    }
    /* Split the larger side of C into one contiguous block per thread,
     * rounded to 16 (a multiple of every OpenBLAS micro-kernel width). */
    bool split_rows = M >= N;
    int extent = split_rows ? M : N;
    int block = (extent + n_threads - 1) / n_threads;
    block = (block + 15) / 16 * 16;
    int n_blocks = (extent + block - 1) / block;
#pragma omp parallel for num_threads(n_blocks < n_threads ? n_blocks : n_threads) schedule(static, 1)
    for (int b = 0; b < n_blocks; b++) {
        int start = b * block;
        int len = extent - start < block ? extent - start : block;
        if (split_rows) {
            /* rows start..start+len of op(A) and of C */
            const float *A_blk = trans_a ? A + start : A + (long)start * lda;
            SGEMM(CblasRowMajor, ta, tb, len, N, K, alpha, A_blk, lda, B, ldb, beta,
                  C + (long)start * ldc, ldc);
        } else {
            /* columns start..start+len of op(B) and of C */
            const float *B_blk = trans_b ? B + (long)start * ldb : B + start;
            SGEMM(CblasRowMajor, ta, tb, M, len, K, alpha, A, lda, B_blk, ldb, beta,
                  C + start, ldc);
        }
    }
    profile_end(PHASE_MATMUL, mark);
}
