#include "wordalign/hmm.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* Per-pair working arrays, sized for the longest pair of the corpus. */
typedef struct {
    double *emit;       /* [J][I + 1]: t(f_j | e_i), column 0 = t(f_j | NULL) */
    double *trans;      /* [(I + 1) * I]: (1 - p0) c(i - p) / Z(p), from last position p to i */
    double *alpha_real; /* [J][I + 1] (column 0 unused) */
    double *alpha_null; /* [J][I + 1]: NULL with last real position p */
    double *beta;       /* [J][I + 1]: by last real position */
    double *scale;      /* [J] */
    double *mass;       /* [I + 1] */
    int64_t *entry;     /* [J][I + 1]: index of t(f_j | e_i) in the table, -1 if absent */
} pair_work;

static int jump_index(const wa_hmm *h, int d) {
    d = d < -h->max_jump ? -h->max_jump : (d > h->max_jump ? h->max_jump : d);
    return d + h->max_jump;
}

/* in doubles; the int64 table indices take the last J (I + 1) slots */
static size_t work_doubles(int I, int J) {
    return (size_t)J * (I + 1) * 5 + (size_t)(I + 1) * I + J + (I + 1);
}

static pair_work carve(double *base, int I, int J) {
    pair_work w;
    size_t grid = (size_t)J * (I + 1);
    w.emit = base;
    w.alpha_real = w.emit + grid;
    w.alpha_null = w.alpha_real + grid;
    w.beta = w.alpha_null + grid;
    w.trans = w.beta + grid;
    w.scale = w.trans + (size_t)(I + 1) * I;
    w.mass = w.scale + J;
    w.entry = (int64_t *)(w.mass + I + 1);
    return w;
}

static void fill_model(pair_work *w, const wa_table *t, const wa_hmm *h, const int32_t *e,
                       const int32_t *f, int I, int J) {
    for (int j = 0; j < J; j++) {
        double *row = w->emit + (size_t)j * (I + 1);
        int64_t *entry = w->entry + (size_t)j * (I + 1);
        for (int i = 0; i <= I; i++) {
            entry[i] = wa_table_find(t, i == 0 ? 0 : e[i - 1], f[j]);
            row[i] = entry[i] >= 0 ? t->prob[entry[i]] : 0.0;
        }
    }
    for (int p = 0; p <= I; p++) {
        double z = 0.0;
        for (int i = 1; i <= I; i++) z += h->jump[jump_index(h, i - p)];
        for (int i = 1; i <= I; i++)
            w->trans[(size_t)p * I + i - 1] = (1.0 - h->p0) * h->jump[jump_index(h, i - p)] / z;
    }
}

/* Scaled forward-backward; returns log p(f | e). */
static double forward_backward(pair_work *w, const wa_hmm *h, int I, int J) {
    const size_t width = I + 1;
    double loglik = 0.0;
    for (int p = 0; p <= I; p++) w->mass[p] = p == 0 ? 1.0 : 0.0;
    for (int j = 0; j < J; j++) {
        const double *emit = w->emit + j * width;
        double *ar = w->alpha_real + j * width, *an = w->alpha_null + j * width;
        double s = 0.0;
        ar[0] = 0.0;
        for (int i = 1; i <= I; i++) {
            double into = 0.0;
            for (int p = 0; p <= I; p++) into += w->mass[p] * w->trans[(size_t)p * I + i - 1];
            ar[i] = into * emit[i];
            s += ar[i];
        }
        for (int p = 0; p <= I; p++) {
            an[p] = w->mass[p] * h->p0 * emit[0];
            s += an[p];
        }
        w->scale[j] = s;
        loglik += log(s);
        for (int p = 0; p <= I; p++) {
            ar[p] /= s;
            an[p] /= s;
            w->mass[p] = ar[p] + an[p];
        }
    }
    double *last = w->beta + (size_t)(J - 1) * width;
    for (int p = 0; p <= I; p++) last[p] = 1.0;
    for (int j = J - 1; j > 0; j--) {
        const double *emit = w->emit + j * width, *b = w->beta + j * width;
        double *prev = w->beta + (j - 1) * width;
        for (int p = 0; p <= I; p++) {
            double sum = h->p0 * emit[0] * b[p];
            for (int i = 1; i <= I; i++) sum += w->trans[(size_t)p * I + i - 1] * emit[i] * b[i];
            prev[p] = sum / w->scale[j];
        }
    }
    return loglik;
}

/* Adds one pair's expected counts: translations into counts, jumps into jumps. */
static void add_counts(double *counts, double *jumps, pair_work *w, const wa_hmm *h, int I,
                       int J) {
    const size_t width = I + 1;
    for (int j = 0; j < J; j++) {
        const double *ar = w->alpha_real + j * width, *an = w->alpha_null + j * width;
        const double *b = w->beta + j * width, *emit = w->emit + j * width;
        double null_post = 0.0;
        for (int p = 0; p <= I; p++) null_post += an[p] * b[p];
        const int64_t *entry = w->entry + j * width;
        counts[entry[0]] += null_post;
        for (int i = 1; i <= I; i++) counts[entry[i]] += ar[i] * b[i];
        /* xi(p -> i) = mass_{j-1}(p) trans(p, i) emit_j(i) beta_j(i) / scale_j;
         * the factor of i is the same for every p (kept in mass, free by now) */
        double *into = w->mass;
        for (int i = 1; i <= I; i++) into[i] = emit[i] * b[i] / w->scale[j];
        for (int p = 0; p <= I; p++) {
            double from = j == 0 ? (p == 0) : w->alpha_real[(j - 1) * width + p] * (p > 0) +
                                              w->alpha_null[(j - 1) * width + p];
            if (from == 0.0) continue;
            const double *trans = w->trans + (size_t)p * I - 1;
            for (int i = 1; i <= I; i++) jumps[jump_index(h, i - p)] += from * trans[i] * into[i];
        }
    }
}

static void longest(const wa_corpus *c, int *I_max, int *J_max) {
    *I_max = *J_max = 0;
    for (long k = 0; k < c->n_pairs; k++) {
        int I = (int)(c->src_off[k + 1] - c->src_off[k]), J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
        *I_max = I > *I_max ? I : *I_max;
        *J_max = J > *J_max ? J : *J_max;
    }
}

double wa_hmm_em_iteration(wa_table *t, wa_hmm *h, const wa_corpus *c, double *counts,
                           int n_threads) {
    const int64_t n = t->n_entries;
    const int n_jumps = 2 * h->max_jump + 1;
    int I_max, J_max;
    longest(c, &I_max, &J_max);
    size_t per_work = work_doubles(I_max, J_max > 0 ? J_max : 1);
    double *scratch = malloc(sizeof(double) * (per_work + n_jumps + 1) * n_threads);
    memset(counts, 0, sizeof(double) * n * n_threads);
    memset(scratch, 0, sizeof(double) * (per_work + n_jumps + 1) * n_threads);
#pragma omp parallel num_threads(n_threads)
    {
        int tid = omp_get_thread_num();
        double *mine = counts + (size_t)tid * n;
        double *base = scratch + (size_t)tid * (per_work + n_jumps + 1);
        double *jumps = base + per_work, *loglik = jumps + n_jumps;
#pragma omp for schedule(static)
        for (long k = 0; k < c->n_pairs; k++) {
            const int32_t *e = c->src + c->src_off[k], *f = c->tgt + c->tgt_off[k];
            int I = (int)(c->src_off[k + 1] - c->src_off[k]), J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
            if (J == 0) continue;
            if (I == 0) { /* only NULL can explain the words */
                for (int j = 0; j < J; j++) {
                    int64_t idx = wa_table_find(t, 0, f[j]);
                    *loglik += log(t->prob[idx]);
                    mine[idx] += 1.0;
                }
                continue;
            }
            pair_work w = carve(base, I, J);
            fill_model(&w, t, h, e, f, I, J);
            *loglik += forward_backward(&w, h, I, J);
            add_counts(mine, jumps, &w, h, I, J);
        }
    }
    double loglik = 0.0, *jump_counts = calloc(n_jumps, sizeof(double));
    for (int th = 0; th < n_threads; th++) {
        double *base = scratch + (size_t)th * (per_work + n_jumps + 1);
        for (int d = 0; d < n_jumps; d++) jump_counts[d] += base[per_work + d];
        loglik += base[per_work + n_jumps];
        if (th > 0)
            for (int64_t x = 0; x < n; x++) counts[x] += counts[(size_t)th * n + x];
    }
    wa_table_update(t, counts, h->alpha);
    double jump_total = 0.0;
    for (int d = 0; d < n_jumps; d++) jump_total += jump_counts[d];
    if (jump_total > 0)
        for (int d = 0; d < n_jumps; d++) h->jump[d] = jump_counts[d] / jump_total;
    free(jump_counts);
    free(scratch);
    return loglik;
}

void wa_hmm_posteriors(double *out, const wa_table *t, const wa_hmm *h, const wa_corpus *c,
                       long k) {
    const int32_t *e = c->src + c->src_off[k], *f = c->tgt + c->tgt_off[k];
    int I = (int)(c->src_off[k + 1] - c->src_off[k]), J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
    if (J == 0) return;
    if (I == 0) {
        for (int j = 0; j < J; j++) out[j] = 1.0;
        return;
    }
    double *base = malloc(sizeof(double) * work_doubles(I, J));
    pair_work w = carve(base, I, J);
    fill_model(&w, t, h, e, f, I, J);
    forward_backward(&w, h, I, J);
    for (int j = 0; j < J; j++) {
        const double *ar = w.alpha_real + (size_t)j * (I + 1), *an = w.alpha_null + (size_t)j * (I + 1);
        const double *b = w.beta + (size_t)j * (I + 1);
        double *row = out + (size_t)j * (I + 1);
        row[0] = 0.0;
        for (int p = 0; p <= I; p++) row[0] += an[p] * b[p];
        for (int i = 1; i <= I; i++) row[i] = ar[i] * b[i];
    }
    free(base);
}

void wa_hmm_viterbi(int *best, const wa_table *t, const wa_hmm *h, const wa_corpus *c, long k) {
    const int32_t *e = c->src + c->src_off[k], *f = c->tgt + c->tgt_off[k];
    int I = (int)(c->src_off[k + 1] - c->src_off[k]), J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
    if (J == 0) return;
    if (I == 0) {
        memset(best, 0, sizeof(int) * J);
        return;
    }
    const size_t width = I + 1;
    double *base = malloc(sizeof(double) * work_doubles(I, J));
    pair_work w = carve(base, I, J);
    fill_model(&w, t, h, e, f, I, J);
    /* log-scores: real states in alpha_real, NULL-after-p in alpha_null; the
     * back-pointer of a state is its predecessor's last position p, signed:
     * p + 1 for a real predecessor, -(p + 1) for a NULL one */
    int *back = malloc(sizeof(int) * J * width * 2);
    double *m = w.mass;
    int *m_from = calloc(width, sizeof(int));
    for (int p = 0; p <= I; p++) {
        m[p] = p == 0 ? 0.0 : -INFINITY;
        m_from[p] = -1;
    }
    for (int j = 0; j < J; j++) {
        const double *emit = w.emit + j * width;
        double *dr = w.alpha_real + j * width, *dn = w.alpha_null + j * width;
        dr[0] = -INFINITY;
        for (int i = 1; i <= I; i++) {
            double top = -INFINITY;
            int arg = 0;
            for (int p = 0; p <= I; p++) {
                double v = m[p] + log(w.trans[(size_t)p * I + i - 1]);
                if (v > top) top = v, arg = p;
            }
            dr[i] = top + log(emit[i]);
            back[(j * width + i) * 2] = m_from[arg];
        }
        for (int p = 0; p <= I; p++) {
            dn[p] = m[p] + log(h->p0 * emit[0]);
            back[(j * width + p) * 2 + 1] = m_from[p];
        }
        for (int p = 0; p <= I; p++) {
            int real_better = p > 0 && dr[p] >= dn[p];
            m[p] = real_better ? dr[p] : dn[p];
            m_from[p] = real_better ? p + 1 : -(p + 1);
        }
    }
    int state = m_from[0];
    double top = m[0];
    for (int p = 1; p <= I; p++)
        if (m[p] > top) top = m[p], state = m_from[p];
    for (int j = J - 1; j >= 0; j--) {
        int real = state > 0, p = real ? state - 1 : -state - 1;
        best[j] = real ? p : 0;
        state = back[(j * width + p) * 2 + (real ? 0 : 1)];
    }
    free(m_from);
    free(back);
    free(base);
}
