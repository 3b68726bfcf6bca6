/* Fertility refinement of HMM alignments by Gibbs sampling.
 *
 * The HMM puts no price on how many target words a source word takes: an
 * untranslated source word takes the inserted words next to it, one
 * occurrence of a repeated word takes both translations. The fertility HMM of Zhao & Gildea (2010) (eflomal's model 3,
 * Ostling & Tiedemann 2016) multiplies the HMM's p(a, f | e) by prod_i
 * n(phi_i | e_i), phi_i the number of target words linked to source word i.
 * Here the HMM's t and jump weights stay fixed and n is re-estimated after
 * every sweep of a Gibbs sampler over the links of the corpus being aligned
 * (stochastic EM, as eflomal learns on the corpus it aligns):
 *     n(phi | e) = (N(e, phi) + prior g(phi)) / (N(e) + prior),
 * N the current counts of source words of type e with phi links (phi >=
 * max_fertility pooled), g the corpus-wide fertility distribution (add-one
 * smoothed, so that no class has zero mass). The link
 * posteriors are the link frequencies over the sweeps after burn-in.
 *
 * Each pair draws from its own random stream (splitmix64 of the seed, the
 * sweep and the pair index) and n changes only between sweeps, so the result
 * does not depend on the thread count. */
#ifndef CALIGN_WA_FERTILITY_H
#define CALIGN_WA_FERTILITY_H

#include <stdint.h>

#include "wordalign/hmm.h"

/* The widest fertility class the sampler takes. */
#define WA_MAX_FERTILITY 64

typedef struct {
    int max_fertility; /* F in [1, WA_MAX_FERTILITY]: fertilities >= F share one class */
    double prior;      /* > 0: Dirichlet pseudo-counts towards the corpus-wide distribution */
    int sweeps;        /* Gibbs sweeps over the corpus */
    int burn_in;       /* the first sweeps, whose links are not counted in post */
    uint64_t seed;
} wa_fertility;

/* post: pair k's [J][I + 1] link frequencies over the sweeps after burn-in
 * at post + links->off[k] (i = 0 NULL). align: in, the starting alignment
 * (source position 1..I or 0 for NULL of every target word, at c->tgt_off[k]
 * + j: the HMM's Viterbi path); out, the last sample. n is learned from the
 * corpus at hand, starting from the counts of the starting alignment.
 * Returns 0, -1 when out of memory. */
int wa_fertility_sample(double *post, int32_t *align, const wa_table *t, const wa_hmm *h,
                        const wa_corpus *c, const wa_links *links, const wa_fertility *fs,
                        int n_threads);

#endif
