/* Entropic optimal transport between two small point sets (the words of a
 * sentence pair), solved in the log domain (Peyré & Cuturi 2019, §4.4), for
 * optimal-transport word alignment (Arase et al. 2023).
 *
 * All matrices are row-major [n, m]; plan = exp((f_i + g_j - C_ij) / eps)
 * for the balanced and unbalanced problems. */
#ifndef CALIGN_WA_SINKHORN_H
#define CALIGN_WA_SINKHORN_H

typedef enum { OT_BALANCED, OT_UNBALANCED, OT_PARTIAL, OT_N_KINDS } ot_kind;

/* "balanced", "unbalanced", "partial": the names the kinds cross into Python by. */
extern const char *const ot_kind_names[OT_N_KINDS];

/* The plan of the problem `kind` (the solvers below) between a [n] and b [m]
 * under cost [n, m], n, m >= 0; *iterations gets the iterations used.
 * Returns a status of core/status.h with a message in err (CALIGN_ERR_LEN
 * bytes): EINVAL unless eps > 0, the masses > 0, tau > 0 (unbalanced), mass
 * > 0 (partial, n and m > 0), max_iterations >= 0 and tolerance >= 0. */
int ot_transport(double *plan, int *iterations, const double *cost, const double *a,
                 const double *b, int n, int m, ot_kind kind, double eps, double tau,
                 double mass, int max_iterations, double tolerance, char *err);

/* cost[i, j] = 1 - cos(x_i, y_j) + distortion |i/n - j/m| (x [n, d], y [m, d]). */
void ot_cosine_cost(double *cost, const double *x, const double *y, int n, int m, int d,
                    double distortion);

/* Balanced: min <P, C> - eps H(P) s.t. P 1 = a, P^T 1 = b. */
int ot_sinkhorn(double *plan, const double *cost, const double *a, const double *b, int n, int m,
                double eps, int max_iterations, double tolerance);

/* Unbalanced: the marginal constraints relaxed by tau KL(P 1 | a) + tau KL(P^T 1 | b)
 * (Chizat et al. 2018); the potentials are damped by tau / (tau + eps). */
int ot_sinkhorn_unbalanced(double *plan, const double *cost, const double *a, const double *b,
                           int n, int m, double eps, double tau, int max_iterations,
                           double tolerance);

/* Partial: P 1 <= a, P^T 1 <= b, sum P = mass, by Dykstra's iterated Bregman
 * projections (Benamou et al. 2015), in the log domain. work: 5 n m doubles. */
int ot_sinkhorn_partial(double *plan, const double *cost, const double *a, const double *b,
                        int n, int m, double eps, double mass, int max_iterations,
                        double tolerance, double *work);

#endif
