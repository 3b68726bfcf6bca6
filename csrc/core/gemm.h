/* Matrix products for calign: the only file that talks to BLAS.
 *
 * Row-major single-precision C = alpha * op(A) @ op(B) + beta * C, where
 * op(A) is M x K and op(B) is K x N. gemm_f32 splits the product into
 * per-thread column blocks of C inside one OpenMP region (OpenBLAS runs
 * single-threaded in each), following the policy in threads.h. */
#ifndef CALIGN_GEMM_H
#define CALIGN_GEMM_H

#include <stdbool.h>
#include <stdint.h>

void blas_pin_single_thread(void);
/* Library name, version/config string and the kernel (core type) in use. */
const char *blas_config(void);
const char *blas_core_name(void);

void gemm_f32(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc);

/* A model's product (its forward, backward and scoring products go through
 * here). bf16_operands false: gemm_f32, bit for bit. True: both operands are
 * rounded to bfloat16 (nearest even, as torch) and multiplied with float32
 * accumulation into a float32 C: the arithmetic of AVX512-BF16's dot
 * products and AMX, and that of torch's CPU autocast products up to the
 * rounding of their outputs, which this keeps in float32. */
void gemm_model(bool bf16_operands, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Whether gemm_model's bfloat16 products run on the CPU's bfloat16 units
 * (through oneDNN, onednn.h) or are emulated (operands rounded, float32
 * sgemm). The two differ only in the order of float32 sums. Asking for the
 * units on a CPU without them, or before oneDNN is loaded, leaves them off
 * and returns false. Off at start. The units flush denormal operands to
 * zero, the emulation does not. */
bool gemm_set_bf16_units(bool on);
bool gemm_bf16_units(void);
/* How many bf16 products went to the units since start: done there, and
 * refused by oneDNN (in part) and finished emulated. */
void gemm_bf16_units_counts(long *done, long *refused);

/* C[M, N] = round(A)[M, K] B^T with B [N, K] stored as bfloat16 (a frozen
 * model's weights): gemm_model's bf16 arithmetic when the weight operand is
 * already rounded and kept in half the bytes. */
void gemm_model_bf16_weights(int M, int N, int K, const float *A, int lda, const uint16_t *B,
                             int ldb, float *C, int ldc);

#endif
