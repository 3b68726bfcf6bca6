/* MLP activations: GPT-2's gelu_new and the SwiGLU gate of Llama/Qwen. */
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

#endif
