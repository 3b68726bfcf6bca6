/* IBM Model 1 (Brown et al. 1993) and fast_align's reparameterised IBM Model 2
 * (Dyer et al. 2013): EM over a parallel corpus, in double.
 *
 * The model explains each target word f_j by one source word e_i or by NULL
 * (source id 0, position 0). The translation table t(f | e) is stored sparse,
 * one row per source word id holding the target ids it co-occurs with. */
#ifndef CALIGN_WA_IBM_H
#define CALIGN_WA_IBM_H

#include <stdint.h>

typedef struct {
    const int32_t *src, *tgt;        /* token ids; source ids >= 1 (0 is NULL) */
    const int64_t *src_off, *tgt_off; /* pair k: src[src_off[k] .. src_off[k+1]) */
    long n_pairs;
    int src_vocab, tgt_vocab;         /* ids are < these */
} wa_corpus;

typedef struct {
    int64_t *row_start; /* [rows + 2]: after the last row, an empty one (decoding gives it the
                           source words never seen in training) */
    int32_t *cols;      /* target ids, sorted within a row */
    double *prob;       /* t(f | e) */
    int64_t n_entries;
    int rows;
} wa_table;

typedef struct {
    int model2;        /* 0: IBM1; 1: fast_align's diagonal-favouring Model 2 */
    double p0;         /* Model 2: probability of aligning to NULL */
    double tension;    /* Model 2: lambda, updated when learn_tension */
    int learn_tension;
    double alpha;      /* > 0: variational Bayes with a Dirichlet(alpha) prior on t */
} wa_settings;

/* Every (source word or NULL, target word) pair that co-occurs, t uniform over
 * each row. Returns CALIGN_OK, CALIGN_ENOMEM, or CALIGN_EINVAL when the table
 * would have more than INT32_MAX entries (link indices are int32). */
int wa_table_build(wa_table *t, const wa_corpus *c);
void wa_table_free(wa_table *t);

/* Index of t(f | e) in the table, -1 if the pair never co-occurred. */
int64_t wa_table_find(const wa_table *t, int32_t e, int32_t f);

/* The links of a corpus: pair k's (I + 1) J table indices start at off[k]
 * (off: n_pairs + 1 entries), t(f_j | e_i) at off[k] + (I + 1) j + i with
 * i = 0 for NULL, -1 where the words never co-occurred. index == NULL: the
 * E-steps look each pair's links up as they go (no corpus-sized array). */
typedef struct {
    const int64_t *off;
    const int32_t *index;
} wa_links;

void wa_link_offsets(int64_t *off, const wa_corpus *c);
/* Pair k's (I + 1) J link indices into out. */
void wa_pair_links(int32_t *out, const wa_table *t, const wa_corpus *c, long k);
/* Every link index of the corpus; the table's cols must be target ids of the
 * corpus's vocabulary (< tgt_vocab). Returns 0, -1 when out of memory. */
int wa_links_fill(int32_t *index, const int64_t *off, const wa_table *t, const wa_corpus *c,
                  int n_threads);
/* Pair k's link indices: a view of links->index, or looked up into scratch. */
const int32_t *wa_links_of_pair(int32_t *scratch, const wa_links *links, const wa_table *t,
                                const wa_corpus *c, long k);
/* The threads worth waking for a corpus: one below 32768 target words (about
 * 3000 sentence pairs), where starting a team costs more than it saves (on a
 * busy machine each team start waits for a core: 2 threads took 1.1 s to
 * align 1000 pairs that one thread aligns in 0.1 s). Every parallel loop of
 * calign.wordalign asks this first. */
int wa_team(int n_threads, const wa_corpus *c);

/* The longest source and target sentence of the corpus. */
void wa_longest(int *I_max, int *J_max, const wa_corpus *c);

/* EM over a corpus sharded across processes (MPI ranks): each process runs
 * the E-step on its shard, then sum(context, values, n) replaces n doubles of
 * expected statistics by their sum over the processes, in place, before the
 * M-step, so that every process makes the same update. Every process calls it
 * at the same points with the same n, from the thread that called the EM
 * function, outside any parallel region. It returns 0, or nonzero when it
 * failed (EM then stops: CALIGN_ECALLBACK). A NULL reducer (or sum) is one
 * process holding the whole corpus. */
typedef struct {
    int (*sum)(void *context, double *values, int64_t n);
    void *context;
} wa_reducer;

/* values[0..n) summed over the processes: CALIGN_OK, or CALIGN_ECALLBACK. */
int wa_reduce(const wa_reducer *r, double *values, int64_t n);

/* One EM iteration; updates t (and the tension). counts: n_entries doubles per
 * thread of scratch. sum: the reducer of a sharded corpus (the counts, the
 * log-likelihood, IBM2's distortion feature and target word count, and, in
 * each of the tension's gradient steps, its model feature), or NULL. Sets
 * *loglik to the corpus log-likelihood under the parameters before the update
 * (NaN or -inf when the arithmetic broke down, e.g. every link of a word got
 * probability 0). Returns CALIGN_OK, CALIGN_ENOMEM or CALIGN_ECALLBACK (then
 * nothing updated). */
int wa_em_iteration(wa_table *t, wa_settings *s, const wa_corpus *c, const wa_links *links,
                    double *counts, const wa_reducer *sum, int n_threads, double *loglik);

/* The M-step: t(f | e) from expected counts. alpha = 0: c(e, f) / sum_f c(e, f);
 * alpha > 0: mean-field variational Bayes under a symmetric Dirichlet(alpha)
 * prior on each row (Riley & Gildea 2012, as fast_align's -v):
 * exp(digamma(c + alpha)) / exp(digamma(sum_f c + n_e alpha)), n_e the row's
 * support. Rows without counts keep their values. */
void wa_table_update(wa_table *t, const double *counts, double alpha);

/* Link posteriors p(a_j = i | pair) of every pair, in parallel: pair k's
 * [J][I + 1] block (i = 0 NULL) at out + off[k], off as wa_link_offsets. */
void wa_posteriors(double *out, const int64_t *off, const wa_table *t, const wa_settings *s,
                   const wa_corpus *c, int n_threads);

#endif
