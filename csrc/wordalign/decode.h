/* Decoding with a trained word-alignment model (wordalign/model.h): link
 * posteriors, the HMM's Viterbi links, and the fertility sampler started
 * from them.
 *
 * The corpus's source ids run to the table's rows INCLUDED: id rows is a
 * word never seen in training, which gets the table's empty last row (a
 * target word never seen has id 0, in no row). Returns a status of
 * core/status.h with a message in err. */
#ifndef CALIGN_WA_DECODE_H
#define CALIGN_WA_DECODE_H

#include "wordalign/fertility.h"
#include "wordalign/model.h"

/* Link posteriors p(a_j = i | pair) of every pair under the model (IBM1,
 * IBM2 or HMM): pair k's [J][I + 1] block (i = 0 NULL) after the blocks of
 * the pairs before it (wa_corpus_links values in all). */
int wa_model_posteriors(double *post, const wa_model *m, const wa_corpus *c, int n_threads,
                        char *err);

/* The HMM's most probable links: best[tgt_off[k] + j] = source position
 * (1..I) of target word j of pair k, or 0 for NULL. */
int wa_model_viterbi(int32_t *best, const wa_model *m, const wa_corpus *c, int n_threads,
                     char *err);

/* The HMM's fertility sampler (wordalign/fertility.h) over the corpus:
 * post as wa_model_posteriors'. align holds the starting links (one per
 * target word, 0..I, checked) when start_given, else it is filled with the
 * Viterbi links first; it ends as the last sample. fs's counts are checked
 * (max_fertility in [1, 64], prior finite and > 0, burn_in <= sweeps). */
int wa_model_fertility(double *post, int32_t *align, int start_given, const wa_model *m,
                       const wa_corpus *c, const wa_fertility *fs, int64_t cache_bytes,
                       int n_threads, char *err);

#endif
