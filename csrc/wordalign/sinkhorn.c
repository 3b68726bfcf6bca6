#include "wordalign/sinkhorn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

const char *const ot_kind_names[OT_N_KINDS] = {"balanced", "unbalanced", "partial"};

void ot_cosine_cost(double *cost, const double *x, const double *y, int n, int m, int d,
                    double distortion) {
    for (int i = 0; i < n; i++) {
        const double *xi = x + (long)i * d;
        double nx = 0.0;
        for (int k = 0; k < d; k++) nx += xi[k] * xi[k];
        for (int j = 0; j < m; j++) {
            const double *yj = y + (long)j * d;
            double dot = 0.0, ny = 0.0;
            for (int k = 0; k < d; k++) {
                dot += xi[k] * yj[k];
                ny += yj[k] * yj[k];
            }
            double cosine = nx > 0 && ny > 0 ? dot / sqrt(nx * ny) : 0.0;
            cost[(long)i * m + j] = 1.0 - cosine +
                                    distortion * fabs((double)i / n - (double)j / m);
        }
    }
}

/* log sum_k exp(v_k) over n values with stride. */
static double logsumexp(const double *v, int n, long stride) {
    double top = -INFINITY;
    for (int k = 0; k < n; k++) top = v[k * stride] > top ? v[k * stride] : top;
    if (top == -INFINITY) return -INFINITY;
    double s = 0.0;
    for (int k = 0; k < n; k++) s += exp(v[k * stride] - top);
    return top + log(s);
}

/* The shared loop of the balanced and unbalanced solvers: alternate
 *   f_i = damp (eps log a_i - eps LSE_j((g_j - C_ij) / eps)),
 *   g_j = damp (eps log b_j - eps LSE_i((f_i - C_ij) / eps)),
 * damp = 1 (balanced) or tau / (tau + eps) (unbalanced), until the plan
 * stops moving. Returns the iterations used, -1 when out of memory. */
static int log_sinkhorn(double *plan, const double *cost, const double *a, const double *b,
                        int n, int m, double eps, double damp, int max_iterations,
                        double tolerance) {
    double *f = calloc(n, sizeof(double)), *g = calloc(m, sizeof(double));
    double *buf = malloc(sizeof(double) * (n > m ? n : m));
    if (!f || !g || !buf) {
        free(f);
        free(g);
        free(buf);
        return -1;
    }
    int it = 0;
    for (; it < max_iterations; it++) {
        double change = 0.0;
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < m; j++) buf[j] = (g[j] - cost[(long)i * m + j]) / eps;
            double fi = damp * (eps * log(a[i]) - eps * logsumexp(buf, m, 1));
            change = fmax(change, fabs(fi - f[i]));
            f[i] = fi;
        }
        for (int j = 0; j < m; j++) {
            for (int i = 0; i < n; i++) buf[i] = (f[i] - cost[(long)i * m + j]) / eps;
            double gj = damp * (eps * log(b[j]) - eps * logsumexp(buf, n, 1));
            change = fmax(change, fabs(gj - g[j]));
            g[j] = gj;
        }
        if (change < tolerance) break;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++)
            plan[(long)i * m + j] = exp((f[i] + g[j] - cost[(long)i * m + j]) / eps);
    free(f);
    free(g);
    free(buf);
    return it;
}

int ot_sinkhorn(double *plan, const double *cost, const double *a, const double *b, int n, int m,
                double eps, int max_iterations, double tolerance) {
    return log_sinkhorn(plan, cost, a, b, n, m, eps, 1.0, max_iterations, tolerance);
}

int ot_sinkhorn_unbalanced(double *plan, const double *cost, const double *a, const double *b,
                           int n, int m, double eps, double tau, int max_iterations,
                           double tolerance) {
    return log_sinkhorn(plan, cost, a, b, n, m, eps, tau / (tau + eps), max_iterations,
                        tolerance);
}

/* L <- L + log(mass) - LSE(L): rescale the plan to the given total mass. */
static void set_mass(double *L, long size, double mass) {
    double shift = log(mass) - logsumexp(L, (int)size, 1);
    for (long x = 0; x < size; x++) L[x] += shift;
}

int ot_sinkhorn_partial(double *plan, const double *cost, const double *a, const double *b,
                        int n, int m, double eps, double mass, int max_iterations,
                        double tolerance, double *work) {
    const long size = (long)n * m;
    /* log of the plan K and of Dykstra's three correction factors q1..q3 */
    double *L = work, *q1 = work + size, *q2 = work + 2 * size, *q3 = work + 3 * size;
    double *prev = work + 4 * size;
    for (long x = 0; x < size; x++) {
        L[x] = -cost[x] / eps;
        q1[x] = q2[x] = q3[x] = 0.0;
    }
    set_mass(L, size, mass);
    int it = 0;
    for (; it < max_iterations; it++) {
        double change = 0.0;
        /* projection on {P 1 <= a}: rows scaled by min(a_i / row sum, 1) */
        for (long x = 0; x < size; x++) {
            prev[x] = L[x];
            L[x] += q1[x];
        }
        for (int i = 0; i < n; i++) {
            double shift = fmin(log(a[i]) - logsumexp(L + (long)i * m, m, 1), 0.0);
            for (int j = 0; j < m; j++) L[(long)i * m + j] += shift;
        }
        for (long x = 0; x < size; x++) q1[x] += prev[x] - L[x];
        /* projection on {P^T 1 <= b} */
        for (long x = 0; x < size; x++) {
            prev[x] = L[x];
            L[x] += q2[x];
        }
        for (int j = 0; j < m; j++) {
            double shift = fmin(log(b[j]) - logsumexp(L + j, n, m), 0.0);
            for (int i = 0; i < n; i++) L[(long)i * m + j] += shift;
        }
        for (long x = 0; x < size; x++) q2[x] += prev[x] - L[x];
        /* projection on {sum P = mass} */
        for (long x = 0; x < size; x++) {
            prev[x] = L[x];
            L[x] += q3[x];
        }
        set_mass(L, size, mass);
        for (long x = 0; x < size; x++) {
            q3[x] += prev[x] - L[x];
            change = fmax(change, fabs(exp(L[x]) - plan[x] * (it > 0)));
            plan[x] = exp(L[x]);
        }
        if (it > 0 && change < tolerance) break;
    }
    return it;
}

/* A setting that must be a finite number > 0: else EINVAL naming it. */
static int check_positive(double value, const char *name, char *err) {
    if (value > 0.0 && isfinite(value)) return CALIGN_OK;
    snprintf(err, CALIGN_ERR_LEN, "%s must be a finite number > 0, got %g", name, value);
    return CALIGN_EINVAL;
}

int ot_transport(double *plan, int *iterations, const double *cost, const double *a,
                 const double *b, int n, int m, ot_kind kind, double eps, double tau,
                 double mass, int max_iterations, double tolerance, char *err) {
    *iterations = 0;
    int status = check_positive(eps, "reg", err);
    if (status == CALIGN_OK && kind == OT_UNBALANCED) status = check_positive(tau, "reg_m", err);
    if (status != CALIGN_OK) return status;
    for (int side = 0; side < 2; side++) /* the solvers take their logarithms */
        for (int i = 0; i < (side ? m : n); i++)
            if (!((side ? b : a)[i] > 0.0)) {
                snprintf(err, CALIGN_ERR_LEN, "the masses must be > 0, but %s[%d] = %g",
                         side ? "b" : "a", i, (side ? b : a)[i]);
                return CALIGN_EINVAL;
            }
    if (max_iterations < 0 || !(tolerance >= 0.0)) {
        snprintf(err, CALIGN_ERR_LEN, "max_iterations and tolerance must be >= 0, got %d and %g",
                 max_iterations, tolerance);
        return CALIGN_EINVAL;
    }
    if (n == 0 || m == 0) return CALIGN_OK; /* nothing to transport */
    if (kind == OT_PARTIAL && (status = check_positive(mass, "mass", err)) != CALIGN_OK)
        return status;
    double *work = NULL; /* partial: Dykstra's 5 n m */
    if (kind == OT_PARTIAL && !(work = malloc(sizeof(double) * 5 * (size_t)n * m))) {
        snprintf(err, CALIGN_ERR_LEN, "no memory for a partial transport of %d x %d", n, m);
        return CALIGN_ENOMEM;
    }
    int it = kind == OT_BALANCED
                 ? ot_sinkhorn(plan, cost, a, b, n, m, eps, max_iterations, tolerance)
             : kind == OT_UNBALANCED
                 ? ot_sinkhorn_unbalanced(plan, cost, a, b, n, m, eps, tau, max_iterations,
                                          tolerance)
                 : ot_sinkhorn_partial(plan, cost, a, b, n, m, eps, mass, max_iterations,
                                       tolerance, work);
    free(work);
    if (it < 0) {
        snprintf(err, CALIGN_ERR_LEN, "no memory for a transport of %d x %d", n, m);
        return CALIGN_ENOMEM;
    }
    *iterations = it;
    return CALIGN_OK;
}
