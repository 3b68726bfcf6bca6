#include "wordalign/hmm.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/simd.h"
#include "core/status.h"

/* the per-pair helpers, inlined into each SIMD clone of pair_posteriors */
#define HELPER static inline __attribute__((always_inline))

/* The jump weights of one model: c(d) at ahead[d] and c(-d) at back[d] for d
 * in [-D, D] (the backward pass sums over the next position, so it needs the
 * kernel mirrored). */
typedef struct {
    double store[2][2 * WA_MAX_JUMP + 1];
    const double *ahead, *back;
    int D;
    double p0;
} jump_kernel;

/* One pair's working arrays, carved from a thread's scratch. */
typedef struct {
    int I, J;
    double *emit;        /* [J][I + 1]: t(f_j | e_i), column 0 = t(f_j | NULL) */
    double *real;        /* [J][I + 1]: scaled forward of real state i (column 0 = 0) */
    double *null;        /* [J][I + 1]: scaled forward of NULL after last position p */
    double *beta;        /* [J][I + 1]: scaled backward, by last real position p */
    double *post;        /* [J][I + 1]: link posteriors, column 0 = NULL */
    double *scale;       /* [J] */
    double *weight;      /* [I + 1]: (1 - p0) / Z(p), Z(p) = sum_{i=1..I} c(i - p) */
    double *u, *v;       /* [I + 1] */
    double *head, *tail; /* [I + 2]: Viterbi's prefix and suffix maxima */
    int32_t *entry;      /* [J][I + 1]: link indices, when the corpus has none cached */
    int32_t *back;       /* [J][I + 1][2]: Viterbi back-pointers */
    int32_t *from, *head_at, *tail_at; /* [I + 2]: Viterbi's argmaxes */
} pair_work;

/* Doubles of scratch one thread needs for pairs up to I_max x J_max. */
static size_t scratch_doubles(int I_max, int J_max) {
    size_t grid = (size_t)J_max * (I_max + 1), line = (size_t)I_max + 2;
    size_t ints = grid * 3 + line * 3;
    return grid * 5 + J_max + line * 5 + (ints + 1) / 2;
}

/* Doubles of scratch one thread needs for the longest pair of c. */
static size_t scratch_for(const wa_corpus *c) {
    int I_max, J_max;
    wa_longest(&I_max, &J_max, c);
    return scratch_doubles(I_max, J_max);
}

static pair_work carve(double *base, int I, int J) {
    pair_work w;
    size_t grid = (size_t)J * (I + 1);
    w.I = I;
    w.J = J;
    w.emit = base;
    w.real = w.emit + grid;
    w.null = w.real + grid;
    w.beta = w.null + grid;
    w.post = w.beta + grid;
    w.scale = w.post + grid;
    w.weight = w.scale + J;
    w.u = w.weight + I + 1;
    w.v = w.u + I + 1;
    w.head = w.v + I + 1;
    w.tail = w.head + I + 2;
    w.entry = (int32_t *)(w.tail + I + 2);
    w.back = w.entry + grid;
    w.from = w.back + grid * 2;
    w.head_at = w.from + I + 2;
    w.tail_at = w.head_at + I + 2;
    return w;
}

static void kernel_of(jump_kernel *k, const wa_hmm *h) {
    k->D = h->max_jump;
    k->p0 = h->p0;
    for (int d = -k->D; d <= k->D; d++) {
        k->store[0][d + k->D] = h->jump[d + k->D];
        k->store[1][d + k->D] = h->jump[-d + k->D];
    }
    k->ahead = k->store[0] + k->D;
    k->back = k->store[1] + k->D;
}

/* out[x] = sum_{y=0..I} in[y] k(x - y) for x = first..I, with k(d) =
 * k[clamp(d, -D, D)]: the band |x - y| < D term by term, the two tails,
 * where k is constant, from running sums of in (y <= x - D and y >= x + D).
 * O(I D) instead of O(I^2). (Summing each band in a register measured a
 * little faster than scattering each in[y] over its band.) */
HELPER void clamped_convolution(double *restrict out, const double *restrict in,
                                const double *restrict k, int D, int I, int first) {
    for (int x = first; x <= I; x++) out[x] = 0.0;
    double run = 0.0;
    for (int x = D; x <= I; x++) {
        run += in[x - D];
        if (x >= first) out[x] += k[D] * run;
    }
    run = 0.0;
    for (int x = I - D; x >= first; x--) {
        run += in[x + D];
        out[x] += k[-D] * run;
    }
    for (int x = first; x <= I; x++) {
        const int lo = x - D + 1 > 0 ? x - D + 1 : 0, hi = x + D - 1 < I ? x + D - 1 : I;
        double band = 0.0;
        for (int y = lo; y <= hi; y++) band += in[y] * k[x - y];
        out[x] += band;
    }
}

/* Emissions from the table and the per-position factor (1 - p0) / Z(p). */
HELPER void fill_model(pair_work *w, const jump_kernel *k, const wa_table *t,
                       const int32_t *entry) {
    const int I = w->I;
    const size_t grid = (size_t)w->J * (I + 1);
    for (size_t x = 0; x < grid; x++) w->emit[x] = entry[x] >= 0 ? t->prob[entry[x]] : 0.0;
    /* a target word unseen in training (no entry, not even NULL's) can only
     * come from NULL: emission 1 there, the same factor on every path */
    for (int j = 0; j < w->J; j++)
        if (entry[(size_t)j * (I + 1)] < 0) w->emit[(size_t)j * (I + 1)] = 1.0;
    /* Z(p) = sum_{i=1..I} c(i - p) = sum_i 1[i >= 1] back(p - i) */
    for (int i = 0; i <= I; i++) w->u[i] = i > 0;
    clamped_convolution(w->weight, w->u, k->back, k->D, I, 0);
    /* Z(p) = 0 (or so small that the factor overflows): EM has driven the
     * weight of every jump from p to 0, so no real position follows p. Its
     * factor is 0, not (1 - p0) / 0 = inf, whose product with a forward mass
     * of 0 was NaN and spoilt the whole pair. */
    for (int p = 0; p <= I; p++) {
        const double factor = (1.0 - k->p0) / w->weight[p];
        w->weight[p] = isfinite(factor) ? factor : 0.0;
    }
}

/* mass(p) = forward mass of the states whose last real position is p, before
 * target word j (position 0 before the first word), into out. */
HELPER void mass_before(double *out, const pair_work *w, int j) {
    const size_t width = w->I + 1;
    for (int p = 0; p <= w->I; p++)
        out[p] = j == 0 ? (p == 0) : w->real[(j - 1) * width + p] + w->null[(j - 1) * width + p];
}

/* Scaled forward-backward (Rabiner 1989, section V.A, with the transition
 * sums done by clamped_convolution); returns log p(f | e). */
HELPER double forward_backward(pair_work *w, const jump_kernel *k) {
    const int I = w->I, J = w->J;
    const size_t width = I + 1;
    double mantissa = 1.0; /* log p(f | e) = log prod_j scale_j, kept as mantissa 2^exponent */
    int exponent = 0;
    for (int j = 0; j < J; j++) {
        const double *emit = w->emit + j * width;
        double *real = w->real + j * width, *null = w->null + j * width;
        /* real_j(i) = emit_j(i) sum_p mass(p) (1 - p0) c(i - p) / Z(p) */
        mass_before(w->v, w, j);
        for (int p = 0; p <= I; p++) w->u[p] = w->v[p] * w->weight[p];
        clamped_convolution(real, w->u, k->ahead, k->D, I, 1);
        real[0] = 0.0;
        double s = 0.0;
        for (int i = 1; i <= I; i++) {
            real[i] *= emit[i];
            s += real[i];
        }
        const double to_null = k->p0 * emit[0];
        for (int p = 0; p <= I; p++) {
            null[p] = w->v[p] * to_null;
            s += null[p];
        }
        w->scale[j] = s;
        int e;
        mantissa = frexp(mantissa * s, &e);
        exponent += e;
        const double inv = 1.0 / s;
        for (int p = 0; p <= I; p++) {
            real[p] *= inv;
            null[p] *= inv;
        }
    }
    double *last = w->beta + (size_t)(J - 1) * width;
    for (int p = 0; p <= I; p++) last[p] = 1.0;
    for (int j = J - 1; j > 0; j--) {
        const double *emit = w->emit + j * width, *b = w->beta + j * width;
        double *prev = w->beta + (j - 1) * width;
        /* beta_{j-1}(p) = (p0 emit_j(0) beta_j(p) + sum_i (1 - p0) c(i - p) / Z(p)
         * emit_j(i) beta_j(i)) / scale_j */
        w->u[0] = 0.0;
        for (int i = 1; i <= I; i++) w->u[i] = emit[i] * b[i];
        clamped_convolution(w->v, w->u, k->back, k->D, I, 0);
        const double inv = 1.0 / w->scale[j];
        for (int p = 0; p <= I; p++)
            prev[p] = (k->p0 * emit[0] * b[p] + w->weight[p] * w->v[p]) * inv;
    }
    return log(mantissa) + exponent * M_LN2;
}

/* post[j][i] = p(a_j = i | f, e), column 0 = NULL (summed over its last position). */
HELPER void link_posteriors(pair_work *w) {
    const size_t width = w->I + 1;
    for (int j = 0; j < w->J; j++) {
        const double *real = w->real + j * width, *null = w->null + j * width;
        const double *b = w->beta + j * width;
        double *row = w->post + j * width;
        row[0] = 0.0;
        for (int p = 0; p <= w->I; p++) row[0] += null[p] * b[p];
        for (int i = 1; i <= w->I; i++) row[i] = real[i] * b[i];
    }
}

/* Adds the expected jump counts of one pair, divided by their weight c(d):
 * xi_j(p -> i) = mass_{j-1}(p) (1 - p0) c(i - p) / Z(p) emit_j(i) beta_j(i) /
 * scale_j summed over j, p and i with clamp(i - p) = d, is c(d) times
 * raw[d + D]. The band d in (-D, D) one width at a time (a sum kept in a
 * register), the two clipped classes from running sums: O(J I D). */
HELPER void add_jump_counts(double *raw, pair_work *w, const jump_kernel *k) {
    const int I = w->I, D = k->D;
    const size_t width = I + 1;
    double *from = w->u, *into = w->v;
    for (int j = 0; j < w->J; j++) {
        const double *emit = w->emit + j * width, *b = w->beta + j * width;
        mass_before(from, w, j);
        for (int p = 0; p <= I; p++) from[p] *= w->weight[p];
        const double inv = 1.0 / w->scale[j];
        into[0] = 0.0;
        for (int i = 1; i <= I; i++) into[i] = emit[i] * b[i] * inv;
        for (int d = 1 - D; d <= D - 1; d++) { /* p and p + d in [0, I], p + d >= 1 */
            const int lo = d < 1 ? 1 - d : 0, hi = d > 0 ? I - d : I;
            double band = 0.0;
            for (int p = lo; p <= hi; p++) band += from[p] * into[p + d];
            raw[d + D] += band;
        }
        /* the clipped classes: d = D from p <= i - D, d = -D from p >= i + D */
        double run = 0.0;
        for (int i = D; i <= I; i++) {
            run += from[i - D];
            raw[2 * D] += into[i] * run;
        }
        run = 0.0;
        for (int i = I - D; i >= 1; i--) {
            run += from[i + D];
            raw[0] += into[i] * run;
        }
    }
}

/* Forward-backward of pair k and its link posteriors (w->post); adds its
 * jump counts into raw. A pair without source words (I = 0) puts every
 * target word on NULL. Returns log p(f | e). */
CALIGN_SIMD_CLONES static double pair_posteriors(pair_work *w, double *raw, const jump_kernel *k,
                              const wa_table *t, const int32_t *entry) {
    if (w->J == 0) return 0.0;
    if (w->I == 0) {
        double loglik = 0.0;
        for (int j = 0; j < w->J; j++) {
            w->post[j] = 1.0;
            loglik += log(t->prob[entry[j]]);
        }
        return loglik;
    }
    fill_model(w, k, t, entry);
    double loglik = forward_backward(w, k);
    link_posteriors(w);
    if (raw) add_jump_counts(raw, w, k);
    return loglik;
}

static pair_work pair_of(double *base, const wa_corpus *c, long k) {
    return carve(base, (int)(c->src_off[k + 1] - c->src_off[k]),
                 (int)(c->tgt_off[k + 1] - c->tgt_off[k]));
}

/* Thread th's part of a reduction area laid out as n_threads blocks of
 * `stride` doubles; block 0 receives the sum (in thread order: the same
 * result at the same thread count). */
static void reduce_blocks(double *blocks, size_t stride, int64_t n, int n_threads) {
    for (int th = 1; th < n_threads; th++)
        for (int64_t x = 0; x < n; x++) blocks[x] += blocks[(size_t)th * stride + x];
}

/* The M-step of the jumps: c(d) = expected count of width d / total. */
static void update_jumps(wa_hmm *h, const double *raw) {
    const int n = 2 * h->max_jump + 1;
    double counts[2 * WA_MAX_JUMP + 1], total = 0.0;
    for (int d = 0; d < n; d++) {
        counts[d] = h->jump[d] * raw[d];
        total += counts[d];
    }
    if (total > 0)
        for (int d = 0; d < n; d++) h->jump[d] = counts[d] / total;
}

int wa_hmm_em_iteration(wa_table *t, wa_hmm *h, const wa_corpus *c, const wa_links *links,
                        double *counts, const wa_reducer *sum, int n_threads,
                        double *loglik_out) {
    n_threads = wa_team(n_threads, c);
    const int64_t n = t->n_entries;
    const int n_jumps = 2 * h->max_jump + 1;
    const size_t per_work = scratch_for(c);
    const size_t stride = per_work + n_jumps + 1; /* work, raw jump counts, loglik */
    double *scratch = calloc(stride * n_threads, sizeof(double));
    if (!scratch) return CALIGN_ENOMEM;
    jump_kernel kernel;
    kernel_of(&kernel, h);
    memset(counts, 0, sizeof(double) * n * n_threads);
#pragma omp parallel num_threads(n_threads)
    {
        int tid = omp_get_thread_num();
        double *mine = counts + (size_t)tid * n;
        double *base = scratch + (size_t)tid * stride;
        double *raw = base + per_work, *loglik = raw + n_jumps;
#pragma omp for schedule(static)
        for (long k = 0; k < c->n_pairs; k++) {
            pair_work w = pair_of(base, c, k);
            const int32_t *entry = wa_links_of_pair(w.entry, links, t, c, k);
            *loglik += pair_posteriors(&w, raw, &kernel, t, entry);
            for (size_t x = 0; x < (size_t)w.J * (w.I + 1); x++) mine[entry[x]] += w.post[x];
        }
    }
    reduce_blocks(scratch + per_work, stride, n_jumps + 1, n_threads);
    reduce_blocks(counts, n, n, n_threads);
    /* the sums over the shards of the corpus: the counts, then the raw jump
     * counts and the log-likelihood after them */
    int status = wa_reduce(sum, counts, n);
    if (status == CALIGN_OK) status = wa_reduce(sum, scratch + per_work, n_jumps + 1);
    if (status == CALIGN_OK) {
        *loglik_out = scratch[per_work + n_jumps];
        wa_table_update(t, counts, h->alpha);
        update_jumps(h, scratch + per_work);
    }
    free(scratch);
    return status;
}

int wa_hmm_agreement_iteration(wa_table *t_f, wa_hmm *h_f, const wa_corpus *c_f,
                               const wa_links *links_f, double *counts_f, wa_table *t_r,
                               wa_hmm *h_r, const wa_corpus *c_r, const wa_links *links_r,
                               double *counts_r, const wa_reducer *sum, int n_threads,
                               double *loglik_out) {
    n_threads = wa_team(n_threads, c_f);
    const int64_t n_f = t_f->n_entries, n_r = t_r->n_entries;
    const int jumps_f = 2 * h_f->max_jump + 1, jumps_r = 2 * h_r->max_jump + 1;
    int I_max, J_max;
    wa_longest(&I_max, &J_max, c_f);
    const size_t per_f = scratch_doubles(I_max, J_max);
    const size_t per_r = scratch_doubles(J_max, I_max);
    /* forward work, reverse work, raw jump counts of each, loglik */
    const size_t stride = per_f + per_r + jumps_f + jumps_r + 1;
    double *scratch = calloc(stride * n_threads, sizeof(double));
    if (!scratch) return CALIGN_ENOMEM;
    jump_kernel kernel_f, kernel_r;
    kernel_of(&kernel_f, h_f);
    kernel_of(&kernel_r, h_r);
    memset(counts_f, 0, sizeof(double) * n_f * n_threads);
    memset(counts_r, 0, sizeof(double) * n_r * n_threads);
#pragma omp parallel num_threads(n_threads)
    {
        int tid = omp_get_thread_num();
        double *mine_f = counts_f + (size_t)tid * n_f, *mine_r = counts_r + (size_t)tid * n_r;
        double *base = scratch + (size_t)tid * stride;
        double *raw_f = base + per_f + per_r, *raw_r = raw_f + jumps_f;
        double *loglik = raw_r + jumps_r;
#pragma omp for schedule(static)
        for (long k = 0; k < c_f->n_pairs; k++) {
            pair_work f = pair_of(base, c_f, k), r = pair_of(base + per_f, c_r, k);
            const int I = f.I, J = f.J;
            const int32_t *entry_f = wa_links_of_pair(f.entry, links_f, t_f, c_f, k);
            const int32_t *entry_r = wa_links_of_pair(r.entry, links_r, t_r, c_r, k);
            *loglik += pair_posteriors(&f, raw_f, &kernel_f, t_f, entry_f);
            *loglik += pair_posteriors(&r, raw_r, &kernel_r, t_r, entry_r);
            /* Liang et al. (2006), section 3: q(i, j) = p_f(a_j = i) p_r(b_i = j)
             * counts for both tables; NULL counts as in the Berkeley Aligner's
             * merge: the direction's NULL posterior times the probability that
             * no word of the other side picked this one */
            for (int j = 0; j < J; j++) {
                const double *pf = f.post + (size_t)j * (I + 1);
                double none = 1.0;
                for (int i = 1; i <= I; i++) {
                    double pr = r.post[(size_t)(i - 1) * (J + 1) + j + 1];
                    double q = pf[i] * pr;
                    mine_f[entry_f[(size_t)j * (I + 1) + i]] += q;
                    mine_r[entry_r[(size_t)(i - 1) * (J + 1) + j + 1]] += q;
                    none *= pr < 1.0 ? 1.0 - pr : 0.0;
                }
                mine_f[entry_f[(size_t)j * (I + 1)]] += pf[0] * none;
            }
            for (int i = 1; i <= I; i++) {
                double none = 1.0;
                for (int j = 0; j < J; j++) {
                    double pf = f.post[(size_t)j * (I + 1) + i];
                    none *= pf < 1.0 ? 1.0 - pf : 0.0;
                }
                const size_t row = (size_t)(i - 1) * (J + 1);
                mine_r[entry_r[row]] += r.post[row] * none;
            }
        }
    }
    reduce_blocks(scratch + per_f + per_r, stride, jumps_f + jumps_r + 1, n_threads);
    reduce_blocks(counts_f, n_f, n_f, n_threads);
    reduce_blocks(counts_r, n_r, n_r, n_threads);
    double *raw = scratch + per_f + per_r;
    int status = wa_reduce(sum, counts_f, n_f);
    if (status == CALIGN_OK) status = wa_reduce(sum, counts_r, n_r);
    if (status == CALIGN_OK) status = wa_reduce(sum, raw, jumps_f + jumps_r + 1);
    if (status == CALIGN_OK) {
        *loglik_out = raw[jumps_f + jumps_r];
        wa_table_update(t_f, counts_f, h_f->alpha);
        wa_table_update(t_r, counts_r, h_r->alpha);
        update_jumps(h_f, raw);
        update_jumps(h_r, raw + jumps_f);
    }
    free(scratch);
    return status;
}

/* Viterbi path of one pair into best[0..J-1] (Vogel et al. 1996), max-product
 * in the probability domain with each step rescaled by its largest score.
 * real = the best path ending in real state i, null = ending in NULL after p;
 * a state's back-pointer is its predecessor's last position p, signed: p + 1
 * for a real predecessor, -(p + 1) for a NULL one. The maximum over p of
 * m(p) c(i - p) / Z(p) splits like the sums: the band term by term, the
 * tails from prefix and suffix maxima (the smallest p wins ties). */
CALIGN_SIMD_CLONES static void viterbi_pair(int32_t *best, pair_work *w, const jump_kernel *k) {
    const int I = w->I, J = w->J, D = k->D;
    const size_t width = I + 1;
    double *m = w->u, *score = w->v, *head = w->head, *tail = w->tail;
    int32_t *m_from = w->from, *head_at = w->head_at, *tail_at = w->tail_at;
    for (int p = 0; p <= I; p++) {
        m[p] = p == 0;
        m_from[p] = -1;
    }
    for (int j = 0; j < J; j++) {
        const double *emit = w->emit + j * width;
        double *real = w->real + j * width, *null = w->null + j * width;
        int32_t *back = w->back + j * width * 2;
        for (int p = 0; p <= I; p++) score[p] = m[p] * w->weight[p];
        /* head[q], head_at[q]: max and argmax of score over p < q; tail over p >= q */
        head[0] = -1.0;
        head_at[0] = 0;
        for (int p = 0; p <= I; p++) {
            int better = score[p] > head[p];
            head[p + 1] = better ? score[p] : head[p];
            head_at[p + 1] = better ? p : head_at[p];
        }
        tail[I + 1] = -1.0;
        tail_at[I + 1] = I;
        for (int p = I; p >= 0; p--) {
            int better = score[p] >= tail[p + 1];
            tail[p] = better ? score[p] : tail[p + 1];
            tail_at[p] = better ? p : tail_at[p + 1];
        }
        double top_all = 0.0;
        real[0] = 0.0;
        for (int i = 1; i <= I; i++) {
            int lo = i - D + 1 > 0 ? i - D + 1 : 0, hi = i + D - 1 < I ? i + D - 1 : I;
            double top = -1.0;
            int arg = 0;
            if (lo > 0) top = head[lo] * k->ahead[D], arg = head_at[lo];
            for (int p = lo; p <= hi; p++) {
                double s = score[p] * k->ahead[i - p];
                if (s > top) top = s, arg = p;
            }
            if (hi < I && tail[hi + 1] * k->ahead[-D] > top)
                top = tail[hi + 1] * k->ahead[-D], arg = tail_at[hi + 1];
            real[i] = top * emit[i];
            back[i * 2] = m_from[arg];
            top_all = real[i] > top_all ? real[i] : top_all;
        }
        const double to_null = k->p0 * emit[0];
        for (int p = 0; p <= I; p++) {
            null[p] = m[p] * to_null;
            back[p * 2 + 1] = m_from[p];
            top_all = null[p] > top_all ? null[p] : top_all;
        }
        const double inv = top_all > 0 ? 1.0 / top_all : 1.0;
        for (int p = 0; p <= I; p++) {
            int real_better = p > 0 && real[p] >= null[p];
            m[p] = (real_better ? real[p] : null[p]) * inv;
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
        state = w->back[(j * width + p) * 2 + (real ? 0 : 1)];
    }
}

/* Decodes every pair: link posteriors into post (blocks at links->off) when
 * post is given, else Viterbi links into best (one per target word). */
static int decode_pairs(double *post, int32_t *best, const wa_table *t, const wa_hmm *h,
                        const wa_corpus *c, const wa_links *links, int n_threads) {
    n_threads = wa_team(n_threads, c);
    const size_t per_work = scratch_for(c);
    double *scratch = malloc(sizeof(double) * per_work * n_threads);
    if (!scratch) return CALIGN_ENOMEM;
    jump_kernel kernel;
    kernel_of(&kernel, h);
#pragma omp parallel num_threads(n_threads)
    {
        double *base = scratch + (size_t)omp_get_thread_num() * per_work;
#pragma omp for schedule(dynamic, 256)
        for (long k = 0; k < c->n_pairs; k++) {
            pair_work w = pair_of(base, c, k);
            if (post) {
                const int32_t *entry = wa_links_of_pair(w.entry, links, t, c, k);
                pair_posteriors(&w, NULL, &kernel, t, entry);
                memcpy(post + links->off[k], w.post, sizeof(double) * w.J * (w.I + 1));
                continue;
            }
            int32_t *out = best + c->tgt_off[k];
            if (w.J == 0) continue;
            if (w.I == 0) {
                memset(out, 0, sizeof(int32_t) * w.J);
                continue;
            }
            fill_model(&w, &kernel, t, wa_links_of_pair(w.entry, links, t, c, k));
            viterbi_pair(out, &w, &kernel);
        }
    }
    free(scratch);
    return 0;
}

int wa_hmm_posteriors(double *out, const wa_table *t, const wa_hmm *h, const wa_corpus *c,
                      const wa_links *links, int n_threads) {
    return decode_pairs(out, NULL, t, h, c, links, n_threads);
}

int wa_hmm_viterbi(int32_t *best, const wa_table *t, const wa_hmm *h, const wa_corpus *c,
                   const wa_links *links, int n_threads) {
    return decode_pairs(NULL, best, t, h, c, links, n_threads);
}
