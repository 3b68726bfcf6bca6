#include "layers/rope.h"

#include <math.h>

#include "core/threads.h"

void rope_inv_freq(float *inv_freq, int head_dim, double theta) {
    /* transformers: 1 / theta^(arange(0, dim, 2) / dim), computed in float */
    for (int k = 0; k < head_dim / 2; k++)
        inv_freq[k] = (float)(1.0 / pow(theta, (double)(2 * k) / head_dim));
}

void rope_apply(float *x, int ld, const int32_t *positions, long T, int n_heads, int head_dim,
                const float *inv_freq, int sign) {
    int half = head_dim / 2;
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) {
        float pos = (float)positions[t];
        for (int k = 0; k < half; k++) {
            /* transformers computes the angle in float: pos * inv_freq */
            float angle = pos * inv_freq[k];
            float c = cosf(angle), s = sign * sinf(angle);
            for (int h = 0; h < n_heads; h++) {
                float *v = x + t * ld + (long)h * head_dim;
                float a = v[k], b = v[k + half];
                v[k] = a * c - b * s;
                v[k + half] = b * c + a * s;
            }
        }
    }
}
