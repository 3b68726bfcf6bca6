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

/* 1 / sqrt(mean(g^(2k)) + eps) of one row's gate for k = 1, 2, 3 */
static void polynorm_rstd(const float *gate, int ff, float rstd[3]) {
    double s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s1, s2, s3)
    for (int i = 0; i < ff; i++) {
        double x2 = (double)gate[i] * gate[i];
        s1 += x2;
        s2 += x2 * x2;
        s3 += x2 * x2 * x2;
    }
    rstd[0] = 1.0f / sqrtf((float)(s1 / ff) + POLYNORM_EPS);
    rstd[1] = 1.0f / sqrtf((float)(s2 / ff) + POLYNORM_EPS);
    rstd[2] = 1.0f / sqrtf((float)(s3 / ff) + POLYNORM_EPS);
}

/* PolyNorm(g) from g and the row's rstd (r[k-1] for g^k) */
static inline float polynorm_value(float x, const float *wb, const float *r) {
    float x2 = x * x;
    return wb[0] * (x2 * x * r[2]) + wb[1] * (x2 * r[1]) + wb[2] * (x * r[0]) + wb[3];
}

CALIGN_SIMD_CLONES
static void polynorm_row(float *out, const float *gate, const float *up, const float *wb,
                         int ff) {
    float r[3];
    polynorm_rstd(gate, ff, r);
    for (int i = 0; i < ff; i++) out[i] = polynorm_value(gate[i], wb, r) * up[i];
}

void polynorm_forward(float *out, const float *gate_up, const float *wb, long T, int ff) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        const float *gate = gate_up + t * 2 * ff;
        polynorm_row(out + t * ff, gate, gate + ff, wb, ff);
    }
}

/* One row. With G = dL/dPolyNorm = dy * up and z_k = g^k, N_k = z_k r_k:
 *   dL/dw = sum G N_3, sum G N_2, sum G N_1;  dL/db = sum G
 *   dL/dz_k = w r_k (G - z_k r_k^2 mean(G z_k))   (RMSNorm's backward, no weight)
 *   dL/dg = 3 g^2 dL/dz_3 + 2 g dL/dz_2 + dL/dz_1 */
CALIGN_SIMD_CLONES
static void polynorm_backward_row(float *restrict d_gate, float *restrict d_up, float *dy,
                                  const float *restrict gate, const float *restrict up,
                                  const float *wb, int ff, float *d_wb) {
    float r[3];
    polynorm_rstd(gate, ff, r);
    double m1 = 0.0, m2 = 0.0, m3 = 0.0, m0 = 0.0; /* sum G g^k */
#pragma omp simd reduction(+ : m0, m1, m2, m3)
    for (int i = 0; i < ff; i++) {
        float x = gate[i], G = dy[i] * up[i];
        m0 += G;
        m1 += G * x;
        m2 += G * x * x;
        m3 += G * x * x * x;
    }
    d_wb[0] = (float)(m3 * r[2]);
    d_wb[1] = (float)(m2 * r[1]);
    d_wb[2] = (float)(m1 * r[0]);
    d_wb[3] = (float)m0;
    /* c_k = r_k^2 mean(G z_k) */
    const float c1 = (float)(m1 / ff) * r[0] * r[0], c2 = (float)(m2 / ff) * r[1] * r[1],
                c3 = (float)(m3 / ff) * r[2] * r[2];
    const float a1 = wb[2] * r[0], a2 = wb[1] * r[1], a3 = wb[0] * r[2];
    for (int i = 0; i < ff; i++) {
        float x = gate[i], x2 = x * x, G = dy[i] * up[i];
        float dz1 = a1 * (G - x * c1), dz2 = a2 * (G - x2 * c2), dz3 = a3 * (G - x2 * x * c3);
        float p = polynorm_value(x, wb, r);
        d_gate[i] = 3.0f * x2 * dz3 + 2.0f * x * dz2 + dz1;
        d_up[i] = dy[i] * p;
        dy[i] = p * up[i];
    }
}

void polynorm_backward(float *d_gate_up, float *d_out_act, const float *gate_up,
                       const float *wb, long T, int ff, float *d_wb_rows) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        const float *gate = gate_up + t * 2 * ff;
        float *d_gate = d_gate_up + t * 2 * ff;
        polynorm_backward_row(d_gate, d_gate + ff, d_out_act + t * ff, gate, gate + ff, wb, ff,
                              d_wb_rows + t * POLYNORM_N_PARAMS);
    }
}
