/* EM training of word-alignment models (wordalign/model.h): the iteration
 * loops, with the model's count buffers, the link cache of the corpus, the
 * check that every link of the corpus is in the table, and the agreement
 * training of a JointHMM's two directions.
 *
 * The corpus's vocabularies must be the model's (the table's rows and
 * tgt_vocab: ids checked by the caller), and every one of its links in the
 * table (checked here: EINVAL). An iteration whose log-likelihood is NaN or
 * -inf stops training with CALIGN_ENONFINITE: the parameters are then no
 * longer usable.
 *
 * sum: NULL for one process; else c is this process's shard of a corpus
 * sharded across processes, the model was started (wa_model_start) on the
 * whole corpus in every process, and every iteration sums its expected
 * statistics over the processes (wa_reducer), so that each process ends with
 * the parameters one process gets on the whole corpus (up to the rounding of
 * the sums' order). A failed sum stops training with CALIGN_ECALLBACK. */
#ifndef CALIGN_WA_TRAIN_H
#define CALIGN_WA_TRAIN_H

#include "wordalign/model.h"

/* ibm1_iterations of IBM Model 1 EM, then iterations of the model's own
 * (IBM1, IBM2 or HMM); logliks[ibm1_iterations + iterations] gets each
 * iteration's log-likelihood before its update. cache_bytes: see
 * wa_link_cache_open. */
int wa_model_train(wa_model *m, const wa_corpus *c, int ibm1_iterations, int iterations,
                   int64_t cache_bytes, const wa_reducer *sum, double *logliks, int n_threads,
                   char *err);

/* A JointHMM's training: forward (an HMM on c) and reverse (an HMM on c with
 * its sides swapped) each get ibm1_iterations of IBM Model 1 EM
 * (log-likelihoods into ibm1_logliks[0 .. ibm1_iterations) and [ibm1_iterations
 * .. 2 ibm1_iterations)), then iterations of HMM EM, by agreement
 * (wa_hmm_agreement_iteration) or each on its own; logliks[iterations] gets
 * the two directions' summed log-likelihoods. */
int wa_joint_train(wa_model *forward, wa_model *reverse, const wa_corpus *c, int ibm1_iterations,
                   int iterations, int agreement, int64_t cache_bytes, const wa_reducer *sum,
                   double *ibm1_logliks, double *logliks, int n_threads, char *err);

#endif
