#include "textalign/phrase_hmm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"

static int check_offsets(const int64_t *off, int64_t n_pairs, int64_t total, const char *name,
                         char *err) {
    if (off[0] != 0) return calign_fail(err, CALIGN_EINVAL, "%s must start at 0", name);
    for (int64_t k = 0; k < n_pairs; k++)
        if (off[k + 1] < off[k])
            return calign_fail(err, CALIGN_EINVAL, "%s decrease at pair %lld", name, (long long)k);
    if (off[n_pairs] != total)
        return calign_fail(err, CALIGN_EINVAL, "%s end at %lld but there are %lld words", name,
                           (long long)off[n_pairs], (long long)total);
    return CALIGN_OK;
}

int ta_pairs_check(const ta_pairs *p, int64_t n_sum, int64_t n_doc, int vocab, char *err) {
    int status = check_offsets(p->sum_off, p->n_pairs, n_sum, "summary_offsets", err);
    if (status == CALIGN_OK)
        status = check_offsets(p->doc_off, p->n_pairs, n_doc, "document_offsets", err);
    if (status != CALIGN_OK) return status;
    for (int64_t k = 0; k < p->n_pairs; k++)
        if (p->doc_off[k + 1] == p->doc_off[k])
            return calign_fail(err, CALIGN_EINVAL, "document %lld has no words", (long long)k);
    for (int64_t t = 0; t < n_sum; t++)
        if (p->sum_ids[t] < 0 || p->sum_ids[t] >= vocab)
            return calign_fail(err, CALIGN_EINVAL, "summary_ids[%lld] holds %d, outside [0, %d)",
                               (long long)t, (int)p->sum_ids[t], vocab);
    for (int64_t k = 0; k < p->n_pairs; k++)
        for (int64_t i = p->doc_off[k]; i < p->doc_off[k + 1]; i++) {
            if (p->doc_ids[i] < 0 || p->doc_ids[i] >= vocab)
                return calign_fail(err, CALIGN_EINVAL,
                                   "document_ids[%lld] holds %d, outside [0, %d)", (long long)i,
                                   (int)p->doc_ids[i], vocab);
            if (i > p->doc_off[k] && p->doc_sent[i] < p->doc_sent[i - 1])
                return calign_fail(err, CALIGN_EINVAL, "document_sentences decrease at word %lld",
                                   (long long)i);
        }
    return CALIGN_OK;
}

static int check_distribution(const double *x, int n, const char *name, char *err) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        if (!(x[i] >= 0.0 && isfinite(x[i])))
            return calign_fail(err, CALIGN_EINVAL, "%s[%d] must be a finite number >= 0, got %g",
                               name, i, x[i]);
        sum += x[i];
    }
    return sum > 0.0 && isfinite(sum)
               ? CALIGN_OK
               : calign_fail(err, CALIGN_EINVAL, "%s must have a positive sum", name);
}

int ta_phrase_hmm_check(const ta_phrase_hmm *h, char *err) {
    if (h->max_length < 1 || h->max_length > TA_MAX_PHRASE)
        return calign_fail(err, CALIGN_EINVAL, "max_phrase_length must be in [1, %d], got %d",
                           TA_MAX_PHRASE, h->max_length);
    if (h->max_jump < 0 || h->max_jump > TA_MAX_JUMP)
        return calign_fail(err, CALIGN_EINVAL, "max_jump must be in [0, %d], got %d", TA_MAX_JUMP,
                           h->max_jump);
    if (!(h->p_null > 0.0 && h->p_null < 1.0))
        return calign_fail(err, CALIGN_EINVAL, "p_null must be in (0, 1), got %g", h->p_null);
    if (!(h->identity > 0.0 && h->identity < 1.0))
        return calign_fail(err, CALIGN_EINVAL, "identity must be in (0, 1), got %g", h->identity);
    int status = check_distribution(h->length, h->max_length, "length", err);
    if (status == CALIGN_OK)
        status = check_distribution(h->jump, 2 * h->max_jump + 1, "jump", err);
    if (status == CALIGN_OK) status = check_distribution(h->rewrite, h->vocab, "rewrite", err);
    if (status == CALIGN_OK) status = check_distribution(h->generate, h->vocab, "generate", err);
    return status;
}

/* ---- one pair ------------------------------------------------------------------ */

/* A pair's view and the model's numbers as one pair's passes use them:
 * distributions normalised, jump(clip(a - m)) / Z(m) through jump_of. */
typedef struct {
    const int32_t *s, *d, *sent; /* summary ids [J], document ids and sentences [I] */
    int J, I;
    const ta_phrase_hmm *h;
    double len[TA_MAX_PHRASE], jump[2 * TA_MAX_JUMP + 1], rew_sum, gen_sum;
    double *Z; /* [I + 1] */
} pair_view;

static double jump_of(const pair_view *v, int m, int a) {
    const int D = v->h->max_jump;
    int delta = a - m;
    delta = delta < -D ? -D : delta > D ? D : delta;
    return v->jump[delta + D] / v->Z[m];
}

static double emit(const pair_view *v, int32_t s, int32_t d) {
    const double r = (1.0 - v->h->identity) * v->h->rewrite[s] / v->rew_sum;
    return s == d ? v->h->identity + r : r;
}

static double generate(const pair_view *v, int32_t s) {
    return v->h->p_null * v->h->generate[s] / v->gen_sum;
}

/* prod_k e(s_{j+k} | d_{a+k}) over a phrase of length l, 0 when the span
 * leaves the document or its sentence. */
static double phrase_emission(const pair_view *v, int j, int a, int l) {
    if (a + l > v->I || v->sent[a + l - 1] != v->sent[a]) return 0.0;
    double e = 1.0;
    for (int k = 0; k < l; k++) e *= emit(v, v->s[j + k], v->d[a + k]);
    return e;
}

static void view_init(pair_view *v, const ta_phrase_hmm *h, const ta_pairs *p, int64_t k,
                      double *Z) {
    const int64_t s0 = p->sum_off[k], d0 = p->doc_off[k];
    *v = (pair_view){p->sum_ids + s0, p->doc_ids + d0, p->doc_sent + d0,
                     (int)(p->sum_off[k + 1] - s0), (int)(p->doc_off[k + 1] - d0), h};
    v->Z = Z;
    double len_sum = 0.0, jump_sum = 0.0;
    for (int l = 0; l < h->max_length; l++) len_sum += h->length[l];
    for (int l = 0; l < h->max_length; l++) v->len[l] = (1.0 - h->p_null) * h->length[l] / len_sum;
    for (int d = 0; d <= 2 * h->max_jump; d++) jump_sum += h->jump[d];
    for (int d = 0; d <= 2 * h->max_jump; d++) v->jump[d] = h->jump[d] / jump_sum;
    v->rew_sum = v->gen_sum = 0.0;
    for (int w = 0; w < h->vocab; w++) {
        v->rew_sum += h->rewrite[w];
        v->gen_sum += h->generate[w];
    }
    /* Z(m) = sum_a c(clip(a - m)); one pass per m is O(I^2) as the passes are */
    for (int m = 0; m <= v->I; m++) {
        v->Z[m] = 1.0;
        double z = 0.0;
        for (int a = 0; a < v->I; a++) z += jump_of(v, m, a);
        v->Z[m] = z > 0.0 ? z : 1.0; /* z = 0: every jump from m has weight 0 */
    }
}

/* Per-pair counts: [0] null words, [1] aligned phrases, [2] identical words,
 * [3] rewritten words, then length [L], then jump [2 D + 1]. */
#define COUNT_SLOTS(h) (4 + (h)->max_length + 2 * (h)->max_jump + 1)

/* Forward-backward of pair v; adds its expected counts to counts (the pair's
 * slots) and null_post / rewrite_post (per summary token); returns the
 * log-likelihood. A, B: (J + 1)(I + 1); U: J I; c: J + 1; V: I, where V[a] sums
 * the phrases from word j starting at document index a times what follows. */
static double pair_counts(const pair_view *v, double *counts, double *null_post,
                          double *rewrite_post, double *A, double *B, double *U, double *c,
                          double *V) {
    const int J = v->J, I = v->I, L = v->h->max_length, D = v->h->max_jump;
    const int W = I + 1;
    for (int m = 0; m < W; m++) A[m] = 0.0;
    A[0] = 1.0;
    c[0] = 1.0;
    double loglik = 0.0;
    /* forward, pulled row by row; U[j][a] = sum_m A[j][m] jump(m -> a) */
    for (int j = 0; j <= J; j++) {
        if (j > 0) {
            double *row = A + (size_t)j * W;
            const double g = generate(v, v->s[j - 1]);
            for (int m = 0; m < W; m++) row[m] = A[(size_t)(j - 1) * W + m] * g;
            double unscale = 1.0; /* 1 / prod of c over the rows a phrase spans, but its last */
            for (int l = 1; l <= L && l <= j; l++) {
                if (l > 1) unscale /= c[j - l + 1];
                const int j0 = j - l;
                for (int a = 0; a + l <= I; a++) {
                    const double e = phrase_emission(v, j0, a, l);
                    if (e > 0.0) row[a + l] += unscale * v->len[l - 1] * e * U[(size_t)j0 * I + a];
                }
            }
            double total = 0.0;
            for (int m = 0; m < W; m++) total += row[m];
            c[j] = total;
            for (int m = 0; m < W; m++) row[m] /= total;
            loglik += log(total);
        }
        if (j < J)
            for (int a = 0; a < I; a++) {
                double u = 0.0;
                for (int m = 0; m < W; m++) u += A[(size_t)j * W + m] * jump_of(v, m, a);
                U[(size_t)j * I + a] = u;
            }
    }
    /* backward, with the expected counts of each step from j */
    double *slots_len = counts + 4, *slots_jump = counts + 4 + L;
    for (int m = 0; m < W; m++) B[(size_t)J * W + m] = 1.0;
    for (int j = J - 1; j >= 0; j--) {
        const double g = generate(v, v->s[j]);
        double scale = 1.0;
        for (int a = 0; a < I; a++) V[a] = 0.0;
        for (int l = 1; l <= L && j + l <= J; l++) {
            scale /= c[j + l];
            for (int a = 0; a + l <= I; a++) {
                const double e = phrase_emission(v, j, a, l);
                if (e == 0.0) continue;
                const double w = v->len[l - 1] * e * B[(size_t)(j + l) * W + a + l] * scale;
                V[a] += w;
                /* the phrase's posterior, and its words' identical/rewritten split */
                const double post = U[(size_t)j * I + a] * w;
                counts[1] += post;
                slots_len[l - 1] += post;
                for (int k = 0; k < l; k++) {
                    const int32_t s = v->s[j + k];
                    const double rewritten = (1.0 - v->h->identity) * v->h->rewrite[s] /
                                             v->rew_sum;
                    const double share = s == v->d[a + k] ? rewritten / emit(v, s, s) : 1.0;
                    counts[2] += post * (1.0 - share);
                    counts[3] += post * share;
                    rewrite_post[j + k] += post * share;
                }
            }
        }
        const double *A_j = A + (size_t)j * W, *B_next = B + (size_t)(j + 1) * W;
        double *B_j = B + (size_t)j * W, null_mass = 0.0;
        for (int m = 0; m < W; m++) {
            const double stay = g * B_next[m] / c[j + 1];
            null_mass += A_j[m] * stay;
            double b = stay;
            for (int a = 0; a < I; a++) {
                const double t = jump_of(v, m, a) * V[a];
                b += t;
                int delta = a - m;
                delta = delta < -D ? -D : delta > D ? D : delta;
                slots_jump[delta + D] += A_j[m] * t;
            }
            B_j[m] = b;
        }
        counts[0] += null_mass;
        null_post[j] += null_mass;
    }
    return loglik;
}

/* The scratch one pair needs, in doubles. */
static size_t pair_scratch(const ta_pairs *p, int64_t k) {
    const size_t J = (size_t)(p->sum_off[k + 1] - p->sum_off[k]);
    const size_t I = (size_t)(p->doc_off[k + 1] - p->doc_off[k]);
    return 2 * (J + 1) * (I + 1) + J * I + (J + 1) + (I + 1) + I;
}

int ta_phrase_em(ta_phrase_hmm *h, const ta_pairs *p, double smoothing, double *loglik,
                 int n_threads) {
    const int64_t n_tokens = p->sum_off[p->n_pairs];
    const int slots = COUNT_SLOTS(h);
    double *counts = calloc((size_t)p->n_pairs * slots + 1, sizeof(double));
    double *token_post = calloc(2 * (size_t)n_tokens + 1, sizeof(double));
    double *pair_ll = calloc((size_t)p->n_pairs + 1, sizeof(double));
    int out_of_memory = !counts || !token_post || !pair_ll;
    const int64_t n_pairs = out_of_memory ? 0 : p->n_pairs;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t k = 0; k < n_pairs; k++) {
        double *scratch = malloc(sizeof(double) * pair_scratch(p, k));
        if (!scratch) {
#pragma omp atomic write
            out_of_memory = 1;
            continue;
        }
        pair_view v;
        const int64_t J = p->sum_off[k + 1] - p->sum_off[k],
                      I = p->doc_off[k + 1] - p->doc_off[k];
        double *A = scratch, *B = A + (J + 1) * (I + 1), *U = B + (J + 1) * (I + 1),
               *c = U + J * I, *Z = c + J + 1, *V = Z + I + 1;
        view_init(&v, h, p, k, Z);
        double *null_post = token_post + p->sum_off[k];
        double *rewrite_post = token_post + n_tokens + p->sum_off[k];
        pair_ll[k] = pair_counts(&v, counts + k * slots, null_post, rewrite_post, A, B, U, c, V);
        free(scratch);
    }
    if (out_of_memory) {
        free(counts);
        free(token_post);
        free(pair_ll);
        return CALIGN_ENOMEM;
    }
    /* sums in corpus order: the same at any thread count */
    double total[4 + TA_MAX_PHRASE + 2 * TA_MAX_JUMP + 1] = {0};
    double ll = 0.0;
    for (int64_t k = 0; k < p->n_pairs; k++) {
        ll += pair_ll[k];
        for (int i = 0; i < slots; i++) total[i] += counts[k * slots + i];
    }
    for (int w = 0; w < h->vocab; w++) h->generate[w] = h->rewrite[w] = smoothing;
    for (int64_t t = 0; t < n_tokens; t++) {
        h->generate[p->sum_ids[t]] += token_post[t];
        h->rewrite[p->sum_ids[t]] += token_post[n_tokens + t];
    }
    h->p_null = (total[0] + smoothing) / (total[0] + total[1] + 2 * smoothing);
    h->identity = (total[2] + smoothing) / (total[2] + total[3] + 2 * smoothing);
    for (int l = 0; l < h->max_length; l++) h->length[l] = total[4 + l] + smoothing;
    for (int d = 0; d <= 2 * h->max_jump; d++)
        h->jump[d] = total[4 + h->max_length + d] + smoothing;
    *loglik = ll;
    free(counts);
    free(token_post);
    free(pair_ll);
    return CALIGN_OK;
}

/* ---- Viterbi --------------------------------------------------------------------- */

/* delta[j][m]: the best log-score of the first j summary words ending with
 * last document index m; from[j][m] = the length of the last phrase (0 for a
 * generated word) and prev[j][m] the m it came from. Ties: a generated word
 * first, then shorter phrases, then the smaller m. */
static void pair_viterbi(int32_t *best, int32_t *phrase, const pair_view *v, double *delta,
                         int32_t *from, int32_t *prev, double *bu, int32_t *bu_arg) {
    const int J = v->J, I = v->I, L = v->h->max_length, W = I + 1;
    for (int m = 0; m < W; m++) delta[m] = -INFINITY;
    delta[0] = 0.0;
    for (int j = 0; j <= J; j++) {
        if (j > 0) {
            const double g = log(generate(v, v->s[j - 1]));
            for (int m = 0; m < W; m++) {
                delta[(size_t)j * W + m] = delta[(size_t)(j - 1) * W + m] + g;
                from[(size_t)j * W + m] = 0;
                prev[(size_t)j * W + m] = m;
            }
            for (int l = 1; l <= L && l <= j; l++) {
                const int j0 = j - l;
                for (int a = 0; a + l <= I; a++) {
                    const double e = phrase_emission(v, j0, a, l);
                    if (e == 0.0) continue;
                    const double score = bu[(size_t)j0 * I + a] + log(v->len[l - 1] * e);
                    const size_t at = (size_t)j * W + a + l;
                    if (score > delta[at]) {
                        delta[at] = score;
                        from[at] = l;
                        prev[at] = bu_arg[(size_t)j0 * I + a];
                    }
                }
            }
        }
        if (j < J)
            for (int a = 0; a < I; a++) {
                double top = -INFINITY;
                int arg = 0;
                for (int m = 0; m < W; m++) {
                    const double score = delta[(size_t)j * W + m] + log(jump_of(v, m, a));
                    if (score > top) {
                        top = score;
                        arg = m;
                    }
                }
                bu[(size_t)j * I + a] = top;
                bu_arg[(size_t)j * I + a] = arg;
            }
    }
    int m = 0;
    for (int i = 1; i < W; i++)
        if (delta[(size_t)J * W + i] > delta[(size_t)J * W + m]) m = i;
    /* back from the end; phrases are numbered from the end, then renumbered */
    int n_phrases = 0;
    for (int j = J; j > 0;) {
        const int l = from[(size_t)j * W + m], m_prev = prev[(size_t)j * W + m];
        if (l == 0) {
            best[j - 1] = -1;
            phrase[j - 1] = n_phrases++;
            j -= 1;
        } else {
            for (int k = 0; k < l; k++) {
                best[j - l + k] = m - l + k;
                phrase[j - l + k] = n_phrases;
            }
            n_phrases++;
            j -= l;
        }
        m = m_prev;
    }
    for (int t = 0; t < J; t++) phrase[t] = n_phrases - 1 - phrase[t];
}

int ta_phrase_viterbi(int32_t *best, int32_t *phrase, const ta_phrase_hmm *h, const ta_pairs *p,
                      int n_threads) {
    int out_of_memory = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t k = 0; k < p->n_pairs; k++) {
        const size_t J = (size_t)(p->sum_off[k + 1] - p->sum_off[k]),
                     I = (size_t)(p->doc_off[k + 1] - p->doc_off[k]);
        /* delta, bu, Z in doubles; from, prev, bu_arg in int32 */
        double *reals = malloc(sizeof(double) * ((J + 1) * (I + 1) + J * I + I + 1));
        int32_t *ints = malloc(sizeof(int32_t) * (2 * (J + 1) * (I + 1) + J * I + 1));
        if (!reals || !ints) {
            free(reals);
            free(ints);
#pragma omp atomic write
            out_of_memory = 1;
            continue;
        }
        pair_view v;
        double *delta = reals, *bu = delta + (J + 1) * (I + 1), *Z = bu + J * I;
        int32_t *from = ints, *prev = from + (J + 1) * (I + 1), *bu_arg = prev + (J + 1) * (I + 1);
        view_init(&v, h, p, k, Z);
        pair_viterbi(best + p->sum_off[k], phrase + p->sum_off[k], &v, delta, from, prev, bu,
                     bu_arg);
        free(reals);
        free(ints);
    }
    return out_of_memory ? CALIGN_ENOMEM : CALIGN_OK;
}
