/* HMM word alignment (Vogel et al. 1996) with Och & Ney (2003)'s NULL states.
 *
 * Hidden state of target word j: a source position i in 1..I, or NULL
 * "after" a last source position i' in 0..I (so jumps are measured from the
 * last real position). Transitions: to source position i with probability
 * (1 - p0) c(i - i') / sum_i'' c(i'' - i'), jump widths clipped to
 * [-max_jump, max_jump]; to NULL with p0 (keeping i'). The first word jumps
 * from position 0. Emissions come from the IBM translation table. */
#ifndef CALIGN_WA_HMM_H
#define CALIGN_WA_HMM_H

#include "wordalign/ibm.h"

typedef struct {
    double p0;
    int max_jump;
    double *jump; /* [2 * max_jump + 1] unnormalised jump weights c(d), index d + max_jump */
    double alpha; /* Dirichlet prior of the translation table (see wa_table_update) */
} wa_hmm;

/* One EM iteration: forward-backward (scaled) over every pair, then
 * t(f | e) and the jump weights from the posteriors. counts: n_entries
 * doubles per thread. Returns the log-likelihood before the update. */
double wa_hmm_em_iteration(wa_table *t, wa_hmm *h, const wa_corpus *c, double *counts,
                           int n_threads);

/* Link posteriors of pair k: out[(I + 1) * j + i], i = 0 the NULL mass. */
void wa_hmm_posteriors(double *out, const wa_table *t, const wa_hmm *h, const wa_corpus *c,
                       long k);

/* Viterbi path of pair k: best[j] = source position (1..I) or 0 for NULL. */
void wa_hmm_viterbi(int *best, const wa_table *t, const wa_hmm *h, const wa_corpus *c, long k);

#endif
