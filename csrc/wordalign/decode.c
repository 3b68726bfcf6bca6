#include "wordalign/decode.h"

#include <math.h>
#include <stdlib.h>

#include "core/status.h"

/* The table as decoding reads it: with its empty last row, for the source
 * words never seen in training. */
static int decoding_table(wa_table *t, const wa_model *m, char *err) {
    if (m->table.rows == 0)
        return calign_fail(err, CALIGN_EINVAL,
                           "the model has no translation table: train or load it");
    *t = m->table;
    t->rows += 1;
    return CALIGN_OK;
}

static int require_hmm(const wa_model *m, const char *what, char *err) {
    return m->kind == WA_HMM ? CALIGN_OK
                             : calign_fail(err, CALIGN_EINVAL, "%s needs an HMM, not %s", what,
                                           wa_kind_names[m->kind]);
}

static wa_hmm hmm_of(const wa_model *m) {
    return (wa_hmm){m->p0, m->max_jump, (double *)m->jump, m->alpha};
}

int wa_model_posteriors(double *post, const wa_model *m, const wa_corpus *c, int n_threads,
                        char *err) {
    wa_table t;
    int status = decoding_table(&t, m, err);
    if (status != CALIGN_OK) return status;
    wa_link_cache lc; /* the offsets only: the kernels look the links up */
    status = wa_link_cache_open(&lc, &t, c, 0, n_threads, err);
    if (status != CALIGN_OK) return status;
    if (m->kind == WA_HMM) {
        const wa_hmm h = hmm_of(m);
        const wa_links links = {lc.off, NULL};
        if (wa_hmm_posteriors(post, &t, &h, c, &links, n_threads) < 0)
            status = calign_fail(err, CALIGN_ENOMEM, "no memory for the HMM's posteriors");
    } else {
        const wa_settings s = {m->kind == WA_IBM2, m->p0, m->tension, 0, m->alpha};
        wa_posteriors(post, lc.off, &t, &s, c, n_threads);
    }
    wa_link_cache_close(&lc);
    return status;
}

int wa_model_viterbi(int32_t *best, const wa_model *m, const wa_corpus *c, int n_threads,
                     char *err) {
    wa_table t;
    int status = decoding_table(&t, m, err);
    if (status == CALIGN_OK) status = require_hmm(m, "Viterbi decoding", err);
    if (status != CALIGN_OK) return status;
    const wa_hmm h = hmm_of(m);
    if (wa_hmm_viterbi(best, &t, &h, c, NULL, n_threads) < 0)
        return calign_fail(err, CALIGN_ENOMEM, "no memory for Viterbi decoding");
    return CALIGN_OK;
}

/* Starting links given by the caller: one per target word, 0 (NULL) to I. */
static int check_alignment(const int32_t *align, const wa_corpus *c, char *err) {
    for (long k = 0; k < c->n_pairs; k++)
        for (int64_t j = c->tgt_off[k]; j < c->tgt_off[k + 1]; j++)
            if (align[j] < 0 || align[j] > c->src_off[k + 1] - c->src_off[k])
                return calign_fail(
                    err, CALIGN_EINVAL,
                    "start: pair %ld links a target word to source position %d of %lld", k,
                    (int)align[j], (long long)(c->src_off[k + 1] - c->src_off[k]));
    return CALIGN_OK;
}

int wa_model_fertility(double *post, int32_t *align, int start_given, const wa_model *m,
                       const wa_corpus *c, const wa_fertility *fs, int64_t cache_bytes,
                       int n_threads, char *err) {
    wa_table t;
    int status = decoding_table(&t, m, err);
    if (status == CALIGN_OK) status = require_hmm(m, "the fertility sampler", err);
    if (status != CALIGN_OK) return status;
    if (fs->max_fertility < 1 || fs->max_fertility > WA_MAX_FERTILITY)
        return calign_fail(err, CALIGN_EINVAL, "max_fertility must be in [1, %d], got %d",
                           WA_MAX_FERTILITY, fs->max_fertility);
    if (!(fs->prior > 0.0 && isfinite(fs->prior)))
        return calign_fail(err, CALIGN_EINVAL,
                           "fertility_prior must be a finite number > 0, got %g", fs->prior);
    if (fs->burn_in < 0 || fs->sweeps < fs->burn_in)
        return calign_fail(err, CALIGN_EINVAL,
                           "the sampler needs 0 <= burn_in <= sweeps, got %d and %d", fs->burn_in,
                           fs->sweeps);
    if (start_given && (status = check_alignment(align, c, err)) != CALIGN_OK) return status;
    const wa_hmm h = hmm_of(m);
    wa_link_cache lc; /* Viterbi and every sweep read the same links */
    if ((status = wa_link_cache_open(&lc, &t, c, cache_bytes, n_threads, err)) != CALIGN_OK)
        return status;
    if (!start_given && wa_hmm_viterbi(align, &t, &h, c, &lc.links, n_threads) < 0)
        status = calign_fail(err, CALIGN_ENOMEM, "no memory for Viterbi decoding");
    if (status == CALIGN_OK && wa_fertility_sample(post, align, &t, &h, c, &lc.links, fs,
                                                   n_threads) < 0)
        status = calign_fail(err, CALIGN_ENOMEM, "no memory for the fertility sampler");
    wa_link_cache_close(&lc);
    return status;
}
