/* MLP activations: GPT-2's gelu_new, the SwiGLU gate of Llama/Qwen and the
 * PolyNorm gate of Motif. */
#ifndef CALIGN_ACTIVATIONS_H
#define CALIGN_ACTIVATIONS_H

/* out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (transformers' NewGELUActivation) */
void gelu_tanh_forward(float *out, const float *inp, long n);
/* d_inp = d_out * gelu'(inp), where d_out_act holds d_out on entry; on exit
 * it holds gelu(inp) again (the forward's output, recomputed for the weight
 * gradient of the next layer down at the cost of a store). */
void gelu_tanh_backward(float *d_inp, float *d_out_act, const float *inp, long n);

/* gate_up rows are [gate (ff) | up (ff)]; out[t] = silu(gate) * up, silu(x) = x sigma(x) */
void swiglu_forward(float *out, const float *gate_up, long T, int ff);
/* d_gate_up[t] = [d_out * up * silu'(gate) | d_out * silu(gate)]; d_out_act:
 * d_out on entry, the forward's output silu(gate) * up on exit. */
void swiglu_backward(float *d_gate_up, float *d_out_act, const float *gate_up, long T, int ff);

/* PolyNorm (Zhuo et al. 2024) as the gate of Motif's GLU MLP: gate_up rows
 * are [gate (ff) | up (ff)];
 *   out[t] = (w0 N(g^3) + w1 N(g^2) + w2 N(g) + b) * up,  N(z) = z / sqrt(mean(z^2) + eps)
 * with the means over the row's ff gate values; wb = [w0, w1, w2, b]. */
#define POLYNORM_EPS 1e-6f
#define POLYNORM_N_PARAMS 4
void polynorm_forward(float *out, const float *gate_up, const float *wb, long T, int ff);
/* d_gate_up as swiglu_backward; d_out_act: d_out on entry, the forward's
 * output on exit. d_wb_rows [T][4]: each row's share of dL/d[w0, w1, w2, b]
 * (written, not added: the caller sums them in row order, so the sum does
 * not depend on the thread count). */
void polynorm_backward(float *d_gate_up, float *d_out_act, const float *gate_up,
                       const float *wb, long T, int ff, float *d_wb_rows);

#endif
