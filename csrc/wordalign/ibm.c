#include "wordalign/ibm.h"

#include <math.h>
#include <stdint.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

static int compare_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Row e's distinct target ids, over the pairs that hold e (all pairs for the
 * NULL row 0): written to cols when not NULL, counted either way. stamp[f] ==
 * e marks f as already seen in this row. */
static int64_t row_support(int32_t *cols, int32_t *stamp, int e, const int64_t *pairs,
                           int64_t n_pairs, const wa_corpus *c) {
    int64_t n = 0;
    for (int64_t x = 0; x < n_pairs; x++) {
        long k = pairs ? pairs[x] : (long)x;
        for (int64_t j = c->tgt_off[k]; j < c->tgt_off[k + 1]; j++) {
            int32_t f = c->tgt[j];
            if (stamp[f] == e) continue;
            stamp[f] = e;
            if (cols) cols[n] = f;
            n++;
        }
    }
    return n;
}

int wa_table_build(wa_table *t, const wa_corpus *c) {
    memset(t, 0, sizeof *t);
    /* an inverted index, source id -> the pairs it occurs in (once per
     * occurrence), so each row's support is gathered in one sweep over its
     * pairs: O(sum over pairs of (I + 1) J) with no sort of all the links */
    int64_t *occ_start = calloc((size_t)c->src_vocab + 1, sizeof(int64_t));
    int64_t *occ = malloc(sizeof(int64_t) * (c->src_off[c->n_pairs] + 1));
    int32_t *stamp = malloc(sizeof(int32_t) * ((size_t)c->tgt_vocab + 1));
    t->row_start = calloc((size_t)c->src_vocab + 2, sizeof(int64_t)); /* + the empty row */
    if (!occ_start || !occ || !stamp || !t->row_start) goto fail;
    for (int64_t i = 0; i < c->src_off[c->n_pairs]; i++) occ_start[c->src[i] + 1]++;
    for (int e = 0; e < c->src_vocab; e++) occ_start[e + 1] += occ_start[e];
    for (long k = 0; k < c->n_pairs; k++)
        for (int64_t i = c->src_off[k]; i < c->src_off[k + 1]; i++) occ[occ_start[c->src[i]]++] = k;
    /* the fill moved each start to the next id's: shift back */
    for (int e = c->src_vocab; e > 0; e--) occ_start[e] = occ_start[e - 1];
    occ_start[0] = 0;
    for (int32_t f = 0; f < c->tgt_vocab; f++) stamp[f] = -1;
    for (int e = 0; e < c->src_vocab; e++) {
        const int64_t *pairs = e == 0 ? NULL : occ + occ_start[e];
        int64_t n_pairs = e == 0 ? c->n_pairs : occ_start[e + 1] - occ_start[e];
        t->row_start[e + 1] = t->row_start[e] + row_support(NULL, stamp, e, pairs, n_pairs, c);
    }
    t->rows = c->src_vocab;
    t->n_entries = t->row_start[c->src_vocab + 1] = t->row_start[c->src_vocab];
    if (t->n_entries > INT32_MAX) {
        free(occ_start);
        free(occ);
        free(stamp);
        wa_table_free(t);
        return CALIGN_EINVAL;
    }
    t->cols = malloc(sizeof(int32_t) * (t->n_entries > 0 ? t->n_entries : 1));
    t->prob = malloc(sizeof(double) * (t->n_entries > 0 ? t->n_entries : 1));
    if (!t->cols || !t->prob) goto fail;
    for (int32_t f = 0; f < c->tgt_vocab; f++) stamp[f] = -1;
    for (int e = 0; e < c->src_vocab; e++) {
        const int64_t *pairs = e == 0 ? NULL : occ + occ_start[e];
        int64_t n_pairs = e == 0 ? c->n_pairs : occ_start[e + 1] - occ_start[e];
        int32_t *cols = t->cols + t->row_start[e];
        int64_t len = row_support(cols, stamp, e, pairs, n_pairs, c);
        qsort(cols, len, sizeof(int32_t), compare_int32);
        for (int64_t x = 0; x < len; x++) t->prob[t->row_start[e] + x] = 1.0 / len;
    }
    free(occ_start);
    free(occ);
    free(stamp);
    return CALIGN_OK;
fail:
    free(occ_start);
    free(occ);
    free(stamp);
    wa_table_free(t);
    return CALIGN_ENOMEM;
}

/* digamma(x) for x > 0: recurrence up to x >= 6, then the asymptotic series. */
static double digamma(double x) {
    double result = 0.0;
    while (x < 6.0) {
        result -= 1.0 / x;
        x += 1.0;
    }
    double f = 1.0 / (x * x);
    return result + log(x) - 0.5 / x -
           f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f / 132))));
}

void wa_table_update(wa_table *t, const double *counts, double alpha) {
    for (int e = 0; e < t->rows; e++) {
        int64_t first = t->row_start[e], end = t->row_start[e + 1];
        double total = 0.0;
        for (int64_t x = first; x < end; x++) total += counts[x];
        if (total <= 0.0) continue;
        if (alpha <= 0.0) {
            for (int64_t x = first; x < end; x++) t->prob[x] = counts[x] / total;
            continue;
        }
        double denominator = digamma(total + (end - first) * alpha);
        for (int64_t x = first; x < end; x++)
            t->prob[x] = exp(digamma(counts[x] + alpha) - denominator);
    }
}

void wa_table_free(wa_table *t) {
    free(t->row_start);
    free(t->cols);
    free(t->prob);
    memset(t, 0, sizeof *t);
}

int64_t wa_table_find(const wa_table *t, int32_t e, int32_t f) {
    if (e < 0 || e >= t->rows) return -1;
    const int32_t *base = t->cols + t->row_start[e];
    int64_t n = t->row_start[e + 1] - t->row_start[e];
    if (n == 0) return -1;
    /* branch-free lower bound: the halving step compiles to a conditional
     * move, so a lookup costs log2(n) dependent loads and no mispredictions */
    while (n > 1) {
        int64_t half = n / 2;
        base = base[half] <= f ? base + half : base;
        n -= half;
    }
    return *base == f ? base - t->cols : -1;
}

void wa_link_offsets(int64_t *off, const wa_corpus *c) {
    off[0] = 0;
    for (long k = 0; k < c->n_pairs; k++)
        off[k + 1] = off[k] + (c->src_off[k + 1] - c->src_off[k] + 1) *
                                  (c->tgt_off[k + 1] - c->tgt_off[k]);
}

void wa_pair_links(int32_t *out, const wa_table *t, const wa_corpus *c, long k) {
    const int32_t *e = c->src + c->src_off[k], *f = c->tgt + c->tgt_off[k];
    const int I = (int)(c->src_off[k + 1] - c->src_off[k]);
    const int J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
    for (int j = 0; j < J; j++)
        for (int i = 0; i <= I; i++)
            out[(size_t)j * (I + 1) + i] = (int32_t)wa_table_find(t, i == 0 ? 0 : e[i - 1], f[j]);
}

int wa_links_fill(int32_t *index, const int64_t *off, const wa_table *t, const wa_corpus *c,
                  int n_threads) {
    n_threads = wa_team(n_threads, c);
    /* Row by row instead of a binary search per link: the occurrences (pair,
     * position) of each source id, then, for each id, its row's target ids
     * scattered into pos[] (pos[f] = column of f in the row, -1 if absent),
     * read once per link. O(links + table entries), rows in parallel. */
    const int V = c->src_vocab;
    const int64_t n_tokens = c->src_off[c->n_pairs];
    int64_t *occ_start = calloc((size_t)V + 1, sizeof(int64_t));
    int64_t *occ_pair = malloc(sizeof(int64_t) * (n_tokens + 1));
    int32_t *occ_pos = malloc(sizeof(int32_t) * (n_tokens + 1));
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)c->tgt_vocab * n_threads);
    int status = -1;
    if (!occ_start || !occ_pair || !occ_pos || !pos) goto done;
    for (int64_t x = 0; x < n_tokens; x++) occ_start[c->src[x] + 1]++;
    for (int e = 0; e < V; e++) occ_start[e + 1] += occ_start[e];
    for (long k = 0; k < c->n_pairs; k++)
        for (int64_t x = c->src_off[k]; x < c->src_off[k + 1]; x++) {
            int64_t at = occ_start[c->src[x]]++;
            occ_pair[at] = k;
            occ_pos[at] = (int32_t)(x - c->src_off[k]) + 1;
        }
    for (int e = V; e > 0; e--) occ_start[e] = occ_start[e - 1]; /* undo the fill's shift */
    occ_start[0] = 0;
    for (size_t x = 0; x < (size_t)c->tgt_vocab * n_threads; x++) pos[x] = -1;
#pragma omp parallel num_threads(n_threads)
    {
        int32_t *mine = pos + (size_t)omp_get_thread_num() * c->tgt_vocab;
#pragma omp for schedule(dynamic, 16)
        for (int e = 0; e < V; e++) {
            const int64_t first = t->row_start[e], end = t->row_start[e + 1];
            const int64_t n_occ = e == 0 ? c->n_pairs : occ_start[e + 1] - occ_start[e];
            if (n_occ == 0) continue;
            for (int64_t x = first; x < end; x++) mine[t->cols[x]] = (int32_t)(x - first);
            for (int64_t o = 0; o < n_occ; o++) {
                const long k = e == 0 ? (long)o : (long)occ_pair[occ_start[e] + o];
                const int i = e == 0 ? 0 : occ_pos[occ_start[e] + o];
                const int I = (int)(c->src_off[k + 1] - c->src_off[k]);
                const int32_t *f = c->tgt + c->tgt_off[k];
                int32_t *out = index + off[k] + i;
                for (int64_t j = 0; j < c->tgt_off[k + 1] - c->tgt_off[k]; j++)
                    out[j * (I + 1)] = mine[f[j]] >= 0 ? (int32_t)(first + mine[f[j]]) : -1;
            }
            for (int64_t x = first; x < end; x++) mine[t->cols[x]] = -1;
        }
    }
    status = 0;
done:
    free(occ_start);
    free(occ_pair);
    free(occ_pos);
    free(pos);
    return status;
}

const int32_t *wa_links_of_pair(int32_t *scratch, const wa_links *links, const wa_table *t,
                                const wa_corpus *c, long k) {
    if (links && links->index) return links->index + links->off[k];
    wa_pair_links(scratch, t, c, k);
    return scratch;
}

int wa_team(int n_threads, const wa_corpus *c) {
    return c->tgt_off[c->n_pairs] < 32768 ? 1 : n_threads;
}

void wa_longest(int *I_max, int *J_max, const wa_corpus *c) {
    *I_max = *J_max = 0;
    for (long k = 0; k < c->n_pairs; k++) {
        int I = (int)(c->src_off[k + 1] - c->src_off[k]);
        int J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
        *I_max = I > *I_max ? I : *I_max;
        *J_max = J > *J_max ? J : *J_max;
    }
}

/* fast_align's distortion feature h(i, j) = -|i/I - j/J| (1-based i, j). */
static inline double diagonal_feature(int i, int j, int I, int J) {
    return -fabs((double)i / I - (double)j / J);
}

/* Alignment prior p(a_j = i), i = 0..I (0 is NULL), into prior[0..I]. IBM1:
 * uniform 1/(I+1). Model 2: p0 for NULL, else (1 - p0) exp(lambda h) / Z. */
static void alignment_prior(double *prior, int j, int I, int J, const wa_settings *s) {
    if (!s->model2) {
        for (int i = 0; i <= I; i++) prior[i] = 1.0 / (I + 1);
        return;
    }
    double z = 0.0;
    for (int i = 1; i <= I; i++) {
        prior[i] = exp(s->tension * diagonal_feature(i, j, I, J));
        z += prior[i];
    }
    prior[0] = s->p0;
    for (int i = 1; i <= I; i++) prior[i] *= (1.0 - s->p0) / z;
}

/* E[h] under the unnormalised distortion weights exp(lambda h(i, j)), i = 1..I. */
static double expected_feature(int j, int I, int J, double tension) {
    double z = 0.0, zh = 0.0;
    for (int i = 1; i <= I; i++) {
        double h = diagonal_feature(i, j, I, J), w = exp(tension * h);
        z += w;
        zh += w * h;
    }
    return zh / z;
}

/* The E-step of one pair: posteriors of each target word's link, added (times
 * 1) into counts; returns log p(f | e) and adds the posterior-weighted
 * distortion feature into *feature. probs: I + 1 doubles; entry: the pair's
 * link indices. */
static double pair_expectations(double *counts, double *feature, double *probs,
                                const int32_t *entry, const wa_table *t, const wa_settings *s,
                                int I, int J) {
    double loglik = 0.0;
    for (int j = 1; j <= J; j++, entry += I + 1) {
        alignment_prior(probs, j, I, J, s);
        double z = 0.0;
        for (int i = 0; i <= I; i++) {
            probs[i] *= t->prob[entry[i]];
            z += probs[i];
        }
        loglik += log(z);
        counts[entry[0]] += probs[0] / z;
        for (int i = 1; i <= I; i++) {
            double post = probs[i] / z;
            counts[entry[i]] += post;
            if (s->model2) *feature += post * diagonal_feature(i, j, I, J);
        }
    }
    return loglik;
}

int wa_reduce(const wa_reducer *r, double *values, int64_t n) {
    if (!r || !r->sum) return CALIGN_OK;
    return r->sum(r->context, values, n) == 0 ? CALIGN_OK : CALIGN_ECALLBACK;
}

/* fast_align's update of lambda: gradient steps on the expected complete-data
 * log-likelihood, the posterior feature expectation against the prior's, 8
 * steps of size 20 per target token, lambda kept in [0.1, 14]. feature and
 * tokens are the whole corpus's; the prior's expectation is summed over the
 * shards by sum. */
static int tension_update(double *tension, double feature, double tokens, const wa_corpus *c,
                          const wa_reducer *sum) {
    for (int step = 0; step < 8 && tokens > 0; step++) {
        double model_feature = 0.0;
        for (long k = 0; k < c->n_pairs; k++) {
            int I = (int)(c->src_off[k + 1] - c->src_off[k]);
            int J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
            if (I == 0) continue;
            for (int j = 1; j <= J; j++) model_feature += expected_feature(j, I, J, *tension);
        }
        if (wa_reduce(sum, &model_feature, 1) != CALIGN_OK) return CALIGN_ECALLBACK;
        *tension += (feature - model_feature) / tokens * 20.0;
        *tension = *tension < 0.1 ? 0.1 : (*tension > 14.0 ? 14.0 : *tension);
    }
    return CALIGN_OK;
}

int wa_em_iteration(wa_table *t, wa_settings *s, const wa_corpus *c, const wa_links *links,
                    double *counts, const wa_reducer *sum, int n_threads, double *loglik_out) {
    n_threads = wa_team(n_threads, c);
    const int64_t n = t->n_entries;
    int I_max, J_max;
    wa_longest(&I_max, &J_max, c);
    const size_t width = (size_t)I_max + 1;
    /* per thread: loglik, feature, probs [width], link indices [width J_max] */
    const size_t stride = 2 + width + (width * J_max + 1) / 2;
    double *per_thread = calloc((size_t)n_threads * stride, sizeof(double));
    if (!per_thread) return CALIGN_ENOMEM;
    memset(counts, 0, sizeof(double) * n * n_threads);
    /* Each thread sums into its own count table over a fixed block of pairs;
     * the tables are added in thread order: the same result at the same
     * thread count. */
#pragma omp parallel num_threads(n_threads)
    {
        int tid = omp_get_thread_num();
        double *mine = counts + (size_t)tid * n;
        double *acc = per_thread + (size_t)tid * stride;
        int32_t *scratch = (int32_t *)(acc + 2 + width);
#pragma omp for schedule(static)
        for (long k = 0; k < c->n_pairs; k++) {
            const int I = (int)(c->src_off[k + 1] - c->src_off[k]);
            const int J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
            const int32_t *entry = wa_links_of_pair(scratch, links, t, c, k);
            acc[0] += pair_expectations(mine, &acc[1], acc + 2, entry, t, s, I, J);
        }
    }
    double stats[3] = {0.0, 0.0, 0.0}; /* loglik, distortion feature, target words */
    for (int th = 0; th < n_threads; th++) {
        stats[0] += per_thread[(size_t)th * stride];
        stats[1] += per_thread[(size_t)th * stride + 1];
        if (th > 0)
            for (int64_t x = 0; x < n; x++) counts[x] += counts[(size_t)th * n + x];
    }
    free(per_thread);
    for (long k = 0; k < c->n_pairs; k++) stats[2] += c->tgt_off[k + 1] - c->tgt_off[k];
    double tension = s->tension;
    int status = wa_reduce(sum, counts, n);
    if (status == CALIGN_OK) status = wa_reduce(sum, stats, 3);
    if (status == CALIGN_OK && s->model2 && s->learn_tension)
        status = tension_update(&tension, stats[1], stats[2], c, sum);
    if (status != CALIGN_OK) return status;
    wa_table_update(t, counts, s->alpha);
    s->tension = tension;
    *loglik_out = stats[0];
    return CALIGN_OK;
}

void wa_posteriors(double *out, const int64_t *off, const wa_table *t, const wa_settings *s,
                   const wa_corpus *c, int n_threads) {
    n_threads = wa_team(n_threads, c);
#pragma omp parallel for schedule(dynamic, 256) num_threads(n_threads)
    for (long k = 0; k < c->n_pairs; k++) {
        const int32_t *e = c->src + c->src_off[k], *f = c->tgt + c->tgt_off[k];
        const int I = (int)(c->src_off[k + 1] - c->src_off[k]);
        const int J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
        for (int j = 1; j <= J; j++) {
            double *p = out + off[k] + (size_t)(j - 1) * (I + 1);
            alignment_prior(p, j, I, J, s);
            double z = 0.0;
            for (int i = 0; i <= I; i++) {
                int64_t idx = wa_table_find(t, i == 0 ? 0 : e[i - 1], f[j - 1]);
                p[i] *= idx >= 0 ? t->prob[idx] : 0.0;
                z += p[i];
            }
            for (int i = 0; i <= I; i++) p[i] = z > 0 ? p[i] / z : 0.0;
        }
    }
}
