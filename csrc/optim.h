/* Optimizers over the contiguous parameter and gradient buffers, with torch's
 * semantics (torch.optim.AdamW, torch.optim.SGD, clip_grad_norm_). */
#ifndef CALIGN_OPTIM_H
#define CALIGN_OPTIM_H

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    long step; /* the step being taken, counting from 1 */
} adamw_settings;

/* Decoupled weight decay p *= 1 - lr wd, then Adam with bias correction
 * (Loshchilov & Hutter 2019, Algorithm 2; torch's AdamW). */
void adamw_step(float *params, const float *grads, float *exp_avg, float *exp_avg_sq, long n,
                const adamw_settings *s);

typedef struct {
    float lr, momentum, dampening, weight_decay;
    int nesterov;
    int first_step; /* the momentum buffer starts as the first gradient */
} sgd_settings;

/* momentum_buffer may be NULL when momentum == 0. */
void sgd_step(float *params, const float *grads, float *momentum_buffer, long n,
              const sgd_settings *s);

/* sqrt(sum g^2), summed in double per thread block and added in a fixed order. */
double grad_global_norm(const float *grads, long n);

void scale_in_place(float *x, long n, float factor);

/* An exponential moving average of the weights, ema <- decay ema + (1 - decay)
 * params, as torch's lerp ema += (1 - decay) (params - ema) (the EMA of
 * InstructGPT's PPO policy, decay 0.992). */
void ema_update(float *ema, const float *params, long n, float decay);

#endif
