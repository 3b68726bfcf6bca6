/* Daumé & Marcu's phrase-based HMM for document/abstract alignment (EMNLP
 * 2004), simplified (the paper's text could not be read; see
 * calign/textalign/phrase_hmm.py for what is kept and what is not).
 *
 * A summary of J words is cut into phrases. Each phrase of length l <= L is
 * either aligned to a document span of the same length inside one sentence
 * or, for a single word, generated (the null state). With m the document
 * index right after the last aligned span (0 at the start; generated words
 * keep it):
 *   aligned  (1 - p_null) * jump(clip(a - m)) / Z(m) * length(l)
 *            * prod_k e(s_{j+k} | d_{a+k}),
 *            e(s | d) = identity [s = d] + (1 - identity) rewrite(s)
 *   null     p_null * generate(s_j)
 * Z(m) = sum over a in 0..I-1 of jump(clip(a - m)), widths clipped to
 * [-max_jump, max_jump]. EM (forward-backward over this semi-Markov chain,
 * scaled per summary position) learns p_null, identity, jump, length,
 * rewrite and generate; Viterbi decodes. Time O(J I (I + L^2)) per pair.
 *
 * Counts are kept per pair and per summary token and summed in corpus order
 * after the parallel loop, so results do not depend on the thread count. */
#ifndef CALIGN_TA_PHRASE_HMM_H
#define CALIGN_TA_PHRASE_HMM_H

#include <stdint.h>

#define TA_MAX_PHRASE 16 /* the longest phrase length the kernels take */
#define TA_MAX_JUMP 64   /* the widest jump class */

typedef struct {
    int max_length; /* L, 1..TA_MAX_PHRASE */
    int max_jump;   /* D, 0..TA_MAX_JUMP */
    int vocab;      /* ids are < vocab */
    double p_null;
    double identity;
    double *length;   /* [L], length(l) at l - 1 */
    double *jump;     /* [2 D + 1], jump(d) at d + D */
    double *rewrite;  /* [vocab] */
    double *generate; /* [vocab] */
} ta_phrase_hmm;

/* Pairs: summary k is sum_ids[sum_off[k] .. sum_off[k + 1]), its document
 * doc_ids[doc_off[k] .. doc_off[k + 1]) with doc_sent the sentence of each
 * document word. */
typedef struct {
    const int32_t *sum_ids, *doc_ids, *doc_sent;
    const int64_t *sum_off, *doc_off;
    int64_t n_pairs;
} ta_pairs;

/* EINVAL (message in err) unless the offsets start at 0, never decrease and
 * end at n_sum / n_doc, every document has a word, ids lie in [0, vocab) and
 * sentences never decrease within a document. */
int ta_pairs_check(const ta_pairs *p, int64_t n_sum, int64_t n_doc, int vocab, char *err);

/* EINVAL (message in err) unless the model's numbers are finite
 * probabilities as the model needs them (p_null, identity in (0, 1);
 * distributions >= 0 with a positive sum). */
int ta_phrase_hmm_check(const ta_phrase_hmm *h, char *err);

/* One EM iteration: updates h in place; smoothing (> 0) is added to every
 * expected count. Sets *loglik to the corpus log-likelihood before the
 * update. Returns 0, or CALIGN_ENOMEM (nothing updated). */
int ta_phrase_em(ta_phrase_hmm *h, const ta_pairs *p, double smoothing, double *loglik,
                 int n_threads);

/* Viterbi phrases: best[t] = the document index (within its pair) summary
 * token t is aligned to, or -1 when generated; phrase[t] = the number of
 * its phrase within the summary. Returns 0, or CALIGN_ENOMEM. */
int ta_phrase_viterbi(int32_t *best, int32_t *phrase, const ta_phrase_hmm *h, const ta_pairs *p,
                      int n_threads);

#endif
