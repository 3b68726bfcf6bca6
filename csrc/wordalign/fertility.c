#include "wordalign/fertility.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64 (Steele, Lea & Flood 2014): the generator of the random streams. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The stream of pair k in sweep s: splitmix64 started from a hash of both. */
static uint64_t stream_of(uint64_t seed, long k, int sweep) {
    uint64_t state = seed ^ (uint64_t)k;
    state = splitmix64(&state) ^ (uint64_t)sweep;
    return splitmix64(&state);
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform(uint64_t *state) {
    return (double)(splitmix64(state) >> 11) * 0x1.0p-53;
}

/* c(clamp(d)) of the HMM's jump weights. */
static double jump_weight(const wa_hmm *h, int d) {
    d = d < -h->max_jump ? -h->max_jump : (d > h->max_jump ? h->max_jump : d);
    return h->jump[d + h->max_jump];
}

/* The HMM's transitions for a source sentence of I words: trans [I + 1][I + 1],
 * T(p, 0) = p0, T(p, i) = (1 - p0) c(i - p) / Z(p), Z(p) = sum_i c(i - p). */
static void transitions(double *trans, const wa_hmm *h, int I) {
    for (int p = 0; p <= I; p++) {
        double z = 0.0;
        for (int i = 1; i <= I; i++) z += jump_weight(h, i - p);
        double *row = trans + (size_t)p * (I + 1);
        row[0] = h->p0;
        for (int i = 1; i <= I; i++) row[i] = (1.0 - h->p0) * jump_weight(h, i - p) / z;
    }
}

/* n(phi + 1 | e) / n(phi | e) for phi = 0..F-1 into ratio[e * F + phi], from
 * the counts N [src_vocab][F + 1]; the normalisers N(e) + prior cancel. */
static void fertility_ratios(double *ratio, const int64_t *N, int src_vocab, int F, double prior) {
    double g[F + 1], total = 0.0;
    for (int phi = 0; phi <= F; phi++) g[phi] = 1.0; /* add-one: no class has zero mass */
    for (int e = 0; e < src_vocab; e++)
        for (int phi = 0; phi <= F; phi++) g[phi] += (double)N[(size_t)e * (F + 1) + phi];
    for (int phi = 0; phi <= F; phi++) total += g[phi];
    for (int phi = 0; phi <= F; phi++) g[phi] = prior * g[phi] / total;
    for (int e = 0; e < src_vocab; e++) {
        const int64_t *n = N + (size_t)e * (F + 1);
        for (int phi = 0; phi < F; phi++)
            ratio[(size_t)e * F + phi] =
                ((double)n[phi + 1] + g[phi + 1]) / ((double)n[phi] + g[phi]);
    }
}

/* Adds the fertility classes of pair k's alignment into N. */
static void count_fertilities(int64_t *N, int32_t *phi, const int32_t *a, const int32_t *e,
                              int I, int J, int F) {
    memset(phi, 0, sizeof(int32_t) * (I + 1));
    for (int j = 0; j < J; j++) phi[a[j]]++;
    for (int i = 1; i <= I; i++) N[(size_t)e[i - 1] * (F + 1) + (phi[i] < F ? phi[i] : F)]++;
}

/* One Gibbs sweep over pair k's links, j = 0..J-1 in order. Link a_j = v
 * is drawn with probability proportional to
 *   T(p, v) emit_j(v) T(q(v), a_k) [n(phi_v + 1 | e_v) / n(phi_v | e_v)],
 * p the last real position before j, k the next target word linked to a real
 * position, q(v) = v (or p when v is NULL): the factors of the fertility HMM
 * that depend on a_j (NULL words between j and k contribute p0 whatever v
 * is). trans: the transitions of this I (see transitions); emit [J][I + 1]:
 * t(f_j | e_v), v = 0 NULL; phi: scratch of I + 1. */
static void sweep_pair(int32_t *a, double *cum, int32_t *phi, const double *trans,
                       const float *emit, const int32_t *e, int I, int J, const double *ratio,
                       int F, uint64_t *rng) {
    const int width = I + 1;
    memset(phi, 0, sizeof(int32_t) * width);
    for (int j = 0; j < J; j++) phi[a[j]]++;
    int p = 0; /* the last real position before j */
    for (int j = 0; j < J; j++) {
        phi[a[j]]--;
        int next = 0;
        for (int x = j + 1; x < J && !next; x++) next = a[x];
        const float *row = emit + (size_t)j * width;
        const double *from = trans + (size_t)p * width;
        double total = 0.0;
        for (int v = 0; v <= I; v++) {
            double s = from[v] * row[v];
            if (next > 0) s *= trans[(size_t)(v > 0 ? v : p) * width + next];
            if (v > 0 && phi[v] < F) s *= ratio[(size_t)e[v - 1] * F + phi[v]];
            total += s;
            cum[v] = total;
        }
        double target = uniform(rng) * total;
        int v = 0;
        while (v < I && cum[v] <= target) v++;
        a[j] = v;
        phi[v]++;
        p = v > 0 ? v : p;
    }
}

/* emit [J][I + 1] = t(f_j | e_i) of a pair's links, i = 0 NULL; a target
 * word unseen in training (no entry, not even NULL's) can only come from
 * NULL: emission 1 there. */
static void emissions(float *emit, const int32_t *entry, const wa_table *t, int I, int J) {
    for (size_t x = 0; x < (size_t)J * (I + 1); x++)
        emit[x] = entry[x] >= 0 ? (float)t->prob[entry[x]] : 0.0f;
    for (int j = 0; j < J; j++)
        if (entry[(size_t)j * (I + 1)] < 0) emit[(size_t)j * (I + 1)] = 1.0f;
}

/* Transition tables are kept for every source length up to this (about 6 MB);
 * a longer sentence gets its own, computed per sweep. */
#define KEPT_LENGTHS 128

/* Where length I's table starts among those of lengths 1, 2, ...:
 * sum_{I' < I} (I' + 1)^2 = I (I + 1) (2 I + 1) / 6 - 1. */
static size_t table_at(int I) { return (size_t)I * (I + 1) * (2 * I + 1) / 6 - 1; }

int wa_fertility_sample(double *post, int32_t *align, const wa_table *t, const wa_hmm *h,
                        const wa_corpus *c, const wa_links *links, const wa_fertility *fs,
                        int n_threads) {
    n_threads = wa_team(n_threads, c);
    const int F = fs->max_fertility, V = c->src_vocab;
    const size_t n_counts = (size_t)V * (F + 1);
    const int64_t n_links = links->off[c->n_pairs];
    int I_max, J_max;
    wa_longest(&I_max, &J_max, c);
    /* per thread: cum [I_max + 1], trans [(I_max + 1)^2] (long sentences),
     * emit [J_max (I_max + 1)] (no cached links), then int32 phi [I_max + 1]
     * and links [J_max (I_max + 1)] */
    const size_t width = (size_t)I_max + 1, grid = (size_t)J_max * width;
    const size_t per_work = width + width * width + grid / 2 + 1 + (width + grid + 1) / 2 + 1;
    const int kept = I_max < KEPT_LENGTHS ? I_max : KEPT_LENGTHS;
    double *scratch = malloc(sizeof(double) * per_work * n_threads);
    int64_t *N = calloc(n_counts * n_threads, sizeof(int64_t));
    double *ratio = malloc(sizeof(double) * (size_t)V * F);
    double *by_length = malloc(sizeof(double) * (table_at(kept + 1) + 1)); /* lengths 1..kept */
    /* the HMM's t is fixed here: with the corpus's links cached, each link's
     * emission is read from the table once, not once per sweep */
    float *emission = links->index ? malloc(sizeof(float) * (n_links + 1)) : NULL;
    int status = -1;
    if (!scratch || !N || !ratio || !by_length || (links->index && !emission)) goto done;
    for (int I = 1; I <= kept; I++) transitions(by_length + table_at(I), h, I);
    if (emission) {
#pragma omp parallel for schedule(static) num_threads(n_threads)
        for (long k = 0; k < c->n_pairs; k++)
            emissions(emission + links->off[k], links->index + links->off[k], t,
                      (int)(c->src_off[k + 1] - c->src_off[k]),
                      (int)(c->tgt_off[k + 1] - c->tgt_off[k]));
    }
    for (long k = 0; k < c->n_pairs; k++)
        count_fertilities(N, (int32_t *)scratch, align + c->tgt_off[k], c->src + c->src_off[k],
                          (int)(c->src_off[k + 1] - c->src_off[k]),
                          (int)(c->tgt_off[k + 1] - c->tgt_off[k]), F);
    memset(post, 0, sizeof(double) * n_links);
    for (int sweep = 0; sweep < fs->sweeps; sweep++) {
        fertility_ratios(ratio, N, V, F, fs->prior);
        memset(N, 0, sizeof(int64_t) * n_counts * n_threads);
#pragma omp parallel num_threads(n_threads)
        {
            int tid = omp_get_thread_num();
            double *cum = scratch + (size_t)tid * per_work, *trans = cum + width;
            float *emit_scratch = (float *)(trans + width * width);
            int32_t *phi = (int32_t *)(trans + width * width + grid / 2 + 1);
            int32_t *entry = phi + width;
            int64_t *mine = N + (size_t)tid * n_counts;
#pragma omp for schedule(dynamic, 256)
            for (long k = 0; k < c->n_pairs; k++) {
                const int I = (int)(c->src_off[k + 1] - c->src_off[k]);
                const int J = (int)(c->tgt_off[k + 1] - c->tgt_off[k]);
                const int32_t *e = c->src + c->src_off[k];
                int32_t *a = align + c->tgt_off[k];
                if (I > 0 && J > 0) {
                    const float *emit = emission ? emission + links->off[k] : emit_scratch;
                    if (!emission) {
                        wa_pair_links(entry, t, c, k);
                        emissions(emit_scratch, entry, t, I, J);
                    }
                    const double *T = I <= kept ? by_length + table_at(I) : trans;
                    if (I > kept) transitions(trans, h, I);
                    uint64_t rng = stream_of(fs->seed, k, sweep);
                    sweep_pair(a, cum, phi, T, emit, e, I, J, ratio, F, &rng);
                }
                count_fertilities(mine, phi, a, e, I, J, F);
                double *counted = post + links->off[k];
                if (sweep >= fs->burn_in)
                    for (int j = 0; j < J; j++) counted[(size_t)j * (I + 1) + a[j]] += 1.0;
            }
        }
        for (int th = 1; th < n_threads; th++)
            for (size_t x = 0; x < n_counts; x++) N[x] += N[(size_t)th * n_counts + x];
    }
    if (fs->sweeps > fs->burn_in)
        for (int64_t x = 0; x < n_links; x++) post[x] /= fs->sweeps - fs->burn_in;
    status = 0;
done:
    free(scratch);
    free(N);
    free(ratio);
    free(by_length);
    free(emission);
    return status;
}
