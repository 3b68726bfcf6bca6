#include "core/gemm.h"
#include "core/profile.h"

#include <omp.h>

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

void gemm_f32(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    profile_mark mark = profile_begin();
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
