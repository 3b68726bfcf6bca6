/* HMM word alignment (Vogel et al. 1996) with Och & Ney (2003)'s NULL states.
 *
 * Hidden state of target word j: a source position i in 1..I, or NULL
 * "after" a last source position i' in 0..I (so jumps are measured from the
 * last real position). Transitions: to source position i with probability
 * (1 - p0) c(i - i') / sum_i'' c(i'' - i'), jump widths clipped to
 * [-max_jump, max_jump]; to NULL with p0 (keeping i'). The first word jumps
 * from position 0. Emissions come from the IBM translation table.
 *
 * Because c is constant beyond +-max_jump, every sum over the previous
 * position splits into a band of 2 max_jump - 1 widths and two constant
 * tails (running sums; prefix and suffix maxima for Viterbi): forward-
 * backward, the expected counts and Viterbi cost O(J I max_jump) per pair,
 * not O(J I^2). */
#ifndef CALIGN_WA_HMM_H
#define CALIGN_WA_HMM_H

#include "wordalign/ibm.h"

typedef struct {
    double p0;
    int max_jump;
    double *jump; /* [2 * max_jump + 1] unnormalised jump weights c(d), index d + max_jump */
    double alpha; /* Dirichlet prior of the translation table (see wa_table_update) */
} wa_hmm;

/* Widest jump class the kernels take (jump: 2 * WA_MAX_JUMP + 1 weights). */
#define WA_MAX_JUMP 64

/* One EM iteration: forward-backward (scaled) over every pair, then
 * t(f | e) and the jump weights from the posteriors. counts: n_entries
 * doubles per thread. sum: the reducer of a sharded corpus (wa_reducer: the
 * counts, then the jump counts and the log-likelihood), or NULL. Sets
 * *loglik to the log-likelihood before the update (NaN or -inf when the
 * arithmetic broke down, e.g. a pair with no path of probability > 0).
 * Returns CALIGN_OK, CALIGN_ENOMEM or CALIGN_ECALLBACK (then nothing
 * updated). */
int wa_hmm_em_iteration(wa_table *t, wa_hmm *h, const wa_corpus *c, const wa_links *links,
                        double *counts, const wa_reducer *sum, int n_threads, double *loglik);

/* One EM iteration of alignment by agreement (Liang, Taskar & Klein 2006),
 * training a forward model (f: t(target | source), corpus c_f) and a reverse
 * one (r: t(source | target), corpus c_r, the same pairs with the sides
 * swapped) together: the E-step runs both HMMs on each pair and counts link
 * (i, j) in BOTH translation tables with the product of the two directions'
 * posteriors, NULL of target word j with p_f(a_j = NULL) prod_i (1 -
 * p_r(b_i = j)) (and the same for the reverse), as the Berkeley Aligner
 * does; each model's jump weights come from its own posteriors.
 * counts_f, counts_r: n_entries doubles per thread of each table. sum: as
 * wa_hmm_em_iteration's (both count tables, then both directions' jump counts
 * and the log-likelihood). Sets *loglik to the sum of the two
 * log-likelihoods before the update (NaN or -inf as wa_hmm_em_iteration).
 * Returns CALIGN_OK, CALIGN_ENOMEM or CALIGN_ECALLBACK (then nothing
 * updated). */
int wa_hmm_agreement_iteration(wa_table *t_f, wa_hmm *h_f, const wa_corpus *c_f,
                               const wa_links *links_f, double *counts_f, wa_table *t_r,
                               wa_hmm *h_r, const wa_corpus *c_r, const wa_links *links_r,
                               double *counts_r, const wa_reducer *sum, int n_threads,
                               double *loglik);

/* Link posteriors of every pair, in parallel: pair k's [J][I + 1] block (i = 0
 * the NULL mass) at out + links->off[k]. Returns 0, -1 when out of memory. */
int wa_hmm_posteriors(double *out, const wa_table *t, const wa_hmm *h, const wa_corpus *c,
                      const wa_links *links, int n_threads);

/* Viterbi path of every pair, in parallel: best[tgt_off[k] + j] = source
 * position (1..I) of target word j of pair k, or 0 for NULL. Returns 0, -1
 * when out of memory. */
int wa_hmm_viterbi(int32_t *best, const wa_table *t, const wa_hmm *h, const wa_corpus *c,
                   const wa_links *links, int n_threads);

#endif
