#include "optim.h"

#include <math.h>

#include "core/profile.h"
#include "core/threads.h"

void adamw_step(float *params, const float *grads, float *exp_avg, float *exp_avg_sq, long n,
                const adamw_settings *s) {
    const float decay = 1.0f - s->lr * s->weight_decay;
    const float bias1 = 1.0f - powf(s->beta1, (float)s->step);
    const float bias2_sqrt = sqrtf(1.0f - powf(s->beta2, (float)s->step));
    const float step_size = s->lr / bias1;
    profile_mark mark = profile_begin();
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i++) {
        float g = grads[i];
        float m = exp_avg[i] = s->beta1 * exp_avg[i] + (1.0f - s->beta1) * g;
        float v = exp_avg_sq[i] = s->beta2 * exp_avg_sq[i] + (1.0f - s->beta2) * g * g;
        float denom = sqrtf(v) / bias2_sqrt + s->eps;
        params[i] = params[i] * decay - step_size * m / denom;
    }
    profile_end(PHASE_OPTIMIZER, mark);
}

void sgd_step(float *params, const float *grads, float *momentum_buffer, long n,
              const sgd_settings *s) {
    profile_mark mark = profile_begin();
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i++) {
        float g = grads[i] + s->weight_decay * params[i];
        if (s->momentum != 0.0f) {
            float b = s->first_step ? g
                                    : s->momentum * momentum_buffer[i] + (1.0f - s->dampening) * g;
            momentum_buffer[i] = b;
            g = s->nesterov ? g + s->momentum * b : b;
        }
        params[i] -= s->lr * g;
    }
    profile_end(PHASE_OPTIMIZER, mark);
}

#define NORM_BLOCK 65536L

double grad_global_norm(const float *grads, long n) {
    profile_mark mark = profile_begin();
    long n_blocks = (n + NORM_BLOCK - 1) / NORM_BLOCK;
    double total = 0.0;
    /* ordered reduction: each block's sum is computed in parallel, then the
     * blocks are added in index order, so the result is the same for any
     * thread count */
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static) ordered
    for (long b = 0; b < n_blocks; b++) {
        long end = (b + 1) * NORM_BLOCK < n ? (b + 1) * NORM_BLOCK : n;
        double sum = 0.0;
        for (long i = b * NORM_BLOCK; i < end; i++) sum += (double)grads[i] * grads[i];
#pragma omp ordered
        total += sum;
    }
    profile_end(PHASE_OPTIMIZER, mark);
    return sqrt(total);
}

void scale_in_place(float *x, long n, float factor) {
    profile_mark mark = profile_begin();
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i++) x[i] *= factor;
    profile_end(PHASE_OPTIMIZER, mark);
}

void ema_update(float *ema, const float *params, long n, float decay) {
    const float weight = 1.0f - decay;
    profile_mark mark = profile_begin();
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i++) ema[i] += weight * (params[i] - ema[i]);
    profile_end(PHASE_OPTIMIZER, mark);
}
