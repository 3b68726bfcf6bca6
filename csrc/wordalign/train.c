#include "wordalign/train.h"

#include <math.h>
#include <stdlib.h>

#include "core/status.h"

/* Every link of the corpus must be in the table (else the E-step would
 * count into an entry that does not exist): true of the corpus the table
 * was started on. */
static int check_links(const wa_table *t, const wa_corpus *c, const wa_links *links,
                       const char *model, char *err) {
    for (long k = 0; k < c->n_pairs; k++) {
        const int64_t I = c->src_off[k + 1] - c->src_off[k];
        for (int64_t j = c->tgt_off[k]; j < c->tgt_off[k + 1]; j++)
            for (int64_t i = 0; i <= I; i++) {
                const int64_t at = links->off[k] + (j - c->tgt_off[k]) * (I + 1) + i;
                const int32_t e = i == 0 ? 0 : c->src[c->src_off[k] + i - 1];
                if ((links->index ? links->index[at] : wa_table_find(t, e, c->tgt[j])) < 0)
                    return calign_fail(
                        err, CALIGN_EINVAL,
                        "the %s translation table lacks a word pair of pair %ld of the "
                        "corpus: train on the corpus the model was started on",
                        model, k);
            }
    }
    return CALIGN_OK;
}

/* The model's count buffers for one run of iterations: n_entries + 1
 * doubles per thread, allocated once. */
static int alloc_counts(wa_model *m, int n_threads, char *err) {
    free(m->counts);
    m->counts = malloc(sizeof(double) * (size_t)(m->table.n_entries + 1) * n_threads);
    return m->counts ? CALIGN_OK
                     : calign_fail(err, CALIGN_ENOMEM,
                                   "no memory for the EM counts of %lld entries "
                                   "x %d threads",
                                   (long long)m->table.n_entries, n_threads);
}

static void free_counts(wa_model *m) {
    free(m->counts);
    m->counts = NULL;
}

/* After iteration `it` (from 0) of `iterations`: the kernel's status, and
 * ENONFINITE when the log-likelihood is not finite. */
static int check_step(int status, double loglik, int it, int iterations, double alpha, char *err) {
    if (status == CALIGN_ECALLBACK)
        return calign_fail(err, status,
                           "summing the statistics of EM iteration %d of %d over the "
                           "processes failed",
                           it + 1, iterations);
    if (status != CALIGN_OK)
        return calign_fail(err, CALIGN_ENOMEM, "no memory for EM iteration %d of %d", it + 1,
                           iterations);
    if (isfinite(loglik)) return CALIGN_OK;
    /* alpha > 0's update is exp(digamma(count + alpha) - ...), and
     * exp(digamma(x)) ~ exp(-1 / x) underflows to 0 below x ~ 1 / 745: with a
     * tiny alpha, every rarely counted link of a word can get probability 0 */
    return calign_fail(
        err, CALIGN_ENONFINITE,
        "EM iteration %d of %d: the log-likelihood is %s: the model broke down (a pair "
        "got probability 0 or a value overflowed) and is unusable%s",
        it + 1, iterations, isnan(loglik) ? "NaN" : "-inf",
        alpha > 0 && alpha < 0.002 ? "; an alpha below about 0.0015 rounds rare links "
                                     "to probability 0: use alpha=0 or alpha >= 0.002"
                                   : "");
}

/* iterations of EM of one kind (IBM1's for the IBM1 iterations of any
 * model, else the model's own) on a corpus whose links were checked. */
static int run_em(wa_model *m, wa_kind kind, const wa_corpus *c, const wa_links *links,
                  int iterations, const wa_reducer *sum, double *logliks, int n_threads,
                  char *err) {
    if (iterations == 0) return CALIGN_OK;
    int status = alloc_counts(m, n_threads, err);
    wa_settings ibm = {kind == WA_IBM2, m->p0, m->tension, m->learn_tension, m->alpha};
    wa_hmm hmm = {m->p0, m->max_jump, m->jump, m->alpha};
    for (int it = 0; it < iterations && status == CALIGN_OK; it++) {
        double loglik = NAN;
        int step = kind == WA_HMM
                       ? wa_hmm_em_iteration(&m->table, &hmm, c, links, m->counts, sum,
                                             n_threads, &loglik)
                       : wa_em_iteration(&m->table, &ibm, c, links, m->counts, sum, n_threads,
                                         &loglik);
        if (kind == WA_IBM2) m->tension = ibm.tension;
        status = check_step(step, loglik, it, iterations, m->alpha, err);
        logliks[it] = loglik;
    }
    free_counts(m);
    return status;
}

int wa_model_train(wa_model *m, const wa_corpus *c, int ibm1_iterations, int iterations,
                   int64_t cache_bytes, const wa_reducer *sum, double *logliks, int n_threads,
                   char *err) {
    if (m->table.rows == 0)
        return calign_fail(err, CALIGN_EINVAL, "the model has no translation table to train");
    wa_link_cache lc;
    int status = wa_link_cache_open(&lc, &m->table, c, cache_bytes, n_threads, err);
    if (status == CALIGN_OK) status = check_links(&m->table, c, &lc.links, "model's", err);
    if (status == CALIGN_OK)
        status = run_em(m, WA_IBM1, c, &lc.links, ibm1_iterations, sum, logliks, n_threads, err);
    if (status == CALIGN_OK)
        status = run_em(m, m->kind, c, &lc.links, iterations, sum, logliks + ibm1_iterations,
                        n_threads, err);
    wa_link_cache_close(&lc);
    return status;
}

/* Agreement EM of the two directions, both count buffers held throughout. */
static int run_agreement(wa_model *f, const wa_corpus *c_f, const wa_links *links_f,
                         wa_model *r, const wa_corpus *c_r, const wa_links *links_r,
                         int iterations, const wa_reducer *sum, double *logliks, int n_threads,
                         char *err) {
    int status = alloc_counts(f, n_threads, err);
    if (status == CALIGN_OK) status = alloc_counts(r, n_threads, err);
    wa_hmm h_f = {f->p0, f->max_jump, f->jump, f->alpha};
    wa_hmm h_r = {r->p0, r->max_jump, r->jump, r->alpha};
    for (int it = 0; it < iterations && status == CALIGN_OK; it++) {
        double loglik = NAN;
        int step = wa_hmm_agreement_iteration(&f->table, &h_f, c_f, links_f, f->counts,
                                              &r->table, &h_r, c_r, links_r, r->counts, sum,
                                              n_threads, &loglik);
        status = check_step(step, loglik, it, iterations, fmin(f->alpha, r->alpha), err);
        logliks[it] = loglik;
    }
    free_counts(f);
    free_counts(r);
    return status;
}

int wa_joint_train(wa_model *forward, wa_model *reverse, const wa_corpus *c, int ibm1_iterations,
                   int iterations, int agreement, int64_t cache_bytes, const wa_reducer *sum,
                   double *ibm1_logliks, double *logliks, int n_threads, char *err) {
    const wa_corpus c_r = wa_corpus_swapped(c);
    if (forward->kind != WA_HMM || reverse->kind != WA_HMM)
        return calign_fail(err, CALIGN_EINVAL, "forward and reverse must be HMMs");
    if (forward->table.rows != c->src_vocab || reverse->table.rows != c_r.src_vocab)
        return calign_fail(err, CALIGN_EINVAL,
                           "forward and reverse must be started on the corpus, "
                           "reverse with its sides swapped");
    wa_link_cache lc_f, lc_r;
    int status = wa_link_cache_open(&lc_f, &forward->table, c, cache_bytes, n_threads, err);
    if (status != CALIGN_OK) return status;
    status = wa_link_cache_open(&lc_r, &reverse->table, &c_r, cache_bytes, n_threads, err);
    if (status != CALIGN_OK) {
        wa_link_cache_close(&lc_f);
        return status;
    }
    const wa_links *links_f = &lc_f.links, *links_r = &lc_r.links;
    status = check_links(&forward->table, c, links_f, "forward", err);
    if (status == CALIGN_OK) status = check_links(&reverse->table, &c_r, links_r, "reverse", err);
    if (status == CALIGN_OK)
        status = run_em(forward, WA_IBM1, c, links_f, ibm1_iterations, sum, ibm1_logliks,
                        n_threads, err);
    if (status == CALIGN_OK)
        status = run_em(reverse, WA_IBM1, &c_r, links_r, ibm1_iterations, sum,
                        ibm1_logliks + ibm1_iterations, n_threads, err);
    if (status == CALIGN_OK && agreement)
        status = run_agreement(forward, c, links_f, reverse, &c_r, links_r, iterations, sum,
                               logliks, n_threads, err);
    if (status == CALIGN_OK && !agreement) {
        double *reverse_logliks = malloc(sizeof(double) * (iterations + 1));
        status = reverse_logliks
                     ? run_em(forward, WA_HMM, c, links_f, iterations, sum, logliks, n_threads, err)
                     : calign_fail(err, CALIGN_ENOMEM, "no memory for the log-likelihoods");
        if (status == CALIGN_OK)
            status = run_em(reverse, WA_HMM, &c_r, links_r, iterations, sum, reverse_logliks,
                            n_threads, err);
        for (int it = 0; status == CALIGN_OK && it < iterations; it++)
            logliks[it] += reverse_logliks[it];
        free(reverse_logliks);
    }
    wa_link_cache_close(&lc_f);
    wa_link_cache_close(&lc_r);
    return status;
}
