/* Bindings of the word-alignment kernels (calign.wordalign). The translation
 * table lives in three NumPy arrays owned by Python (row_start, cols, prob);
 * the corpus is four flat arrays (source ids, source offsets, target ids,
 * target offsets) that calign.wordalign builds and checks. */
#include "binding/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/threads.h"
#include "wordalign/combine.h"
#include "wordalign/fertility.h"
#include "wordalign/hmm.h"
#include "wordalign/ibm.h"
#include "wordalign/sinkhorn.h"

typedef struct {
    PyArrayObject *src, *src_off, *tgt, *tgt_off;
    wa_corpus corpus;
} corpus_args;

static void release_corpus(corpus_args *a) {
    Py_XDECREF(a->src);
    Py_XDECREF(a->src_off);
    Py_XDECREF(a->tgt);
    Py_XDECREF(a->tgt_off);
}

static int check_offsets(PyArrayObject *off, PyArrayObject *ids, const char *name) {
    const int64_t *o = PyArray_DATA(off);
    npy_intp n = PyArray_DIM(off, 0);
    if (n < 1 || o[0] != 0 || o[n - 1] != PyArray_DIM(ids, 0)) {
        PyErr_Format(PyExc_ValueError, "%s must start at 0 and end at the token count", name);
        return -1;
    }
    for (npy_intp k = 1; k < n; k++) {
        if (o[k] < o[k - 1]) {
            PyErr_Format(PyExc_ValueError, "%s must not decrease", name);
            return -1;
        }
    }
    return 0;
}

static int parse_corpus(corpus_args *a, PyObject *src, PyObject *src_off, PyObject *tgt,
                        PyObject *tgt_off, int src_vocab, int tgt_vocab) {
    if (!(a->src = arg_int32_vector(src, "source_ids")) ||
        !(a->src_off = arg_int64_vector(src_off, "source_offsets")) ||
        !(a->tgt = arg_int32_vector(tgt, "target_ids")) ||
        !(a->tgt_off = arg_int64_vector(tgt_off, "target_offsets")))
        return -1;
    if (check_offsets(a->src_off, a->src, "source_offsets") < 0 ||
        check_offsets(a->tgt_off, a->tgt, "target_offsets") < 0 ||
        check_length(a->tgt_off, "target_offsets", PyArray_DIM(a->src_off, 0), "source_offsets") < 0)
        return -1;
    const int32_t *s = PyArray_DATA(a->src), *t = PyArray_DATA(a->tgt);
    for (npy_intp i = 0; i < PyArray_DIM(a->src, 0); i++)
        if (s[i] < 1 || s[i] >= src_vocab) {
            PyErr_SetString(PyExc_ValueError, "source ids must be in [1, source vocabulary)");
            return -1;
        }
    for (npy_intp i = 0; i < PyArray_DIM(a->tgt, 0); i++)
        if (t[i] < 0 || t[i] >= tgt_vocab) {
            PyErr_SetString(PyExc_ValueError, "target ids must be in [0, target vocabulary)");
            return -1;
        }
    a->corpus = (wa_corpus){s, t, PyArray_DATA(a->src_off), PyArray_DATA(a->tgt_off),
                            (long)PyArray_DIM(a->src_off, 0) - 1, src_vocab, tgt_vocab};
    return 0;
}

/* The table from Python's three arrays (checked for consistent sizes). */
static int table_view(wa_table *t, PyObject *row_start, PyObject *cols, PyObject *prob,
                      PyArrayObject **held, int src_vocab, int tgt_vocab) {
    /* held[0..2] own the three arrays on return (also on failure) */
    if (!(held[0] = arg_int64_vector(row_start, "row_start")) ||
        !(held[1] = arg_int32_vector(cols, "cols")))
        return -1;
    if (!PyArray_Check(prob) || PyArray_TYPE((PyArrayObject *)prob) != NPY_FLOAT64 ||
        PyArray_NDIM((PyArrayObject *)prob) != 1 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)prob) ||
        !PyArray_ISWRITEABLE((PyArrayObject *)prob)) {
        PyErr_SetString(PyExc_TypeError, "prob must be a writable contiguous float64 vector");
        return -1;
    }
    held[2] = (PyArrayObject *)prob;
    Py_INCREF(prob);
    npy_intp n = PyArray_DIM(held[1], 0);
    const int64_t *rs = PyArray_DATA(held[0]);
    if (PyArray_DIM(held[0], 0) != src_vocab + 1 || rs[0] != 0 || rs[src_vocab] != n ||
        PyArray_DIM(held[2], 0) != n) {
        PyErr_SetString(PyExc_ValueError, "the translation table does not fit the vocabulary");
        return -1;
    }
    const int32_t *cols_data = PyArray_DATA(held[1]);
    for (npy_intp x = 0; x < n; x++)
        if (cols_data[x] < 0 || cols_data[x] >= tgt_vocab) {
            PyErr_SetString(PyExc_ValueError,
                            "cols must hold target ids in [0, target vocabulary)");
            return -1;
        }
    for (int e = 0; e < src_vocab; e++)
        if (rs[e + 1] < rs[e]) {
            PyErr_SetString(PyExc_ValueError, "row_start must not decrease");
            return -1;
        }
    *t = (wa_table){(int64_t *)rs, PyArray_DATA(held[1]), PyArray_DATA(held[2]), n, src_vocab};
    return 0;
}

static PyObject *py_wa_build_table(PyObject *self, PyObject *args) {
    PyObject *src, *src_off, *tgt, *tgt_off;
    int src_vocab, tgt_vocab;
    if (!PyArg_ParseTuple(args, "OOOOii", &src, &src_off, &tgt, &tgt_off, &src_vocab, &tgt_vocab))
        return NULL;
    corpus_args a = {0};
    PyObject *result = NULL;
    if (parse_corpus(&a, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab) < 0) goto done;
    wa_table t;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = wa_table_build(&t, &a.corpus);
    Py_END_ALLOW_THREADS
    if (status == -2) {
        PyErr_SetString(PyExc_ValueError, "the corpus has more than 2**31 - 1 distinct "
                                          "(source word, target word) pairs");
        goto done;
    }
    if (status < 0) {
        PyErr_NoMemory();
        goto done;
    }
    npy_intp rows = t.rows + 1, n = t.n_entries;
    PyObject *rs = PyArray_SimpleNew(1, &rows, NPY_INT64);
    PyObject *cols = PyArray_SimpleNew(1, &n, NPY_INT32);
    PyObject *prob = PyArray_SimpleNew(1, &n, NPY_FLOAT64);
    if (rs && cols && prob) {
        memcpy(PyArray_DATA((PyArrayObject *)rs), t.row_start, sizeof(int64_t) * rows);
        memcpy(PyArray_DATA((PyArrayObject *)cols), t.cols, sizeof(int32_t) * n);
        memcpy(PyArray_DATA((PyArrayObject *)prob), t.prob, sizeof(double) * n);
        result = Py_BuildValue("(OOO)", rs, cols, prob);
    }
    Py_XDECREF(rs);
    Py_XDECREF(cols);
    Py_XDECREF(prob);
    wa_table_free(&t);
done:
    release_corpus(&a);
    return result;
}

/* A corpus, its table and (optionally) its cached link indices: what every
 * EM and decoding call takes. */
typedef struct {
    corpus_args corpus;
    PyArrayObject *held[4]; /* row_start, cols, prob, links */
    wa_table table;
    int64_t *link_off;      /* [n_pairs + 1] */
    wa_links links;
} model_args;

static void release_model(model_args *m) {
    release_corpus(&m->corpus);
    for (int i = 0; i < 4; i++) Py_XDECREF(m->held[i]);
    free(m->link_off);
}

/* links: None, or the int32 vector wa_links returned for this corpus and table
 * (used in place; every index checked to be in [-1, n_entries)). */
static int parse_model(model_args *m, PyObject *rs, PyObject *cols, PyObject *prob, PyObject *src,
                       PyObject *src_off, PyObject *tgt, PyObject *tgt_off, int src_vocab,
                       int tgt_vocab, PyObject *links) {
    if (parse_corpus(&m->corpus, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab) < 0 ||
        table_view(&m->table, rs, cols, prob, m->held, src_vocab, tgt_vocab) < 0)
        return -1;
    if (m->table.n_entries > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "the translation table has more than 2**31 - 1 entries");
        return -1;
    }
    const wa_corpus *c = &m->corpus.corpus;
    if (!(m->link_off = malloc(sizeof(int64_t) * (c->n_pairs + 1)))) {
        PyErr_NoMemory();
        return -1;
    }
    wa_link_offsets(m->link_off, c);
    m->links = (wa_links){m->link_off, NULL};
    if (!links || links == Py_None) return 0;
    PyArrayObject *l = (PyArrayObject *)links;
    if (!PyArray_Check(links) || PyArray_TYPE(l) != NPY_INT32 || PyArray_NDIM(l) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(l)) {
        PyErr_SetString(PyExc_TypeError, "links must be a contiguous int32 vector (or None)");
        return -1;
    }
    m->held[3] = l;
    Py_INCREF(links);
    if (PyArray_DIM(l, 0) != m->link_off[c->n_pairs]) {
        PyErr_SetString(PyExc_ValueError, "links does not fit the corpus");
        return -1;
    }
    const int32_t *x = PyArray_DATA(l);
    for (npy_intp i = 0; i < PyArray_DIM(l, 0); i++)
        if (x[i] < -1 || x[i] >= m->table.n_entries) {
            PyErr_SetString(PyExc_ValueError, "links does not fit the translation table");
            return -1;
        }
    m->links.index = x;
    return 0;
}

/* For training: every link of the corpus must be in the table (the table was
 * built from this corpus). */
static int check_training_links(model_args *m) {
    const wa_corpus *c = &m->corpus.corpus;
    if (m->links.index) {
        for (int64_t x = 0; x < m->link_off[c->n_pairs]; x++)
            if (m->links.index[x] < 0) goto missing;
        return 0;
    }
    for (long k = 0; k < c->n_pairs; k++)
        for (int64_t j = c->tgt_off[k]; j < c->tgt_off[k + 1]; j++) {
            if (wa_table_find(&m->table, 0, c->tgt[j]) < 0) goto missing;
            for (int64_t i = c->src_off[k]; i < c->src_off[k + 1]; i++)
                if (wa_table_find(&m->table, c->src[i], c->tgt[j]) < 0) goto missing;
        }
    return 0;
missing:
    PyErr_SetString(PyExc_ValueError, "the translation table lacks a word pair of the corpus");
    return -1;
}

/* The iteration count and Dirichlet alpha of an EM call: ValueError unless
 * iterations >= 0 and alpha is finite and >= 0. */
static int check_em_args(int iterations, double alpha) {
    if (iterations < 0) {
        PyErr_Format(PyExc_ValueError, "iterations must be >= 0, got %d", iterations);
        return -1;
    }
    if (!isfinite(alpha) || alpha < 0) {
        PyErr_SetString(PyExc_ValueError, "alpha must be a finite number >= 0");
        return -1;
    }
    return 0;
}

/* After EM iteration `it` (from 0): MemoryError when the kernel could not
 * allocate (status < 0), FloatingPointError when the log-likelihood is not
 * finite (the probabilities broke down: the table is then unusable). */
static int check_em_step(int status, double loglik, int it, int iterations, double alpha) {
    if (status < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (isfinite(loglik)) return 0;
    /* alpha > 0's update is exp(digamma(count + alpha) - ...), and
     * exp(digamma(x)) ~ exp(-1 / x) underflows to 0 below x ~ 1 / 745: with a
     * tiny alpha, every rarely counted link of a word can get probability 0 */
    char message[640];
    snprintf(message, sizeof message,
             "EM iteration %d of %d: the log-likelihood is %s: the model's probabilities broke "
             "down (some sentence pair got probability 0, or a value overflowed), and its "
             "parameters are no longer usable%s",
             it + 1, iterations, isnan(loglik) ? "NaN" : "-inf",
             alpha > 0 && alpha < 0.002
                 ? "; an alpha below about 0.0015 rounds the translation probabilities of "
                   "rarely counted links to 0 (exp(digamma(alpha)) underflows): use alpha=0 "
                   "(plain EM) or alpha >= 0.002"
                 : "");
    PyErr_SetString(PyExc_FloatingPointError, message);
    return -1;
}

/* wa_links(table..., corpus..., vocabs) -> int32 [sum over pairs (I + 1) J]:
 * the table index of every link, to cache across EM iterations */
static PyObject *py_wa_links(PyObject *self, PyObject *args) {
    PyObject *rs, *cols, *prob, *src, *src_off, *tgt, *tgt_off;
    int src_vocab, tgt_vocab;
    if (!PyArg_ParseTuple(args, "OOOOOOOii", &rs, &cols, &prob, &src, &src_off, &tgt, &tgt_off,
                          &src_vocab, &tgt_vocab))
        return NULL;
    model_args m = {0};
    PyObject *result = NULL;
    if (parse_model(&m, rs, cols, prob, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab, NULL) < 0)
        goto done;
    npy_intp n = m.link_off[m.corpus.corpus.n_pairs];
    if (!(result = PyArray_SimpleNew(1, &n, NPY_INT32))) goto done;
    int32_t *index = PyArray_DATA((PyArrayObject *)result);
    int threads = calign_num_threads(), status;
    Py_BEGIN_ALLOW_THREADS
    status = wa_links_fill(index, m.link_off, &m.table, &m.corpus.corpus, threads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        Py_CLEAR(result);
        PyErr_NoMemory();
    }
done:
    release_model(&m);
    return result;
}

/* wa_em(table..., corpus..., vocabs, model2, p0, tension, learn_tension,
 *       iterations, alpha, links) -> ([loglik], tension) */
static PyObject *py_wa_em(PyObject *self, PyObject *args) {
    PyObject *rs, *cols, *prob, *src, *src_off, *tgt, *tgt_off, *links;
    int src_vocab, tgt_vocab, iterations;
    wa_settings s = {0};
    if (!PyArg_ParseTuple(args, "OOOOOOOiipddpidO", &rs, &cols, &prob, &src, &src_off, &tgt,
                          &tgt_off, &src_vocab, &tgt_vocab, &s.model2, &s.p0, &s.tension,
                          &s.learn_tension, &iterations, &s.alpha, &links))
        return NULL;
    model_args m = {0};
    PyObject *result = NULL, *logliks = NULL;
    double *counts = NULL;
    if (check_em_args(iterations, s.alpha) < 0 ||
        parse_model(&m, rs, cols, prob, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab,
                    links) < 0 ||
        check_training_links(&m) < 0)
        goto done;
    int threads = calign_num_threads();
    if (!(counts = malloc(sizeof(double) * (m.table.n_entries + 1) * threads)) ||
        !(logliks = PyList_New(iterations))) {
        PyErr_NoMemory();
        goto done;
    }
    for (int it = 0; it < iterations; it++) {
        double ll = NAN;
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = wa_em_iteration(&m.table, &s, &m.corpus.corpus, &m.links, counts, threads, &ll);
        Py_END_ALLOW_THREADS
        if (check_em_step(status, ll, it, iterations, s.alpha) < 0) goto done;
        PyList_SET_ITEM(logliks, it, PyFloat_FromDouble(ll));
    }
    result = Py_BuildValue("(Od)", logliks, s.tension);
done:
    free(counts);
    Py_XDECREF(logliks);
    release_model(&m);
    return result;
}

/* wa_posteriors(table..., corpus..., vocabs, model2, p0, tension) -> float64
 * [sum over pairs J (I + 1)]: pair k's [J, I + 1] block (column 0 NULL) after
 * the blocks of the pairs before it */
static PyObject *py_wa_posteriors(PyObject *self, PyObject *args) {
    PyObject *rs, *cols, *prob, *src, *src_off, *tgt, *tgt_off;
    int src_vocab, tgt_vocab;
    wa_settings s = {0};
    if (!PyArg_ParseTuple(args, "OOOOOOOiipdd", &rs, &cols, &prob, &src, &src_off, &tgt,
                          &tgt_off, &src_vocab, &tgt_vocab, &s.model2, &s.p0, &s.tension))
        return NULL;
    model_args m = {0};
    PyObject *result = NULL;
    if (parse_model(&m, rs, cols, prob, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab, NULL) < 0)
        goto done;
    npy_intp n = m.link_off[m.corpus.corpus.n_pairs];
    if (!(result = PyArray_SimpleNew(1, &n, NPY_FLOAT64))) goto done;
    double *out = PyArray_DATA((PyArrayObject *)result);
    int threads = calign_num_threads();
    Py_BEGIN_ALLOW_THREADS
    wa_posteriors(out, m.link_off, &m.table, &s, &m.corpus.corpus, threads);
    Py_END_ALLOW_THREADS
done:
    release_model(&m);
    return result;
}

/* The HMM's jump weights: a writable float64 vector of 2 * max_jump + 1. */
static int jump_view(wa_hmm *h, PyObject *jump, double p0, double alpha, PyArrayObject **held) {
    if (!PyArray_Check(jump) || PyArray_TYPE((PyArrayObject *)jump) != NPY_FLOAT64 ||
        PyArray_NDIM((PyArrayObject *)jump) != 1 || !PyArray_ISWRITEABLE((PyArrayObject *)jump) ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)jump) ||
        PyArray_DIM((PyArrayObject *)jump, 0) % 2 != 1 ||
        PyArray_DIM((PyArrayObject *)jump, 0) < 3 ||
        PyArray_DIM((PyArrayObject *)jump, 0) > 2 * WA_MAX_JUMP + 1) {
        PyErr_Format(PyExc_TypeError, "jump must be a writable float64 vector of odd length "
                                      "3 to %d", 2 * WA_MAX_JUMP + 1);
        return -1;
    }
    *held = (PyArrayObject *)jump;
    Py_INCREF(jump);
    *h = (wa_hmm){p0, (int)(PyArray_DIM(*held, 0) / 2), PyArray_DATA(*held), alpha};
    return 0;
}

/* wa_hmm_em(table..., corpus..., vocabs, p0, jump, iterations, alpha, links) -> [loglik] */
static PyObject *py_wa_hmm_em(PyObject *self, PyObject *args) {
    PyObject *rs, *cols, *prob, *src, *src_off, *tgt, *tgt_off, *jump, *links;
    int src_vocab, tgt_vocab, iterations;
    double p0, alpha;
    if (!PyArg_ParseTuple(args, "OOOOOOOiidOidO", &rs, &cols, &prob, &src, &src_off, &tgt,
                          &tgt_off, &src_vocab, &tgt_vocab, &p0, &jump, &iterations, &alpha,
                          &links))
        return NULL;
    model_args m = {0};
    PyArrayObject *held_jump = NULL;
    PyObject *result = NULL;
    double *counts = NULL;
    wa_hmm h;
    if (check_em_args(iterations, alpha) < 0 ||
        parse_model(&m, rs, cols, prob, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab,
                    links) < 0 ||
        check_training_links(&m) < 0 || jump_view(&h, jump, p0, alpha, &held_jump) < 0)
        goto done;
    int threads = calign_num_threads();
    if (!(counts = malloc(sizeof(double) * (m.table.n_entries + 1) * threads)) ||
        !(result = PyList_New(iterations))) {
        PyErr_NoMemory();
        goto done;
    }
    for (int it = 0; it < iterations; it++) {
        double ll = NAN;
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = wa_hmm_em_iteration(&m.table, &h, &m.corpus.corpus, &m.links, counts, threads,
                                     &ll);
        Py_END_ALLOW_THREADS
        if (check_em_step(status, ll, it, iterations, alpha) < 0) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, it, PyFloat_FromDouble(ll));
    }
done:
    free(counts);
    Py_XDECREF(held_jump);
    release_model(&m);
    return result;
}

/* wa_hmm_agreement(forward: table..., corpus..., vocabs, p0, jump, alpha, links,
 *                  reverse: the same, iterations) -> [loglik forward + reverse] */
static PyObject *py_wa_hmm_agreement(PyObject *self, PyObject *args) {
    PyObject *o[2][10];
    int vocab[2][2], iterations;
    double p0[2], alpha[2];
    if (!PyArg_ParseTuple(args, "OOOOOOOiidOdOOOOOOOOiidOdOi", &o[0][0], &o[0][1], &o[0][2],
                          &o[0][3], &o[0][4], &o[0][5], &o[0][6], &vocab[0][0], &vocab[0][1],
                          &p0[0], &o[0][7], &alpha[0], &o[0][8], &o[1][0], &o[1][1], &o[1][2],
                          &o[1][3], &o[1][4], &o[1][5], &o[1][6], &vocab[1][0], &vocab[1][1],
                          &p0[1], &o[1][7], &alpha[1], &o[1][8], &iterations))
        return NULL;
    model_args m[2];
    memset(m, 0, sizeof m);
    PyArrayObject *held_jump[2] = {NULL, NULL};
    PyObject *result = NULL;
    double *counts[2] = {NULL, NULL};
    wa_hmm h[2];
    if (check_em_args(iterations, alpha[0]) < 0 || check_em_args(iterations, alpha[1]) < 0)
        goto done;
    for (int d = 0; d < 2; d++)
        if (parse_model(&m[d], o[d][0], o[d][1], o[d][2], o[d][3], o[d][4], o[d][5], o[d][6],
                        vocab[d][0], vocab[d][1], o[d][8]) < 0 ||
            check_training_links(&m[d]) < 0 ||
            jump_view(&h[d], o[d][7], p0[d], alpha[d], &held_jump[d]) < 0)
            goto done;
    const wa_corpus *cf = &m[0].corpus.corpus, *cr = &m[1].corpus.corpus;
    if (cf->n_pairs != cr->n_pairs) {
        PyErr_SetString(PyExc_ValueError, "the two directions' corpora differ in pairs");
        goto done;
    }
    for (long k = 0; k < cf->n_pairs; k++)
        if (cf->src_off[k + 1] - cf->src_off[k] != cr->tgt_off[k + 1] - cr->tgt_off[k] ||
            cf->tgt_off[k + 1] - cf->tgt_off[k] != cr->src_off[k + 1] - cr->src_off[k]) {
            PyErr_Format(PyExc_ValueError, "pair %ld: the reverse corpus must be the forward "
                                           "one with its sides swapped", k);
            goto done;
        }
    int threads = calign_num_threads();
    if (!(counts[0] = malloc(sizeof(double) * (m[0].table.n_entries + 1) * threads)) ||
        !(counts[1] = malloc(sizeof(double) * (m[1].table.n_entries + 1) * threads)) ||
        !(result = PyList_New(iterations))) {
        PyErr_NoMemory();
        goto done;
    }
    for (int it = 0; it < iterations; it++) {
        double ll = NAN;
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = wa_hmm_agreement_iteration(&m[0].table, &h[0], cf, &m[0].links, counts[0],
                                            &m[1].table, &h[1], cr, &m[1].links, counts[1],
                                            threads, &ll);
        Py_END_ALLOW_THREADS
        if (check_em_step(status, ll, it, iterations, alpha[0] < alpha[1] ? alpha[0] : alpha[1])
            < 0) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, it, PyFloat_FromDouble(ll));
    }
done:
    for (int d = 0; d < 2; d++) {
        free(counts[d]);
        Py_XDECREF(held_jump[d]);
        release_model(&m[d]);
    }
    return result;
}

/* wa_fertility_sample(table..., corpus..., vocabs, p0, jump, links, align,
 *                     max_fertility, prior, sweeps, burn_in, seed) -> float64 link
 * frequencies laid out as wa_posteriors'; align (int32, one per target word)
 * ends as the last sample */
static PyObject *py_wa_fertility_sample(PyObject *self, PyObject *args) {
    PyObject *rs, *cols, *prob, *src, *src_off, *tgt, *tgt_off, *jump, *links, *align_obj;
    int src_vocab, tgt_vocab;
    double p0;
    unsigned long long seed;
    wa_fertility fs;
    if (!PyArg_ParseTuple(args, "OOOOOOOiidOOOidiiK", &rs, &cols, &prob, &src, &src_off, &tgt,
                          &tgt_off, &src_vocab, &tgt_vocab, &p0, &jump, &links, &align_obj,
                          &fs.max_fertility, &fs.prior, &fs.sweeps, &fs.burn_in, &seed))
        return NULL;
    fs.seed = seed;
    model_args m;
    memset(&m, 0, sizeof m);
    PyArrayObject *held_jump = NULL;
    PyObject *post = NULL;
    wa_hmm h;
    if (parse_model(&m, rs, cols, prob, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab,
                    links) < 0 ||
        jump_view(&h, jump, p0, 0.0, &held_jump) < 0)
        goto done;
    if (fs.max_fertility < 1 || fs.max_fertility > 64 || !(fs.prior > 0) || fs.sweeps < 0 ||
        fs.burn_in < 0) {
        PyErr_SetString(PyExc_ValueError, "max_fertility must be in [1, 64], prior > 0, "
                                          "sweeps >= 0 and burn_in >= 0");
        goto done;
    }
    const wa_corpus *c = &m.corpus.corpus;
    PyArrayObject *align = (PyArrayObject *)align_obj;
    if (!PyArray_Check(align_obj) || PyArray_TYPE(align) != NPY_INT32 || PyArray_NDIM(align) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(align) || !PyArray_ISWRITEABLE(align)) {
        PyErr_SetString(PyExc_TypeError, "align must be a writable contiguous int32 vector");
        goto done;
    }
    if (PyArray_DIM(align, 0) != c->tgt_off[c->n_pairs]) {
        PyErr_SetString(PyExc_ValueError, "align must hold one link per target word");
        goto done;
    }
    int32_t *a = PyArray_DATA(align);
    for (long k = 0; k < c->n_pairs; k++)
        for (int64_t j = c->tgt_off[k]; j < c->tgt_off[k + 1]; j++)
            if (a[j] < 0 || a[j] > c->src_off[k + 1] - c->src_off[k]) {
                PyErr_Format(PyExc_ValueError, "align: pair %ld links a target word to source "
                                               "position %d of %lld", k, (int)a[j],
                             (long long)(c->src_off[k + 1] - c->src_off[k]));
                goto done;
            }
    npy_intp size = m.link_off[c->n_pairs];
    if (!(post = PyArray_SimpleNew(1, &size, NPY_FLOAT64))) goto done;
    int threads = calign_num_threads(), status;
    double *out = PyArray_DATA((PyArrayObject *)post);
    Py_BEGIN_ALLOW_THREADS
    status = wa_fertility_sample(out, a, &m.table, &h, c, &m.links, &fs, threads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        Py_CLEAR(post);
        PyErr_NoMemory();
    }
done:
    Py_XDECREF(held_jump);
    release_model(&m);
    return post;
}

/* A contiguous float64 vector, used in place (posteriors are corpus-sized). */
static PyArrayObject *f64_in_place(PyObject *obj, const char *name) {
    PyArrayObject *a = (PyArrayObject *)obj;
    if (!PyArray_Check(obj) || PyArray_TYPE(a) != NPY_FLOAT64 || PyArray_NDIM(a) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous float64 vector", name);
        return NULL;
    }
    Py_INCREF(obj);
    return a;
}

/* wa_soft_union(source_offsets, target_offsets, forward, reverse, threshold) ->
 * uint8 [sum over pairs I J]: pair k's [I, J] links after the pairs before
 * it; forward and reverse are the posteriors of the two directions laid out
 * as wa_posteriors' ([J, I + 1] and [I, J + 1] blocks) */
static PyObject *py_wa_soft_union(PyObject *self, PyObject *args) {
    PyObject *src_off_obj, *tgt_off_obj, *fwd_obj, *rev_obj;
    double threshold;
    if (!PyArg_ParseTuple(args, "OOOOd", &src_off_obj, &tgt_off_obj, &fwd_obj, &rev_obj,
                          &threshold))
        return NULL;
    PyArrayObject *src_off = NULL, *tgt_off = NULL, *fwd = NULL, *rev = NULL;
    PyObject *keep = NULL;
    if (!(src_off = arg_int64_vector(src_off_obj, "source_offsets")) ||
        !(tgt_off = arg_int64_vector(tgt_off_obj, "target_offsets")) ||
        !(fwd = f64_in_place(fwd_obj, "forward")) || !(rev = f64_in_place(rev_obj, "reverse")))
        goto done;
    npy_intp n = PyArray_DIM(src_off, 0);
    const int64_t *so = PyArray_DATA(src_off), *to = PyArray_DATA(tgt_off);
    if (n < 1 || PyArray_DIM(tgt_off, 0) != n || so[0] != 0 || to[0] != 0) {
        PyErr_SetString(PyExc_ValueError, "source_offsets and target_offsets must have the same "
                                          "length and start at 0");
        goto done;
    }
    int64_t n_f = 0, n_r = 0, n_keep = 0;
    for (npy_intp k = 0; k + 1 < n; k++) {
        int64_t n_src = so[k + 1] - so[k], n_tgt = to[k + 1] - to[k];
        if (n_src < 0 || n_tgt < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "source_offsets and target_offsets must not decrease");
            goto done;
        }
        n_f += (n_src + 1) * n_tgt;
        n_r += (n_tgt + 1) * n_src;
        n_keep += n_src * n_tgt;
    }
    if (PyArray_DIM(fwd, 0) != n_f || PyArray_DIM(rev, 0) != n_r) {
        int bad_fwd = PyArray_DIM(fwd, 0) != n_f;
        PyErr_Format(PyExc_ValueError, "%s has %zd posteriors but the offsets need %lld",
                     bad_fwd ? "forward" : "reverse",
                     (Py_ssize_t)PyArray_DIM(bad_fwd ? fwd : rev, 0),
                     (long long)(bad_fwd ? n_f : n_r));
        goto done;
    }
    npy_intp dims = n_keep;
    if (!(keep = PyArray_SimpleNew(1, &dims, NPY_UINT8))) goto done;
    wa_corpus c = {NULL, NULL, so, to, (long)n - 1, 0, 0};
    uint8_t *out = PyArray_DATA((PyArrayObject *)keep);
    const double *f = PyArray_DATA(fwd), *r = PyArray_DATA(rev);
    Py_BEGIN_ALLOW_THREADS
    wa_soft_union(out, f, r, &c, threshold);
    Py_END_ALLOW_THREADS
done:
    Py_XDECREF(src_off);
    Py_XDECREF(tgt_off);
    Py_XDECREF(fwd);
    Py_XDECREF(rev);
    return keep;
}

/* wa_hmm_decode(table..., corpus..., vocabs, p0, jump, viterbi, links) -> int32
 * [all target words] (viterbi: source position 1..I, or 0 for NULL) or
 * float64 posteriors laid out as wa_posteriors' */
static PyObject *py_wa_hmm_decode(PyObject *self, PyObject *args) {
    PyObject *rs, *cols, *prob, *src, *src_off, *tgt, *tgt_off, *jump, *links;
    int src_vocab, tgt_vocab, viterbi;
    double p0;
    if (!PyArg_ParseTuple(args, "OOOOOOOiidOpO", &rs, &cols, &prob, &src, &src_off, &tgt,
                          &tgt_off, &src_vocab, &tgt_vocab, &p0, &jump, &viterbi, &links))
        return NULL;
    model_args m = {0};
    PyArrayObject *held_jump = NULL;
    PyObject *result = NULL;
    wa_hmm h;
    if (parse_model(&m, rs, cols, prob, src, src_off, tgt, tgt_off, src_vocab, tgt_vocab,
                    links) < 0 ||
        jump_view(&h, jump, p0, 0.0, &held_jump) < 0)
        goto done;
    const wa_corpus *c = &m.corpus.corpus;
    npy_intp n = viterbi ? c->tgt_off[c->n_pairs] : m.link_off[c->n_pairs];
    if (!(result = PyArray_SimpleNew(1, &n, viterbi ? NPY_INT32 : NPY_FLOAT64))) goto done;
    void *out = PyArray_DATA((PyArrayObject *)result);
    int threads = calign_num_threads(), status;
    Py_BEGIN_ALLOW_THREADS
    status = viterbi ? wa_hmm_viterbi(out, &m.table, &h, c, &m.links, threads)
                     : wa_hmm_posteriors(out, &m.table, &h, c, &m.links, threads);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        Py_CLEAR(result);
        PyErr_NoMemory();
    }
done:
    Py_XDECREF(held_jump);
    release_model(&m);
    return result;
}

/* ot_cost(x [n, d], y [m, d], distortion) -> cost [n, m] */
static PyObject *py_ot_cost(PyObject *self, PyObject *args) {
    PyObject *x_obj, *y_obj;
    double distortion;
    if (!PyArg_ParseTuple(args, "OOd", &x_obj, &y_obj, &distortion)) return NULL;
    PyArrayObject *x = NULL, *y = NULL;
    PyObject *cost = NULL;
    if (!(x = arg_f64_matrix(x_obj, "source_embeddings", 1)) ||
        !(y = arg_f64_matrix(y_obj, "target_embeddings", 1)))
        goto done;
    if (PyArray_DIM(x, 1) != PyArray_DIM(y, 1)) {
        PyErr_SetString(PyExc_ValueError,
                        "source_embeddings and target_embeddings differ in dimension");
        goto done;
    }
    npy_intp dims[2] = {PyArray_DIM(x, 0), PyArray_DIM(y, 0)};
    if (!(cost = PyArray_ZEROS(2, dims, NPY_FLOAT64, 0))) goto done;
    ot_cosine_cost(PyArray_DATA((PyArrayObject *)cost), PyArray_DATA(x), PyArray_DATA(y),
                   (int)dims[0], (int)dims[1], (int)PyArray_DIM(x, 1), distortion);
done:
    Py_XDECREF(x);
    Py_XDECREF(y);
    return cost;
}

/* ot_transport(cost [n, m], a [n], b [m], kind, eps, tau, mass, max_iterations,
 * tolerance) -> (plan, iterations); kind 0 balanced, 1 unbalanced, 2 partial */
static PyObject *py_ot_transport(PyObject *self, PyObject *args) {
    PyObject *cost_obj, *a_obj, *b_obj;
    int kind, max_iterations;
    double eps, tau, mass, tolerance;
    if (!PyArg_ParseTuple(args, "OOOidddid", &cost_obj, &a_obj, &b_obj, &kind, &eps, &tau, &mass,
                          &max_iterations, &tolerance))
        return NULL;
    PyArrayObject *cost = NULL, *a = NULL, *b = NULL;
    PyObject *plan = NULL, *result = NULL;
    double *work = NULL;
    if (!(cost = arg_f64_matrix(cost_obj, "cost", 1)) || !(a = arg_f64_vector(a_obj, "a", 1)) ||
        !(b = arg_f64_vector(b_obj, "b", 1)))
        goto done;
    int n = (int)PyArray_DIM(cost, 0), m = (int)PyArray_DIM(cost, 1);
    if (check_length(a, "a", n, "cost's rows") < 0 || check_length(b, "b", m, "cost's columns") < 0)
        goto done;
    npy_intp dims[2] = {n, m};
    if (!(plan = PyArray_ZEROS(2, dims, NPY_FLOAT64, 0))) goto done;
    if (n == 0 || m == 0) {
        result = Py_BuildValue("(Oi)", plan, 0);
        goto done;
    }
    int iterations;
    if (kind == 2 && !(work = malloc(sizeof(double) * 5 * (size_t)n * m))) {
        PyErr_NoMemory();
        goto done;
    }
    double *P = PyArray_DATA((PyArrayObject *)plan);
    const double *C = PyArray_DATA(cost), *A = PyArray_DATA(a), *B = PyArray_DATA(b);
    Py_BEGIN_ALLOW_THREADS
    iterations = kind == 0 ? ot_sinkhorn(P, C, A, B, n, m, eps, max_iterations, tolerance)
                 : kind == 1 ? ot_sinkhorn_unbalanced(P, C, A, B, n, m, eps, tau, max_iterations,
                                                      tolerance)
                             : ot_sinkhorn_partial(P, C, A, B, n, m, eps, mass, max_iterations,
                                                   tolerance, work);
    Py_END_ALLOW_THREADS
    if (iterations < 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_BuildValue("(Oi)", plan, iterations);
done:
    free(work);
    Py_XDECREF(plan);
    Py_XDECREF(cost);
    Py_XDECREF(a);
    Py_XDECREF(b);
    return result;
}

PyMethodDef calign_wordalign_methods[] = {
    {"ot_cost", py_ot_cost, METH_VARARGS, "1 - cosine (+ distortion) between two embedding sets."},
    {"ot_transport", py_ot_transport, METH_VARARGS, "Entropic OT plan in the log domain."},
    {"wa_hmm_em", py_wa_hmm_em, METH_VARARGS, "EM iterations of the HMM aligner, in place."},
    {"wa_hmm_agreement", py_wa_hmm_agreement, METH_VARARGS,
     "EM iterations of two HMM aligners trained by agreement, in place."},
    {"wa_fertility_sample", py_wa_fertility_sample, METH_VARARGS,
     "Gibbs sampling of the fertility HMM from HMM links."},
    {"wa_soft_union", py_wa_soft_union, METH_VARARGS,
     "Links whose two directional posteriors average above a threshold."},
    {"wa_links", py_wa_links, METH_VARARGS, "Table index of every link of a corpus."},
    {"wa_hmm_decode", py_wa_hmm_decode, METH_VARARGS, "Viterbi links or posteriors of the HMM."},
    {"wa_build_table", py_wa_build_table, METH_VARARGS, "Sparse translation table of a corpus."},
    {"wa_em", py_wa_em, METH_VARARGS, "EM iterations of IBM Model 1 or 2, in place."},
    {"wa_posteriors", py_wa_posteriors, METH_VARARGS, "Link posteriors of each pair."},
    {NULL, NULL, 0, NULL},
};
