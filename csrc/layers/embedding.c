#include "layers/embedding.h"

#include <string.h>

#include "core/threads.h"

void embedding_forward(float *out, const int32_t *tokens, const int32_t *positions,
                       const float *wte, const float *wpe, long T, int dim) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        float *y = out + t * dim;
        memcpy(y, wte + (long)tokens[t] * dim, sizeof(float) * dim);
        if (wpe) {
            const float *p = wpe + (long)positions[t] * dim;
            for (int i = 0; i < dim; i++) y[i] += p[i];
        }
    }
}

void embedding_backward(float *d_wte, float *d_wpe, const float *d_out, const int32_t *tokens,
                        const int32_t *positions, long T, int dim) {
    /* Split the columns between threads: no two threads touch the same float. */
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (int i0 = 0; i0 < dim; i0 += 16) {
        int i1 = i0 + 16 < dim ? i0 + 16 : dim;
        for (long t = 0; t < T; t++) {
            const float *g = d_out + t * dim;
            float *w = d_wte + (long)tokens[t] * dim;
            for (int i = i0; i < i1; i++) w[i] += g[i];
            if (d_wpe) {
                float *p = d_wpe + (long)positions[t] * dim;
                for (int i = i0; i < i1; i++) p[i] += g[i];
            }
        }
    }
}
