/* Matrix products for calign: the only file that talks to BLAS.
 *
 * Row-major single-precision C = alpha * op(A) @ op(B) + beta * C, where
 * op(A) is M x K and op(B) is K x N. gemm_f32 splits the product into
 * per-thread column blocks of C inside one OpenMP region (OpenBLAS runs
 * single-threaded in each), following the policy in threads.h. */
#ifndef CALIGN_GEMM_H
#define CALIGN_GEMM_H

#include <stdbool.h>

void blas_pin_single_thread(void);
/* Library name, version/config string and the kernel (core type) in use. */
const char *blas_config(void);
const char *blas_core_name(void);

void gemm_f32(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc);

#endif
