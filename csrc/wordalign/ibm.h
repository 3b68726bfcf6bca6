/* IBM Model 1 (Brown et al. 1993) and fast_align's reparameterised IBM Model 2
 * (Dyer et al. 2013): EM over a parallel corpus, in double.
 *
 * The model explains each target word f_j by one source word e_i or by NULL
 * (source id 0, position 0). The translation table t(f | e) is stored sparse,
 * one row per source word id holding the target ids it co-occurs with. */
#ifndef CALIGN_WA_IBM_H
#define CALIGN_WA_IBM_H

#include <stdint.h>

typedef struct {
    const int32_t *src, *tgt;        /* token ids; source ids >= 1 (0 is NULL) */
    const int64_t *src_off, *tgt_off; /* pair k: src[src_off[k] .. src_off[k+1]) */
    long n_pairs;
    int src_vocab, tgt_vocab;         /* ids are < these */
} wa_corpus;

typedef struct {
    int64_t *row_start; /* [src_vocab + 1] */
    int32_t *cols;      /* target ids, sorted within a row */
    double *prob;       /* t(f | e) */
    int64_t n_entries;
    int rows;
} wa_table;

typedef struct {
    int model2;        /* 0: IBM1; 1: fast_align's diagonal-favouring Model 2 */
    double p0;         /* Model 2: probability of aligning to NULL */
    double tension;    /* Model 2: lambda, updated when learn_tension */
    int learn_tension;
    double alpha;      /* > 0: variational Bayes with a Dirichlet(alpha) prior on t */
} wa_settings;

/* Every (source word or NULL, target word) pair that co-occurs, t uniform over
 * each row. Returns 0, -1 when out of memory. */
int wa_table_build(wa_table *t, const wa_corpus *c);
void wa_table_free(wa_table *t);

/* Index of t(f | e) in the table, -1 if the pair never co-occurred. */
int64_t wa_table_find(const wa_table *t, int32_t e, int32_t f);

/* One EM iteration; updates t (and the tension). counts: n_entries doubles per
 * thread of scratch. Returns the corpus log-likelihood under the parameters
 * before the update. */
double wa_em_iteration(wa_table *t, wa_settings *s, const wa_corpus *c, double *counts,
                       int n_threads);

/* The M-step: t(f | e) from expected counts. alpha = 0: c(e, f) / sum_f c(e, f);
 * alpha > 0: mean-field variational Bayes under a symmetric Dirichlet(alpha)
 * prior on each row (Riley & Gildea 2012, as fast_align's -v):
 * exp(digamma(c + alpha)) / exp(digamma(sum_f c + n_e alpha)), n_e the row's
 * support. Rows without counts keep their values. */
void wa_table_update(wa_table *t, const double *counts, double alpha);

/* Posterior p(a_j = i | pair) for pair k: out[(I + 1) * j + i], i = 0 is NULL. */
void wa_posteriors(double *out, const wa_table *t, const wa_settings *s, const wa_corpus *c,
                   long k);

#endif
