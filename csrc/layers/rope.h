/* Rotary position embedding as transformers' apply_rotary_pos_emb with
 * rotate_half: for k < half, the pair (x_k, x_{k+half}) is rotated by angle
 * position * theta^(-2k / rotary_dim). Applied in place to n_heads heads of
 * head_dim floats per token, rows of stride ld. */
#ifndef CALIGN_ROPE_H
#define CALIGN_ROPE_H

#include <stdint.h>

/* inv_freq[k] = theta^(-2k/head_dim), k < head_dim/2 */
void rope_inv_freq(float *inv_freq, int head_dim, double theta);

/* sign = +1 forward; -1 applies the inverse rotation (the backward). */
void rope_apply(float *x, int ld, const int32_t *positions, long T, int n_heads, int head_dim,
                const float *inv_freq, int sign);

#endif
