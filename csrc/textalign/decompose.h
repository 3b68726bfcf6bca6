/* Jing & McKeown's HMM decomposition of summary sentences (Jing 2002,
 * "Using Hidden Markov Modeling to Decompose Human-Written Summaries").
 *
 * Each word of a summary sentence comes from one document position (s, w)
 * where the same word occurs, or is new ("generated"). Transitions between
 * consecutive chosen positions (s1, w1) -> (s2, w2) score by the paper's
 * ordered rules (the constants are parameters, see ta_rules); emissions are
 * trivial (a position emits its own word), so decoding is a Viterbi search
 * over the candidate positions.
 *
 * The generated state remembers the last document position (calign's
 * choice; the paper's text could not be read): a run of k new words between
 * positions p and q scores p_new^k times the rule of p -> q, so a word
 * inserted between two adjacent document words keeps their adjacency. The
 * first chosen position scores 1 (no rule applies), a sentence of new words
 * p_new^J. */
#ifndef CALIGN_TA_DECOMPOSE_H
#define CALIGN_TA_DECOMPOSE_H

#include <stdint.h>

/* The rule constants as log-probabilities. */
typedef struct {
    double log_adjacent;     /* 1: s2 = s1, w2 = w1 + 1 */
    double log_same_later;   /* 2: s2 = s1, w2 > w1 + 1 */
    double log_same_earlier; /* 3: s2 = s1, w2 <= w1 */
    double log_near_later;   /* 4: 0 < s2 - s1 < near */
    double log_near_earlier; /* 5: 0 < s1 - s2 < near */
    double log_far;          /* 6: |s2 - s1| >= near */
    int near;                /* the paper's CONST, >= 1 */
    double log_new;          /* one summary word from the generated state */
} ta_rules;

/* The rules from their probabilities p[0..5] (rules 1..6), each in (0, 1]
 * and never above the rule before it (the paper's P1 >= ... >= P6), near
 * >= 1 and p_new in (0, 1); else EINVAL with a message naming the setting
 * (p_adjacent, p_same_later, p_same_earlier, p_near_later, p_near_earlier,
 * p_far, near, p_new). */
int ta_rules_init(ta_rules *r, const double p[6], int near, double p_new, char *err);

/* EINVAL (message in err) unless word_off (n_problems + 1 entries) starts at
 * 0, never decreases and ends at n_words, and cand_off (n_words + 1) starts
 * at 0, never decreases and ends at n_cand. */
int ta_decompose_check(const int64_t *word_off, int64_t n_problems, int64_t n_words,
                       const int64_t *cand_off, int64_t n_cand, char *err);

/* The rule score of the step (s1, w1) -> (s2, w2). */
double ta_rule_logp(const ta_rules *r, int s1, int w1, int s2, int w2);

/* Viterbi decomposition of n_problems summary sentences, in parallel.
 *
 * Problem k owns summary words word_off[k] .. word_off[k + 1]; summary word j
 * has candidate positions cand_off[j] .. cand_off[j + 1] (global indices
 * into cand_sent / cand_word; word_off and cand_off are non-decreasing, the
 * caller checked them). Writes best[j] = the chosen candidate's global index,
 * or -1 for a new word, and log_score[k] = the best path's log-score.
 * Scratch: delta and back, one per candidate (cand_off[n_words] each).
 * Ties go to the start (the words before all new), then to the earlier
 * predecessor word, then to its earlier candidate; at the end, to no
 * position at all, then to the earlier last word. */
void ta_decompose(int64_t *best, double *log_score, double *delta, int64_t *back,
                  const int64_t *word_off, const int64_t *cand_off, const int32_t *cand_sent,
                  const int32_t *cand_word, int64_t n_problems, const ta_rules *r,
                  int n_threads);

#endif
