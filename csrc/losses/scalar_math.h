/* Numerically stable scalar functions shared by the losses (double). */
#ifndef CALIGN_SCALAR_MATH_H
#define CALIGN_SCALAR_MATH_H

#include <math.h>

/* log sigma(x) = -softplus(-x), without overflow for any x. */
static inline double log_sigmoid(double x) {
    return x < 0 ? x - log1p(exp(x)) : -log1p(exp(-x));
}

static inline double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

/* d sigma / dx = sigma(x) sigma(-x) */
static inline double sigmoid_slope(double x) { return sigmoid(x) * sigmoid(-x); }

/* log(1 - e^x) for x < 0, switching formula at -ln 2 to avoid cancellation
 * (Maechler 2012, "Accurately computing log(1 - exp(-|a|))"). */
static inline double log1mexp(double x) {
    return x < -M_LN2 ? log1p(-exp(x)) : log(-expm1(x));
}

/* d/dx log(1 - e^x) = -e^x / (1 - e^x) = -1 / expm1(-x) */
static inline double log1mexp_slope(double x) { return -1.0 / expm1(-x); }

#endif
