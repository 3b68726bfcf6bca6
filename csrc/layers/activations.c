#include "layers/activations.h"

#include <math.h>

#include "core/simd.h"
#include "core/threads.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_BLOCK 4096L

/* tanh(u) = sign(u) (1 - e^{-2|u|}) / (1 + e^{-2|u|}), vectorisable */
static inline float tanh_vec(float u) {
    float e = exp_nonpositive(-2.0f * fabsf(u));
    return copysignf((1.0f - e) / (1.0f + e), u);
}

CALIGN_SIMD_CLONES
static void gelu_block(float *out, const float *inp, long n) {
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanh_vec(GELU_SCALE * (x + 0.044715f * x * x * x)));
    }
}

CALIGN_SIMD_CLONES
static void gelu_backward_block(float *d_inp, const float *d_out, const float *inp, long n) {
    for (long i = 0; i < n; i++) {
        float x = inp[i];
        float th = tanh_vec(GELU_SCALE * (x + 0.044715f * x * x * x));
        float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        d_inp[i] = d_out[i] * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
    }
}

void gelu_tanh_forward(float *out, const float *inp, long n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i += GELU_BLOCK)
        gelu_block(out + i, inp + i, n - i < GELU_BLOCK ? n - i : GELU_BLOCK);
}

void gelu_tanh_backward(float *d_inp, const float *d_out, const float *inp, long n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i += GELU_BLOCK)
        gelu_backward_block(d_inp + i, d_out + i, inp + i,
                            n - i < GELU_BLOCK ? n - i : GELU_BLOCK);
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void swiglu_forward(float *out, const float *gate_up, long T, int ff) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        const float *gate = gate_up + t * 2 * ff, *up = gate + ff;
        float *y = out + t * ff;
        for (int i = 0; i < ff; i++) y[i] = gate[i] * sigmoidf(gate[i]) * up[i];
    }
}

void swiglu_backward(float *d_gate_up, const float *d_out, const float *gate_up, long T, int ff) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        const float *gate = gate_up + t * 2 * ff, *up = gate + ff, *dy = d_out + t * ff;
        float *d_gate = d_gate_up + t * 2 * ff, *d_up = d_gate + ff;
        for (int i = 0; i < ff; i++) {
            float s = sigmoidf(gate[i]), silu = gate[i] * s;
            /* silu'(g) = s (1 + g (1 - s)) */
            d_gate[i] = dy[i] * up[i] * s * (1.0f + gate[i] * (1.0f - s));
            d_up[i] = dy[i] * silu;
        }
    }
}
