#include "wordalign/combine.h"

#include <stddef.h>

void wa_soft_union(uint8_t *keep, const double *post_f, const double *post_r,
                   const wa_corpus *c, double threshold) {
    for (long k = 0; k < c->n_pairs; k++) {
        const int I = (int)(c->src_off[k + 1] - c->src_off[k]);
        const int J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
        for (int i = 1; i <= I; i++, keep += J) {
            const double *reverse = post_r + (size_t)(i - 1) * (J + 1) + 1;
            for (int j = 0; j < J; j++)
                keep[j] = post_f[(size_t)j * (I + 1) + i] + reverse[j] > 2.0 * threshold;
        }
        post_f += (size_t)J * (I + 1);
        post_r += (size_t)I * (J + 1);
    }
}
