/* Token embedding (plus GPT-2's learned position embedding). */
#ifndef CALIGN_EMBEDDING_H
#define CALIGN_EMBEDDING_H

#include <stdint.h>

/* out[t] = wte[tokens[t]] (+ wpe[positions[t]] when wpe is not NULL) */
void embedding_forward(float *out, const int32_t *tokens, const int32_t *positions,
                       const float *wte, const float *wpe, long T, int dim);

/* d_wte[tokens[t]] += d_out[t]; d_wpe[positions[t]] += d_out[t]. Rows that
 * share a token are summed in token order (deterministic), parallel over the
 * embedding dimension. */
void embedding_backward(float *d_wte, float *d_wpe, const float *d_out, const int32_t *tokens,
                        const int32_t *positions, long T, int dim);

#endif
