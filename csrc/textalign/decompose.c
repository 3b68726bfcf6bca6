#include "textalign/decompose.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"

static const char *const rule_names[6] = {"p_adjacent",   "p_same_later",   "p_same_earlier",
                                          "p_near_later", "p_near_earlier", "p_far"};

int ta_rules_init(ta_rules *r, const double p[6], int near, double p_new, char *err) {
    for (int i = 0; i < 6; i++) {
        if (!(p[i] > 0.0 && p[i] <= 1.0))
            return calign_fail(err, CALIGN_EINVAL, "%s must be in (0, 1], got %g", rule_names[i],
                               p[i]);
        if (i > 0 && p[i] > p[i - 1])
            return calign_fail(err, CALIGN_EINVAL,
                               "%s must be at most %s (%g): the rules are ordered, got %g",
                               rule_names[i], rule_names[i - 1], p[i - 1], p[i]);
    }
    if (near < 1) return calign_fail(err, CALIGN_EINVAL, "near must be >= 1, got %d", near);
    if (!(p_new > 0.0 && p_new < 1.0))
        return calign_fail(err, CALIGN_EINVAL, "p_new must be in (0, 1), got %g", p_new);
    *r = (ta_rules){log(p[0]), log(p[1]), log(p[2]), log(p[3]), log(p[4]), log(p[5]), near,
                    log(p_new)};
    return CALIGN_OK;
}

static int check_offsets(const int64_t *off, int64_t n, int64_t total, const char *name,
                         char *err) {
    if (off[0] != 0)
        return calign_fail(err, CALIGN_EINVAL, "%s must start at 0, got %lld", name,
                           (long long)off[0]);
    for (int64_t k = 0; k < n; k++)
        if (off[k + 1] < off[k])
            return calign_fail(err, CALIGN_EINVAL, "%s must not decrease, but does at %lld", name,
                               (long long)k);
    if (off[n] != total)
        return calign_fail(err, CALIGN_EINVAL, "%s must end at %lld, got %lld", name,
                           (long long)total, (long long)off[n]);
    return CALIGN_OK;
}

int ta_decompose_check(const int64_t *word_off, int64_t n_problems, int64_t n_words,
                       const int64_t *cand_off, int64_t n_cand, char *err) {
    int status = check_offsets(word_off, n_problems, n_words, "word_offsets", err);
    return status == CALIGN_OK
               ? check_offsets(cand_off, n_words, n_cand, "candidate_offsets", err)
               : status;
}

double ta_rule_logp(const ta_rules *r, int s1, int w1, int s2, int w2) {
    if (s2 == s1) {
        if (w2 == w1 + 1) return r->log_adjacent;
        return w2 > w1 ? r->log_same_later : r->log_same_earlier;
    }
    const int gap = abs(s2 - s1);
    if (gap >= r->near) return r->log_far;
    return s2 > s1 ? r->log_near_later : r->log_near_earlier;
}

/* One summary sentence, words j0 .. j1.
 * delta[c] = best log-score of the words up to c's word with c its last
 * document position: max of the start (the words before it all new,
 * p_new^j) and, over every earlier word i and candidate c' of it,
 * delta[c'] + (j - i - 1) log p_new + rule(c' -> c). back[c] = c', or -1. */
static double decompose_one(int64_t *best, double *delta, int64_t *back, int64_t j0, int64_t j1,
                            const int64_t *cand_off, const int32_t *sent, const int32_t *word,
                            const ta_rules *r) {
    for (int64_t j = j0; j < j1; j++) {
        for (int64_t c = cand_off[j]; c < cand_off[j + 1]; c++) {
            double top = (double)(j - j0) * r->log_new;
            int64_t from = -1;
            for (int64_t i = j0; i < j; i++) {
                const double gap = (double)(j - i - 1) * r->log_new;
                for (int64_t p = cand_off[i]; p < cand_off[i + 1]; p++) {
                    double score = delta[p] + gap + ta_rule_logp(r, sent[p], word[p], sent[c],
                                                                 word[c]);
                    if (score > top) {
                        top = score;
                        from = p;
                    }
                }
            }
            delta[c] = top;
            back[c] = from;
        }
    }
    /* the end: the last chosen position followed by new words, or none at all */
    double top = (double)(j1 - j0) * r->log_new;
    int64_t last = -1;
    for (int64_t j = j0; j < j1; j++)
        for (int64_t c = cand_off[j]; c < cand_off[j + 1]; c++) {
            double score = delta[c] + (double)(j1 - j - 1) * r->log_new;
            if (score > top) {
                top = score;
                last = c;
            }
        }
    for (int64_t j = j0; j < j1; j++) best[j] = -1;
    /* follow the back pointers; the word of candidate c is found by its range */
    int64_t j = j1 - 1;
    for (int64_t c = last; c >= 0; c = back[c]) {
        while (cand_off[j] > c) j--;
        best[j] = c;
    }
    return top;
}

void ta_decompose(int64_t *best, double *log_score, double *delta, int64_t *back,
                  const int64_t *word_off, const int64_t *cand_off, const int32_t *cand_sent,
                  const int32_t *cand_word, int64_t n_problems, const ta_rules *r,
                  int n_threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int64_t k = 0; k < n_problems; k++)
        log_score[k] = decompose_one(best, delta, back, word_off[k], word_off[k + 1], cand_off,
                                     cand_sent, cand_word, r);
}
