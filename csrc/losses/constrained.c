#include <math.h>
#include <stddef.h>

#include "losses/losses.h"
#include "losses/scalar_math.h"

/* softplus(z) = log(1 + e^z) = -log sigma(-z), without overflow. */
static double softplus(double z) { return -log_sigmoid(-z); }

double token_constrained_row(float *grad, const float *logps, const float *ref_logps,
                             const float *betas, const float *mask, int T, double scale) {
    double loss = 0.0;
    for (int t = 0; t < T; t++) {
        const double m = mask ? mask[t] : 1.0;
        const double beta = betas[t], z = beta * ((double)ref_logps[t] - logps[t]);
        if (m != 0.0) loss += m * 2.0 / beta * softplus(z);
        if (grad) grad[t] = (float)(scale * -2.0 * sigmoid(z) * m);
    }
    return loss;
}
