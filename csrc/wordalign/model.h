/* A word-alignment model as calign.wordalign's IBM1, IBM2 and HMM hold it
 * (the binding wraps it in a capsule): its kind and settings, what EM learns
 * (the translation table, the HMM's jump weights, IBM2's tension), and the
 * scratch EM trains it with. Also what training and decoding share: checked
 * corpora and the cache of their link indices.
 *
 * Functions that can fail return a status of core/status.h and write a
 * message into err (CALIGN_ERR_LEN bytes). */
#ifndef CALIGN_WA_MODEL_H
#define CALIGN_WA_MODEL_H

#include <stdint.h>

#include "wordalign/hmm.h"
#include "wordalign/ibm.h"

typedef enum { WA_IBM1, WA_IBM2, WA_HMM, WA_N_KINDS } wa_kind;

/* "ibm1", "ibm2", "hmm": the names the kinds cross into Python by. */
extern const char *const wa_kind_names[WA_N_KINDS];

typedef struct {
    wa_kind kind;
    double p0;         /* IBM2: p(NULL); HMM: p(a jump to NULL), > 0; IBM1: unused */
    double tension;    /* IBM2: lambda of the diagonal prior */
    int learn_tension; /* IBM2: EM updates the tension */
    double alpha;      /* > 0: Dirichlet(alpha) prior on each row of t (see wa_table_update) */
    int max_jump;      /* HMM: jump widths clipped to [-max_jump, max_jump]; else 0 */
    double jump[2 * WA_MAX_JUMP + 1]; /* HMM: c(d) at d + max_jump */
    wa_table table;    /* rows 0 until started or given one; see wa_table_build */
    int tgt_vocab;     /* the table's target ids are < this */
    double *counts;    /* EM's expected counts, (n_entries + 1) per thread, while it runs */
} wa_model;

/* A model without a table. jump: 2 max_jump + 1 finite weights >= 0, or NULL
 * for uniform ones; an IBM model takes max_jump 0 and no jump. p0, tension
 * and alpha must be finite, p0 in [0, 1) (an HMM's in (0, 1)), tension and
 * alpha >= 0. EINVAL naming the setting otherwise. */
int wa_model_init(wa_model *m, wa_kind kind, double p0, double tension, int learn_tension,
                  double alpha, int max_jump, const double *jump, int64_t n_jump, char *err);
void wa_model_free(wa_model *m);

/* Replaces the table by copies of a saved one: rows = the source vocabulary
 * (row_start has rows + 1 entries, from 0 to n_entries, never decreasing),
 * cols target ids in [1, tgt_vocab) (the caller checked), increasing within
 * each row, prob in [0, 1]. EINVAL naming the array that does not fit. */
int wa_model_set_table(wa_model *m, const int64_t *row_start, int64_t rows, const int32_t *cols,
                       const double *prob, int64_t n_entries, int tgt_vocab, char *err);

/* Replaces the table by a uniform one over the (source word or NULL, target
 * word) pairs of c, whose vocabularies become the model's. */
int wa_model_start(wa_model *m, const wa_corpus *c, char *err);

/* ---- corpora -------------------------------------------------------------------------- */

/* A corpus laid over flat arrays (ids checked against the vocabularies by
 * the caller): each side's offsets must start at 0, never decrease and end
 * at its token count, and no sentence may reach 2**31 words. */
int wa_corpus_check(const wa_corpus *c, int64_t n_src_tokens, int64_t n_tgt_tokens, char *err);

/* The corpus seen from the other direction: the sides exchanged. */
wa_corpus wa_corpus_swapped(const wa_corpus *c);

/* sum over pairs of (I + 1) J: the posteriors a decoding writes. */
int64_t wa_corpus_links(const wa_corpus *c);

/* The link offsets of a corpus and, when 4 bytes a link fit in cache_bytes,
 * the table index of every link (else the kernels look them up pair by
 * pair, with no corpus-sized array): held for one training or decoding. */
typedef struct {
    int64_t *off;
    int32_t *index;
    wa_links links;
} wa_link_cache;

int wa_link_cache_open(wa_link_cache *lc, const wa_table *t, const wa_corpus *c,
                       int64_t cache_bytes, int n_threads, char *err);
void wa_link_cache_close(wa_link_cache *lc);

#endif
