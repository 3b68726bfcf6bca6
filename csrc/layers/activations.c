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

/* d_out_act holds d_out on entry and gelu(inp) on exit (read, then written,
 * at the same index): the backward recomputes the activation it needs for the
 * next weight gradient with the tanh it evaluates anyway. */
CALIGN_SIMD_CLONES
static void gelu_backward_block(float *restrict d_inp, float *d_out_act,
                                const float *restrict inp, long n) {
    for (long i = 0; i < n; i++) {
        float x = inp[i], dy = d_out_act[i];
        float th = tanh_vec(GELU_SCALE * (x + 0.044715f * x * x * x));
        float du = GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
        d_inp[i] = dy * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du);
        d_out_act[i] = 0.5f * x * (1.0f + th);
    }
}

void gelu_tanh_forward(float *out, const float *inp, long n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i += GELU_BLOCK)
        gelu_block(out + i, inp + i, n - i < GELU_BLOCK ? n - i : GELU_BLOCK);
}

void gelu_tanh_backward(float *d_inp, float *d_out_act, const float *inp, long n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i += GELU_BLOCK)
        gelu_backward_block(d_inp + i, d_out_act + i, inp + i,
                            n - i < GELU_BLOCK ? n - i : GELU_BLOCK);
}

/* sigma(x) = 1 / (1 + e^-x), from e = e^-|x| <= 1 so that nothing overflows
 * and the loop vectorises: sigma(x) = 1 / (1 + e) for x >= 0, e / (1 + e) else. */
static inline float sigmoid_vec(float x) {
    float e = exp_nonpositive(-fabsf(x));
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

CALIGN_SIMD_CLONES
static void swiglu_row(float *out, const float *gate, const float *up, int ff) {
    for (int i = 0; i < ff; i++) out[i] = gate[i] * sigmoid_vec(gate[i]) * up[i];
}

void swiglu_forward(float *out, const float *gate_up, long T, int ff) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        const float *gate = gate_up + t * 2 * ff;
        swiglu_row(out + t * ff, gate, gate + ff, ff);
    }
}

/* dy: d_out on entry, silu(gate) * up on exit (as in gelu_backward_block). */
CALIGN_SIMD_CLONES
static void swiglu_backward_row(float *restrict d_gate, float *restrict d_up, float *dy,
                                const float *restrict gate, const float *restrict up, int ff) {
    for (int i = 0; i < ff; i++) {
        float s = sigmoid_vec(gate[i]), silu = gate[i] * s, g = dy[i];
        /* silu'(g) = s (1 + g (1 - s)) */
        d_gate[i] = g * up[i] * s * (1.0f + gate[i] * (1.0f - s));
        d_up[i] = g * silu;
        dy[i] = silu * up[i];
    }
}

void swiglu_backward(float *d_gate_up, float *d_out_act, const float *gate_up, long T, int ff) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        const float *gate = gate_up + t * 2 * ff;
        float *d_gate = d_gate_up + t * 2 * ff;
        swiglu_backward_row(d_gate, d_gate + ff, d_out_act + t * ff, gate, gate + ff, ff);
    }
}
