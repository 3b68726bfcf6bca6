/* MLP activations: GPT-2's gelu_new and the SwiGLU gate of Llama/Qwen. */
#ifndef CALIGN_ACTIVATIONS_H
#define CALIGN_ACTIVATIONS_H

/* out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (transformers' NewGELUActivation) */
void gelu_tanh_forward(float *out, const float *inp, long n);
/* d_inp = d_out * gelu'(inp) */
void gelu_tanh_backward(float *d_inp, const float *d_out, const float *inp, long n);

/* gate_up rows are [gate (ff) | up (ff)]; out[t] = silu(gate) * up, silu(x) = x sigma(x) */
void swiglu_forward(float *out, const float *gate_up, long T, int ff);
/* d_gate_up[t] = [d_out * up * silu'(gate) | d_out * silu(gate)] */
void swiglu_backward(float *d_gate_up, const float *d_out, const float *gate_up, long T, int ff);

#endif
