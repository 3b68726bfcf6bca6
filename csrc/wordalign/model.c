#include "wordalign/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

const char *const wa_kind_names[WA_N_KINDS] = {"ibm1", "ibm2", "hmm"};

int wa_model_init(wa_model *m, wa_kind kind, double p0, double tension, int learn_tension,
                  double alpha, int max_jump, const double *jump, int64_t n_jump, char *err) {
    memset(m, 0, sizeof *m);
    const int hmm = kind == WA_HMM;
    if (kind < 0 || kind >= WA_N_KINDS)
        return calign_fail(err, CALIGN_EINVAL, "unknown model kind");
    if (!(p0 >= 0.0 && p0 < 1.0) || (hmm && p0 == 0.0))
        return calign_fail(err, CALIGN_EINVAL, "p0 must be in %s, got %g",
                           hmm ? "(0, 1)" : "[0, 1)", p0);
    if (!(tension >= 0.0 && isfinite(tension)))
        return calign_fail(err, CALIGN_EINVAL, "tension must be a finite number >= 0, got %g",
                           tension);
    if (!(alpha >= 0.0 && isfinite(alpha)))
        return calign_fail(err, CALIGN_EINVAL, "alpha must be a finite number >= 0, got %g", alpha);
    if (!hmm && (max_jump != 0 || jump))
        return calign_fail(err, CALIGN_EINVAL,
                           "max_jump and jump are settings of an HMM, not of %s",
                           wa_kind_names[kind]);
    if (hmm && (max_jump < 1 || max_jump > WA_MAX_JUMP))
        return calign_fail(err, CALIGN_EINVAL, "max_jump must be in [1, %d], got %d", WA_MAX_JUMP,
                           max_jump);
    const int n = 2 * max_jump + 1;
    if (jump && n_jump != n)
        return calign_fail(err, CALIGN_EINVAL,
                           "jump must hold 2 max_jump + 1 = %d weights, got %lld", n,
                           (long long)n_jump);
    for (int d = 0; jump && d < n; d++)
        if (!(jump[d] >= 0.0 && isfinite(jump[d])))
            return calign_fail(err, CALIGN_EINVAL, "jump[%d] = %g is not a finite weight >= 0", d,
                               jump[d]);
    *m = (wa_model){kind, p0, tension, learn_tension && kind == WA_IBM2, alpha, max_jump};
    for (int d = 0; hmm && d < n; d++) m->jump[d] = jump ? jump[d] : 1.0 / n;
    return CALIGN_OK;
}

void wa_model_free(wa_model *m) {
    wa_table_free(&m->table);
    free(m->counts);
    m->counts = NULL;
}

int wa_model_set_table(wa_model *m, const int64_t *row_start, int64_t rows, const int32_t *cols,
                       const double *prob, int64_t n_entries, int tgt_vocab, char *err) {
    /* decoding adds a row (words unseen in training): rows + 1 must be an int */
    if (rows < 1 || rows >= INT32_MAX)
        return calign_fail(err, CALIGN_EINVAL,
                           "row_start must hold 2 to 2**31 - 1 offsets, got %lld",
                           (long long)rows + 1);
    if (n_entries > INT32_MAX)
        return calign_fail(err, CALIGN_EINVAL, "the table has %lld entries, more than 2**31 - 1",
                           (long long)n_entries);
    if (row_start[0] != 0 || row_start[rows] != n_entries)
        return calign_fail(err, CALIGN_EINVAL,
                           "row_start must run from 0 to the %lld entries of cols",
                           (long long)n_entries);
    for (int64_t e = 0; e < rows; e++) {
        if (row_start[e + 1] < row_start[e])
            return calign_fail(err, CALIGN_EINVAL, "row_start decreases after row %lld",
                               (long long)e);
        for (int64_t x = row_start[e] + 1; x < row_start[e + 1]; x++)
            if (cols[x] <= cols[x - 1]) /* the lookups are binary searches */
                return calign_fail(err, CALIGN_EINVAL,
                                   "cols must increase within each row; row %lld does not",
                                   (long long)e);
    }
    for (int64_t x = 0; x < n_entries; x++)
        if (!(prob[x] >= 0.0 && prob[x] <= 1.0))
            return calign_fail(err, CALIGN_EINVAL, "prob[%lld] = %g is not a probability",
                               (long long)x, prob[x]);
    wa_table t = {malloc(sizeof(int64_t) * (rows + 2)), malloc(sizeof(int32_t) * (n_entries + 1)),
                  malloc(sizeof(double) * (n_entries + 1)), n_entries, (int)rows};
    if (!t.row_start || !t.cols || !t.prob) {
        wa_table_free(&t);
        return calign_fail(err, CALIGN_ENOMEM, "no memory for a translation table of %lld entries",
                           (long long)n_entries);
    }
    memcpy(t.row_start, row_start, sizeof(int64_t) * (rows + 1));
    t.row_start[rows + 1] = n_entries; /* the empty row after the last */
    memcpy(t.cols, cols, sizeof(int32_t) * n_entries);
    memcpy(t.prob, prob, sizeof(double) * n_entries);
    wa_table_free(&m->table);
    m->table = t;
    m->tgt_vocab = tgt_vocab;
    return CALIGN_OK;
}

int wa_model_start(wa_model *m, const wa_corpus *c, char *err) {
    wa_table t;
    int status = wa_table_build(&t, c);
    if (status == CALIGN_EINVAL)
        return calign_fail(err, status,
                           "the corpus has more than 2**31 - 1 distinct (source word, "
                           "target word) pairs");
    if (status != CALIGN_OK)
        return calign_fail(err, status, "no memory for the translation table of the corpus");
    wa_table_free(&m->table);
    m->table = t;
    m->tgt_vocab = c->tgt_vocab;
    return CALIGN_OK;
}

/* ---- corpora -------------------------------------------------------------------------- */

static int check_offsets(const int64_t *off, long n_pairs, int64_t n_tokens, const char *name,
                         char *err) {
    if (off[0] != 0 || off[n_pairs] != n_tokens)
        return calign_fail(err, CALIGN_EINVAL, "%s must run from 0 to the token count %lld", name,
                           (long long)n_tokens);
    for (long k = 0; k < n_pairs; k++) {
        if (off[k + 1] < off[k])
            return calign_fail(err, CALIGN_EINVAL, "%s must not decrease (pair %ld)", name, k);
        if (off[k + 1] - off[k] > INT32_MAX) /* the kernels hold lengths in ints */
            return calign_fail(err, CALIGN_EINVAL, "%s: pair %ld has 2**31 words or more", name, k);
    }
    return CALIGN_OK;
}

int wa_corpus_check(const wa_corpus *c, int64_t n_src_tokens, int64_t n_tgt_tokens, char *err) {
    int status = check_offsets(c->src_off, c->n_pairs, n_src_tokens, "source_offsets", err);
    return status ? status
                  : check_offsets(c->tgt_off, c->n_pairs, n_tgt_tokens, "target_offsets", err);
}

wa_corpus wa_corpus_swapped(const wa_corpus *c) {
    return (wa_corpus){c->tgt, c->src, c->tgt_off, c->src_off, c->n_pairs, c->tgt_vocab,
                       c->src_vocab};
}

int64_t wa_corpus_links(const wa_corpus *c) {
    int64_t n = 0;
    for (long k = 0; k < c->n_pairs; k++)
        n += (c->src_off[k + 1] - c->src_off[k] + 1) * (c->tgt_off[k + 1] - c->tgt_off[k]);
    return n;
}

int wa_link_cache_open(wa_link_cache *lc, const wa_table *t, const wa_corpus *c,
                       int64_t cache_bytes, int n_threads, char *err) {
    memset(lc, 0, sizeof *lc);
    if (!(lc->off = malloc(sizeof(int64_t) * (c->n_pairs + 1))))
        return calign_fail(err, CALIGN_ENOMEM, "no memory for the link offsets of the corpus");
    wa_link_offsets(lc->off, c);
    const int64_t n = lc->off[c->n_pairs];
    if (n <= cache_bytes / (int64_t)sizeof(int32_t)) {
        lc->index = malloc(sizeof(int32_t) * (n + 1));
        if (!lc->index || wa_links_fill(lc->index, lc->off, t, c, n_threads) < 0) {
            wa_link_cache_close(lc);
            return calign_fail(err, CALIGN_ENOMEM,
                               "no memory for the %lld link indices of the corpus", (long long)n);
        }
    }
    lc->links = (wa_links){lc->off, lc->index};
    return CALIGN_OK;
}

void wa_link_cache_close(wa_link_cache *lc) {
    free(lc->off);
    free(lc->index);
    memset(lc, 0, sizeof *lc);
}
