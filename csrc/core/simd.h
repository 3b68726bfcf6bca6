/* Runtime dispatch for the element-wise loops, and a vectorisable exp.
 *
 * No -march=native in the build: functions marked CALIGN_SIMD_CLONES are
 * compiled three times (AVX-512, AVX2+FMA, baseline x86-64) and the loader
 * picks the best one for the CPU at hand. A build with CALIGN_SIMD_BASELINE
 * (setup.py's CALIGN_SIMD=baseline) has the baseline only, for testing it. */
#ifndef CALIGN_SIMD_H
#define CALIGN_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(CALIGN_SIMD_BASELINE)
#define CALIGN_SIMD_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define CALIGN_HAS_SIMD_CLONES 1
#else
#define CALIGN_SIMD_CLONES
#define CALIGN_HAS_SIMD_CLONES 0
#endif

/* exp(x) for x <= 0 in float, written without calls or branches so that a
 * loop of it vectorises. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2,
 * then a degree-6 Taylor/minimax polynomial for e^r (relative error about
 * 2e-7, i.e. ~2 ulp, over the whole range) and 2^n from the exponent bits.
 * Below -87.3 (where e^x underflows float's normal range) it returns 0. */
static inline float exp_nonpositive(float x) {
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float underflow = x < -87.3f ? 0.0f : 1.0f;
    x = x < -87.3f ? -87.3f : x;
    float n = __builtin_floorf(x * log2e + 0.5f);
    float r = x - n * ln2_hi;
    r = r - n * ln2_lo;
    float p = 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale * underflow;
}

#endif
