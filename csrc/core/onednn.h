/* bfloat16 matrix products on the CPU's bfloat16 units (AVX512-BF16, AMX),
 * through oneDNN's matmul primitive.
 *
 * oneDNN comes from PyPI's onednn-cpu-gomp wheel (GNU OpenMP, the runtime
 * calign itself uses, so both share one team of threads). It is loaded at run
 * time with dlopen from the path the Python package finds, so calign builds
 * and imports without it and a CPU without bfloat16 units never loads it. */
#ifndef CALIGN_ONEDNN_H
#define CALIGN_ONEDNN_H

#include <stdbool.h>
#include <stdint.h>

/* Loads oneDNN from `path` (once; later calls return the first outcome).
 * Returns NULL on success, else why it could not be loaded. */
const char *onednn_load(const char *path);

/* "major.minor.patch" of the loaded library, or NULL when none is loaded. */
const char *onednn_version(void);

/* The CPU has bfloat16 dot-product units oneDNN uses (AVX512-BF16 or AMX). */
bool cpu_has_bf16_units(void);

/* Row-major C = alpha * op(A) @ op(B) + beta * C with A, B bfloat16 and
 * float32 accumulation into float32 C (op(A) M x K, op(B) K x N). Runs on
 * calign's threads, on one when called inside a parallel region. Returns
 * false, with C untouched, when oneDNN is not loaded or refuses the product;
 * the caller then computes it another way. */
bool onednn_gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                      const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C,
                      int ldc);

#endif
