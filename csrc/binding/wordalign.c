/* Bindings of word alignment (calign.wordalign).
 *
 * A model (IBM1, IBM2 or HMM) is a capsule holding a wa_model
 * (wordalign/model.h): settings, translation table and jump weights live in
 * C; wa_model_settings and wa_model_table export copies for save(), and
 * wa_model_new and wa_model_set_table build one back for load(). One call at
 * a time per model: a second thread gets a RuntimeError. A corpus is four
 * flat arrays (source ids, source offsets, target ids, target offsets) that
 * calign.wordalign.corpus builds. */
#include "binding/common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/threads.h"
#include "wordalign/combine.h"
#include "wordalign/decode.h"
#include "wordalign/sinkhorn.h"
#include "wordalign/train.h"

#define MODEL_CAPSULE "calign.wordalign.model"

/* ---- models --------------------------------------------------------------------- */

typedef struct {
    wa_model m;
    int busy; /* a call is using the model (and may have released the GIL) */
} model_handle;

typedef struct {
    const char *name;
    model_handle *h;
    int held; /* this call marked the model busy */
} model_arg;

static void model_destructor(PyObject *capsule) {
    model_handle *h = PyCapsule_GetPointer(capsule, MODEL_CAPSULE);
    if (h) {
        wa_model_free(&h->m);
        free(h);
    }
}

/* O& converter: a capsule of wa_model_new's. */
static int to_model(PyObject *obj, void *arg) {
    model_arg *a = arg;
    if (!PyCapsule_IsValid(obj, MODEL_CAPSULE)) {
        PyErr_Format(PyExc_TypeError, "%s must be a word-alignment model (wa_model_new's), not "
                                      "%.200s", a->name, Py_TYPE(obj)->tp_name);
        return 0;
    }
    a->h = PyCapsule_GetPointer(obj, MODEL_CAPSULE);
    return 1;
}

/* Marks the model busy for the rest of the call, from right after parsing
 * (so that no other call changes it under the checks that follow);
 * RuntimeError while another thread's call has it. */
static int hold(model_arg *a) {
    if (a->h->busy) {
        PyErr_Format(PyExc_RuntimeError, "%s is being used by another thread; calls on one model "
                                         "must not overlap", a->name);
        return -1;
    }
    a->h->busy = a->held = 1;
    return 0;
}

static void unhold(model_arg *a) {
    if (a->held) a->h->busy = a->held = 0;
}

/* wa_model_new(kind, p0=0, tension=0, learn_tension=False, alpha=0, max_jump=0,
 * jump=None) -> model; kind "ibm1", "ibm2" or "hmm"; jump None: uniform */
static PyObject *py_wa_model_new(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"kind", "p0", "tension", "learn_tension", "alpha", "max_jump",
                             "jump", NULL};
    const char *kind_name;
    real_arg p0 = {"p0", 0.0, 1.0, 0, 1, 0.0}, tension = {"tension", 0.0, INFINITY, 0, 0, 0.0};
    real_arg alpha = {"alpha", 0.0, INFINITY, 0, 0, 0.0};
    int learn_tension = 0;
    int_arg max_jump = {"max_jump", 0, WA_MAX_JUMP, 0};
    array_arg jump = {"jump"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|O&O&pO&O&O&:wa_model_new", kwlist,
                                     &kind_name, to_real, &p0, to_real, &tension, &learn_tension,
                                     to_real, &alpha, to_int, &max_jump, to_f64_vector_or_none,
                                     &jump))
        return NULL;
    PyObject *capsule = NULL;
    int kind = name_index(kind_name, "kind", wa_kind_names, WA_N_KINDS);
    model_handle *h = NULL;
    char err[CALIGN_ERR_LEN] = "";
    if (kind < 0) goto done;
    if (!(h = calloc(1, sizeof *h))) {
        PyErr_NoMemory();
        goto done;
    }
    int status = wa_model_init(&h->m, kind, p0.value, tension.value, learn_tension, alpha.value,
                               (int)max_jump.value, jump.array ? ARG_DATA(double, jump) : NULL,
                               jump.array ? ARG_LEN(jump) : 0, err);
    if (raise_status(status, err) < 0) goto done;
    if ((capsule = PyCapsule_New(h, MODEL_CAPSULE, model_destructor))) h = NULL;
done:
    if (h) {
        wa_model_free(&h->m);
        free(h);
    }
    arg_release(&jump);
    return capsule;
}

/* wa_model_settings(model) -> {kind, p0, tension, learn_tension, alpha,
 * max_jump, jump (a copy; None but for an HMM)} */
static PyObject *py_wa_model_settings(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", NULL};
    model_arg model = {"model"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&:wa_model_settings", kwlist, to_model,
                                     &model) ||
        hold(&model) < 0)
        return NULL;
    const wa_model *m = &model.h->m;
    PyObject *jump = m->kind == WA_HMM ? vector_copy(m->jump, 2 * m->max_jump + 1, NPY_FLOAT64)
                                       : Py_NewRef(Py_None);
    unhold(&model);
    if (!jump) return NULL;
    return Py_BuildValue("{s:s,s:d,s:d,s:O,s:d,s:i,s:N}", "kind", wa_kind_names[m->kind], "p0",
                         m->p0, "tension", m->tension, "learn_tension",
                         m->learn_tension ? Py_True : Py_False, "alpha", m->alpha, "max_jump",
                         m->max_jump, "jump", jump);
}

/* wa_model_table(model) -> (row_start int64 [rows + 1], cols int32, prob
 * float64), copies; None before the model has a table */
static PyObject *py_wa_model_table(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", NULL};
    model_arg model = {"model"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&:wa_model_table", kwlist, to_model,
                                     &model) ||
        hold(&model) < 0)
        return NULL;
    const wa_table *t = &model.h->m.table;
    if (t->rows == 0) {
        unhold(&model);
        Py_RETURN_NONE;
    }
    PyObject *arrays[3] = {vector_copy(t->row_start, t->rows + 1, NPY_INT64),
                           vector_copy(t->cols, t->n_entries, NPY_INT32),
                           vector_copy(t->prob, t->n_entries, NPY_FLOAT64)};
    unhold(&model);
    PyObject *result = arrays[0] && arrays[1] && arrays[2]
                           ? PyTuple_Pack(3, arrays[0], arrays[1], arrays[2])
                           : NULL;
    for (int i = 0; i < 3; i++) Py_XDECREF(arrays[i]);
    return result;
}

/* wa_model_set_table(model, row_start, cols, prob, target_vocabulary_size):
 * the model's table becomes a copy of a saved one (wa_model_table's arrays) */
static PyObject *py_wa_model_set_table(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "row_start", "cols", "prob", "target_vocabulary_size",
                             NULL};
    model_arg model = {"model"};
    array_arg row_start = {"row_start"}, cols = {"cols"}, prob = {"prob"};
    int_arg tgt_vocab = {"target_vocabulary_size", 1, INT32_MAX, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&O&:wa_model_set_table", kwlist,
                                     to_model, &model, to_int64_vector, &row_start,
                                     to_int64_vector, &cols, to_f64_vector, &prob, to_int,
                                     &tgt_vocab))
        return NULL;
    PyObject *result = NULL;
    char err[CALIGN_ERR_LEN] = "";
    if (hold(&model) < 0) goto done;
    if (ARG_LEN(row_start) < 1) {
        PyErr_SetString(PyExc_ValueError, "row_start must hold at least one offset");
        goto done;
    }
    if (check_rows(&prob, ARG_LEN(cols), "cols") < 0 ||
        narrow_to_int32(&cols, 1, tgt_vocab.value, "target ids of target_vocabulary_size") < 0)
        goto done;
    int status = wa_model_set_table(&model.h->m, ARG_DATA(int64_t, row_start),
                                    ARG_LEN(row_start) - 1, ARG_DATA(int32_t, cols),
                                    ARG_DATA(double, prob), ARG_LEN(cols), (int)tgt_vocab.value,
                                    err);
    if (raise_status(status, err) == 0) result = Py_NewRef(Py_None);
done:
    unhold(&model);
    arg_release(&row_start);
    arg_release(&cols);
    arg_release(&prob);
    return result;
}

/* ---- corpora -------------------------------------------------------------------- */

typedef struct {
    array_arg src, src_off, tgt, tgt_off;
    wa_corpus corpus;
} corpus_arg;

#define CORPUS_ARG {{"source_ids"}, {"source_offsets"}, {"target_ids"}, {"target_offsets"}}
#define CORPUS_KEYWORDS "source_ids", "source_offsets", "target_ids", "target_offsets"
#define CORPUS_FORMAT "O&O&O&O&"
#define CORPUS_CONVERTERS(a)                                                                  \
    to_int64_vector, &(a).src, to_int64_vector, &(a).src_off, to_int64_vector, &(a).tgt,     \
        to_int64_vector, &(a).tgt_off

static void corpus_release(corpus_arg *a) {
    arg_release(&a->src);
    arg_release(&a->src_off);
    arg_release(&a->tgt);
    arg_release(&a->tgt_off);
}

/* The corpus view, with source ids narrowed to [src_low, src_vocab) and
 * target ids to [tgt_low, tgt_vocab) (src_what, tgt_what: what the ranges
 * are) and the offsets checked. */
static int corpus_view(corpus_arg *a, int src_low, int src_vocab, const char *src_what,
                       int tgt_low, int tgt_vocab, const char *tgt_what) {
    if (narrow_to_int32(&a->src, src_low, src_vocab, src_what) < 0 ||
        narrow_to_int32(&a->tgt, tgt_low, tgt_vocab, tgt_what) < 0)
        return -1;
    if (ARG_LEN(a->src_off) < 1) {
        PyErr_SetString(PyExc_ValueError, "source_offsets must hold at least one offset (0)");
        return -1;
    }
    if (check_rows(&a->tgt_off, ARG_LEN(a->src_off), "source_offsets") < 0) return -1;
    a->corpus = (wa_corpus){ARG_DATA(int32_t, a->src), ARG_DATA(int32_t, a->tgt),
                            ARG_DATA(int64_t, a->src_off), ARG_DATA(int64_t, a->tgt_off),
                            (long)ARG_LEN(a->src_off) - 1, src_vocab, tgt_vocab};
    char err[CALIGN_ERR_LEN] = "";
    return raise_status(wa_corpus_check(&a->corpus, ARG_LEN(a->src), ARG_LEN(a->tgt), err), err);
}

/* A training corpus of the model: every id in its vocabularies. */
static int training_corpus(corpus_arg *a, const wa_model *m) {
    if (m->table.rows == 0) {
        PyErr_SetString(PyExc_ValueError, "the model has no translation table: start it on a "
                                          "corpus first (wa_start)");
        return -1;
    }
    return corpus_view(a, 1, m->table.rows, "the model's source vocabulary", 1, m->tgt_vocab,
                       "the model's target vocabulary");
}

/* A corpus to decode: source id rows (the table's row count) is a word never
 * seen in training, target id 0 one too. */
static int decoding_corpus(corpus_arg *a, const wa_model *m) {
    if (m->table.rows == 0) {
        PyErr_SetString(PyExc_ValueError, "the model has no translation table: train or load it");
        return -1;
    }
    return corpus_view(a, 1, m->table.rows + 1,
                       "the model's source vocabulary, its size for a word unseen in training",
                       0, m->tgt_vocab, "the model's target vocabulary, 0 for an unseen word");
}

/* A list of n doubles. */
static PyObject *float_list(const double *x, int n) {
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *v = PyFloat_FromDouble(x[i]);
        if (!v) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* ---- training ------------------------------------------------------------------- */

/* wa_reducer's sum for a corpus sharded across processes: the Python callable
 * (calign.distributed.World.sum_in_place) on a float64 view of the C buffer,
 * called with the GIL, which training runs without. The view must not
 * outlive the call (training frees the buffer): a callable that keeps it
 * gets a RuntimeError. */
static int sum_over_processes(void *callable, double *values, int64_t n) {
    PyGILState_STATE gil = PyGILState_Ensure();
    npy_intp length = (npy_intp)n;
    int status = -1;
    PyObject *view = PyArray_SimpleNewFromData(1, &length, NPY_FLOAT64, values);
    if (view) {
        PyObject *result = PyObject_CallOneArg(callable, view);
        Py_XDECREF(result);
        if (result && Py_REFCNT(view) != 1)
            PyErr_SetString(PyExc_RuntimeError, "sum_in_place kept the array it was given, a "
                                                "view of memory training frees: it must sum in "
                                                "place and let it go");
        else if (result)
            status = 0;
        Py_DECREF(view);
    }
    PyGILState_Release(gil);
    return status;
}

typedef struct {
    wa_reducer reducer;
    const wa_reducer *sum; /* &reducer, or NULL for one process */
} reducer_arg;

/* O& converter of sum_in_place: None (one process holding the whole corpus)
 * or a callable summing a float64 array over the processes in place. */
static int to_reducer(PyObject *obj, void *arg) {
    reducer_arg *a = arg;
    if (obj == Py_None) return 1;
    if (!PyCallable_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "sum_in_place must be a callable or None, not %.200s",
                     Py_TYPE(obj)->tp_name);
        return 0;
    }
    a->reducer = (wa_reducer){sum_over_processes, obj}; /* the call's arguments hold obj */
    a->sum = &a->reducer;
    return 1;
}

/* wa_start(model, corpus..., source_vocabulary_size, target_vocabulary_size):
 * the model's table becomes a uniform one over the corpus's word pairs */
static PyObject *py_wa_start(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", CORPUS_KEYWORDS, "source_vocabulary_size",
                             "target_vocabulary_size", NULL};
    model_arg model = {"model"};
    corpus_arg c = CORPUS_ARG;
    int_arg src_vocab = {"source_vocabulary_size", 1, INT32_MAX - 1, 0};
    int_arg tgt_vocab = {"target_vocabulary_size", 1, INT32_MAX, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&" CORPUS_FORMAT "O&O&:wa_start", kwlist,
                                     to_model, &model, CORPUS_CONVERTERS(c), to_int, &src_vocab,
                                     to_int, &tgt_vocab))
        return NULL;
    PyObject *result = NULL;
    if (hold(&model) < 0 ||
        corpus_view(&c, 1, (int)src_vocab.value, "source_vocabulary_size", 1,
                    (int)tgt_vocab.value, "target_vocabulary_size") < 0)
        goto done;
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = wa_model_start(&model.h->m, &c.corpus, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) == 0) result = Py_NewRef(Py_None);
done:
    unhold(&model);
    corpus_release(&c);
    return result;
}

/* wa_train(model, corpus..., iterations, ibm1_iterations=0, link_cache_bytes=2**30,
 * sum_in_place=None) -> [log-likelihood of each iteration]: ibm1_iterations
 * of IBM Model 1 EM, then iterations of the model's own, on the corpus the
 * model was started on; or, with sum_in_place, on this process's shard of it,
 * the statistics of each iteration summed over the processes (wa_reducer) */
static PyObject *py_wa_train(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", CORPUS_KEYWORDS, "iterations", "ibm1_iterations",
                             "link_cache_bytes", "sum_in_place", NULL};
    model_arg model = {"model"};
    corpus_arg c = CORPUS_ARG;
    int_arg iterations = {"iterations", 0, INT_MAX, 0};
    int_arg ibm1_iterations = {"ibm1_iterations", 0, INT_MAX, 0};
    int_arg cache_bytes = {"link_cache_bytes", 0, INT64_MAX, 1 << 30};
    reducer_arg reducer = {{NULL, NULL}, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&" CORPUS_FORMAT "O&|$O&O&O&:wa_train",
                                     kwlist, to_model, &model, CORPUS_CONVERTERS(c), to_int,
                                     &iterations, to_int, &ibm1_iterations, to_int, &cache_bytes,
                                     to_reducer, &reducer))
        return NULL;
    PyObject *result = NULL;
    double *logliks = NULL;
    const long long n = iterations.value + ibm1_iterations.value;
    if (hold(&model) < 0 || training_corpus(&c, &model.h->m) < 0) goto done;
    if (n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "ibm1_iterations + iterations must be at most %d, got %lld",
                     INT_MAX, n);
        goto done;
    }
    if (!(logliks = malloc(sizeof(double) * (n + 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    char err[CALIGN_ERR_LEN] = "";
    int threads = calign_num_threads(), status;
    Py_BEGIN_ALLOW_THREADS
    status = wa_model_train(&model.h->m, &c.corpus, (int)ibm1_iterations.value,
                            (int)iterations.value, cache_bytes.value, reducer.sum, logliks,
                            threads, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) == 0) result = float_list(logliks, (int)n);
done:
    unhold(&model);
    free(logliks);
    corpus_release(&c);
    return result;
}

/* wa_train_joint(forward, reverse, corpus..., iterations, ibm1_iterations=0,
 * agreement=True, link_cache_bytes=2**30, sum_in_place=None) -> (forward's
 * IBM1 log-likelihoods, reverse's, the HMM iterations' summed over both):
 * forward started on the corpus, reverse on it with its sides swapped;
 * sum_in_place as wa_train's */
static PyObject *py_wa_train_joint(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"forward", "reverse", CORPUS_KEYWORDS, "iterations",
                             "ibm1_iterations", "agreement", "link_cache_bytes", "sum_in_place",
                             NULL};
    model_arg forward = {"forward"}, reverse = {"reverse"};
    corpus_arg c = CORPUS_ARG;
    int_arg iterations = {"iterations", 0, INT_MAX, 0};
    int_arg ibm1_iterations = {"ibm1_iterations", 0, INT_MAX / 2, 0};
    int_arg cache_bytes = {"link_cache_bytes", 0, INT64_MAX, 1 << 30};
    int agreement = 1;
    reducer_arg reducer = {{NULL, NULL}, NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs,
                                     "O&O&" CORPUS_FORMAT "O&|$O&pO&O&:wa_train_joint", kwlist,
                                     to_model, &forward, to_model, &reverse, CORPUS_CONVERTERS(c),
                                     to_int, &iterations, to_int, &ibm1_iterations, &agreement,
                                     to_int, &cache_bytes, to_reducer, &reducer))
        return NULL;
    PyObject *result = NULL;
    double *logliks = NULL;
    const int n_ibm1 = (int)ibm1_iterations.value, n_hmm = (int)iterations.value;
    if (forward.h == reverse.h) {
        PyErr_SetString(PyExc_ValueError, "forward and reverse must be two models");
        goto done;
    }
    if (hold(&forward) < 0 || hold(&reverse) < 0 || training_corpus(&c, &forward.h->m) < 0)
        goto done;
    if (!(logliks = malloc(sizeof(double) * (2 * (size_t)n_ibm1 + n_hmm + 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    char err[CALIGN_ERR_LEN] = "";
    int threads = calign_num_threads(), status;
    Py_BEGIN_ALLOW_THREADS
    status = wa_joint_train(&forward.h->m, &reverse.h->m, &c.corpus, n_ibm1, n_hmm, agreement,
                            cache_bytes.value, reducer.sum, logliks, logliks + 2 * n_ibm1,
                            threads, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    PyObject *lists[3] = {float_list(logliks, n_ibm1), float_list(logliks + n_ibm1, n_ibm1),
                          float_list(logliks + 2 * n_ibm1, n_hmm)};
    if (lists[0] && lists[1] && lists[2])
        result = PyTuple_Pack(3, lists[0], lists[1], lists[2]);
    for (int i = 0; i < 3; i++) Py_XDECREF(lists[i]);
done:
    unhold(&forward);
    unhold(&reverse);
    free(logliks);
    corpus_release(&c);
    return result;
}

/* ---- decoding ------------------------------------------------------------------- */

/* wa_posteriors(model, corpus...) -> float64 [sum over pairs J (I + 1)]: pair
 * k's [J, I + 1] block of link posteriors (column 0 NULL) after the blocks of
 * the pairs before it; wa_viterbi(model, corpus...) -> int32 [target words]:
 * the HMM's best links, source position 1..I, or 0 for NULL */
static PyObject *decode(PyObject *args, PyObject *kwargs, int viterbi) {
    static char *kwlist[] = {"model", CORPUS_KEYWORDS, NULL};
    model_arg model = {"model"};
    corpus_arg c = CORPUS_ARG;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs,
                                     viterbi ? "O&" CORPUS_FORMAT ":wa_viterbi"
                                             : "O&" CORPUS_FORMAT ":wa_posteriors",
                                     kwlist, to_model, &model, CORPUS_CONVERTERS(c)))
        return NULL;
    PyObject *result = NULL;
    if (hold(&model) < 0 || decoding_corpus(&c, &model.h->m) < 0) goto done;
    npy_intp n = viterbi ? ARG_LEN(c.tgt) : wa_corpus_links(&c.corpus);
    if (!(result = PyArray_SimpleNew(1, &n, viterbi ? NPY_INT32 : NPY_FLOAT64))) goto done;
    void *out = PyArray_DATA((PyArrayObject *)result);
    char err[CALIGN_ERR_LEN] = "";
    int threads = calign_num_threads(), status;
    Py_BEGIN_ALLOW_THREADS
    status = viterbi ? wa_model_viterbi(out, &model.h->m, &c.corpus, threads, err)
                     : wa_model_posteriors(out, &model.h->m, &c.corpus, threads, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) Py_CLEAR(result);
done:
    unhold(&model);
    corpus_release(&c);
    return result;
}

static PyObject *py_wa_posteriors(PyObject *self, PyObject *args, PyObject *kwargs) {
    return decode(args, kwargs, 0);
}

static PyObject *py_wa_viterbi(PyObject *self, PyObject *args, PyObject *kwargs) {
    return decode(args, kwargs, 1);
}

/* wa_fertility_sample(model, corpus..., max_fertility, fertility_prior, burn_in,
 * samples, seed, start=None, link_cache_bytes=2**30) -> (link frequencies laid
 * out as wa_posteriors', the last sample as wa_viterbi's links); start: the
 * links to start from (wa_viterbi's layout), None for the HMM's Viterbi links */
static PyObject *py_wa_fertility_sample(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model",   CORPUS_KEYWORDS, "max_fertility", "fertility_prior",
                             "burn_in", "samples",       "seed",          "start",
                             "link_cache_bytes",         NULL};
    model_arg model = {"model"};
    corpus_arg c = CORPUS_ARG;
    int_arg max_fertility = {"max_fertility", 1, WA_MAX_FERTILITY, 0};
    real_arg prior = {"fertility_prior", 0.0, INFINITY, 1, 0, 0.0};
    int_arg burn_in = {"burn_in", 0, INT_MAX, 0}, samples = {"samples", 1, INT_MAX, 0};
    int_arg cache_bytes = {"link_cache_bytes", 0, INT64_MAX, 1 << 30};
    unsigned long long seed;
    array_arg start = {"start"};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "O&" CORPUS_FORMAT "O&O&O&O&O&|$O&O&:wa_fertility_sample", kwlist,
            to_model, &model, CORPUS_CONVERTERS(c), to_int, &max_fertility, to_real, &prior,
            to_int, &burn_in, to_int, &samples, to_seed, &seed, to_int64_vector_or_none, &start,
            to_int, &cache_bytes))
        return NULL;
    PyObject *post = NULL, *last = NULL, *result = NULL;
    if (hold(&model) < 0 || decoding_corpus(&c, &model.h->m) < 0) goto done;
    if (burn_in.value + samples.value > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "burn_in + samples must be at most %d, got %lld + %lld",
                     INT_MAX, burn_in.value, samples.value);
        goto done;
    }
    npy_intp n_links = wa_corpus_links(&c.corpus), n_words = ARG_LEN(c.tgt);
    if (start.array) { /* a fresh int32 copy: the sampler's links, returned as the last sample */
        if (check_rows(&start, n_words, "target_ids") < 0 ||
            narrow_to_int32(&start, 0, INT32_MAX, "source positions") < 0)
            goto done;
        last = Py_NewRef((PyObject *)start.array);
    } else if (!(last = PyArray_SimpleNew(1, &n_words, NPY_INT32))) {
        goto done;
    }
    if (!(post = PyArray_SimpleNew(1, &n_links, NPY_FLOAT64))) goto done;
    wa_fertility fs = {(int)max_fertility.value, prior.value,
                       (int)(burn_in.value + samples.value), (int)burn_in.value, seed};
    double *out = PyArray_DATA((PyArrayObject *)post);
    int32_t *align = PyArray_DATA((PyArrayObject *)last);
    char err[CALIGN_ERR_LEN] = "";
    int threads = calign_num_threads(), status, start_given = start.array != NULL;
    Py_BEGIN_ALLOW_THREADS
    status = wa_model_fertility(out, align, start_given, &model.h->m, &c.corpus, &fs,
                                cache_bytes.value, threads, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) == 0) result = Py_BuildValue("(OO)", post, last);
done:
    unhold(&model);
    Py_XDECREF(post);
    Py_XDECREF(last);
    arg_release(&start);
    corpus_release(&c);
    return result;
}

/* wa_soft_union(source_offsets, target_offsets, forward, reverse, threshold) ->
 * uint8 [sum over pairs I J]: pair k's [I, J] links after the pairs before
 * it; forward and reverse are the posteriors of the two directions laid out
 * as wa_posteriors' ([J, I + 1] and [I, J + 1] blocks) */
static PyObject *py_wa_soft_union(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"source_offsets", "target_offsets", "forward", "reverse",
                             "threshold", NULL};
    array_arg src_off = {"source_offsets"}, tgt_off = {"target_offsets"};
    array_arg fwd = {"forward"}, rev = {"reverse"};
    real_arg threshold = {"threshold", 0.0, 1.0, 0, 0, 0.0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&O&:wa_soft_union", kwlist,
                                     to_int64_vector, &src_off, to_int64_vector, &tgt_off,
                                     to_f64_vector_view, &fwd, to_f64_vector_view, &rev,
                                     to_real, &threshold))
        return NULL;
    PyObject *keep = NULL;
    if (ARG_LEN(src_off) < 1) {
        PyErr_SetString(PyExc_ValueError, "source_offsets must hold at least one offset (0)");
        goto done;
    }
    if (check_rows(&tgt_off, ARG_LEN(src_off), "source_offsets") < 0) goto done;
    /* the offsets of a corpus of that many words on each side */
    wa_corpus c = {NULL, NULL, ARG_DATA(int64_t, src_off), ARG_DATA(int64_t, tgt_off),
                   (long)ARG_LEN(src_off) - 1, 0, 0};
    char err[CALIGN_ERR_LEN] = "";
    int status = wa_corpus_check(&c, c.src_off[c.n_pairs], c.tgt_off[c.n_pairs], err);
    if (raise_status(status, err) < 0) goto done;
    wa_corpus swapped = wa_corpus_swapped(&c);
    const int64_t n_f = wa_corpus_links(&c), n_r = wa_corpus_links(&swapped);
    if (ARG_LEN(fwd) != n_f || ARG_LEN(rev) != n_r) {
        int bad_fwd = ARG_LEN(fwd) != n_f;
        PyErr_Format(PyExc_ValueError, "%s has %zd posteriors but the offsets need %lld",
                     bad_fwd ? "forward" : "reverse",
                     (Py_ssize_t)(bad_fwd ? ARG_LEN(fwd) : ARG_LEN(rev)),
                     (long long)(bad_fwd ? n_f : n_r));
        goto done;
    }
    npy_intp n_keep = n_f - c.tgt_off[c.n_pairs]; /* sum of I J */
    if (!(keep = PyArray_SimpleNew(1, &n_keep, NPY_UINT8))) goto done;
    uint8_t *out = PyArray_DATA((PyArrayObject *)keep);
    const double *f = ARG_DATA(double, fwd), *r = ARG_DATA(double, rev);
    Py_BEGIN_ALLOW_THREADS
    wa_soft_union(out, f, r, &c, threshold.value);
    Py_END_ALLOW_THREADS
done:
    arg_release(&src_off);
    arg_release(&tgt_off);
    arg_release(&fwd);
    arg_release(&rev);
    return keep;
}

/* ---- optimal transport ---------------------------------------------------------- */

/* ot_cost(source_embeddings [n, d], target_embeddings [m, d], distortion) -> cost [n, m] */
static PyObject *py_ot_cost(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"source_embeddings", "target_embeddings", "distortion", NULL};
    array_arg x = {"source_embeddings"}, y = {"target_embeddings"};
    real_arg distortion = {"distortion", -INFINITY, INFINITY, 0, 0, 0.0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&:ot_cost", kwlist, to_f64_matrix, &x,
                                     to_f64_matrix, &y, to_real, &distortion))
        return NULL;
    PyObject *cost = NULL;
    int n, m, d;
    if (dim_as_int(&n, &x, 0, "rows") < 0 || dim_as_int(&m, &y, 0, "rows") < 0 ||
        dim_as_int(&d, &x, 1, "columns") < 0)
        goto done;
    if (PyArray_DIM(y.array, 1) != d) {
        PyErr_SetString(PyExc_ValueError,
                        "source_embeddings and target_embeddings differ in dimension");
        goto done;
    }
    npy_intp dims[2] = {n, m};
    if (!(cost = PyArray_ZEROS(2, dims, NPY_FLOAT64, 0))) goto done;
    double *out = PyArray_DATA((PyArrayObject *)cost);
    const double *xs = ARG_DATA(double, x), *ys = ARG_DATA(double, y);
    Py_BEGIN_ALLOW_THREADS
    ot_cosine_cost(out, xs, ys, n, m, d, distortion.value);
    Py_END_ALLOW_THREADS
done:
    arg_release(&x);
    arg_release(&y);
    return cost;
}

/* ot_transport(cost [n, m], a [n], b [m], kind, reg, reg_m, mass, max_iterations,
 * tolerance) -> (plan [n, m], iterations); kind "balanced", "unbalanced" or
 * "partial" (see wordalign/sinkhorn.h) */
static PyObject *py_ot_transport(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"cost", "a", "b", "kind", "reg", "reg_m", "mass",
                             "max_iterations", "tolerance", NULL};
    array_arg cost = {"cost"}, a = {"a"}, b = {"b"};
    const char *kind_name;
    /* finite here; their ranges, which depend on the kind, checked by ot_transport */
    real_arg reg = {"reg", -INFINITY, INFINITY, 0, 0, 0.0};
    real_arg reg_m = {"reg_m", -INFINITY, INFINITY, 0, 0, 0.0};
    real_arg mass = {"mass", -INFINITY, INFINITY, 0, 0, 0.0};
    real_arg tolerance = {"tolerance", -INFINITY, INFINITY, 0, 0, 0.0};
    int_arg max_iterations = {"max_iterations", 0, INT_MAX, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&sO&O&O&O&O&:ot_transport", kwlist,
                                     to_f64_matrix, &cost, to_f64_vector, &a, to_f64_vector, &b,
                                     &kind_name, to_real, &reg, to_real, &reg_m, to_real, &mass,
                                     to_int, &max_iterations, to_real, &tolerance))
        return NULL;
    PyObject *plan = NULL, *result = NULL;
    int n, m, kind = name_index(kind_name, "kind", ot_kind_names, OT_N_KINDS);
    if (kind < 0) goto done;
    if (dim_as_int(&n, &cost, 0, "rows") < 0 || dim_as_int(&m, &cost, 1, "columns") < 0 ||
        check_rows(&a, n, "cost's rows") < 0 || check_rows(&b, m, "cost's columns") < 0)
        goto done;
    npy_intp dims[2] = {n, m};
    if (!(plan = PyArray_ZEROS(2, dims, NPY_FLOAT64, 0))) goto done;
    double *P = PyArray_DATA((PyArrayObject *)plan);
    const double *C = ARG_DATA(double, cost), *A = ARG_DATA(double, a), *B = ARG_DATA(double, b);
    char err[CALIGN_ERR_LEN] = "";
    int iterations, status;
    Py_BEGIN_ALLOW_THREADS
    status = ot_transport(P, &iterations, C, A, B, n, m, kind, reg.value, reg_m.value, mass.value,
                          (int)max_iterations.value, tolerance.value, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) == 0) result = Py_BuildValue("(Oi)", plan, iterations);
done:
    Py_XDECREF(plan);
    arg_release(&cost);
    arg_release(&a);
    arg_release(&b);
    return result;
}

/* ---- names for calign._C.describe() ----------------------------------------------- */

/* The word-alignment model kinds and optimal-transport kinds by name. */
int describe_wordalign(PyObject *d) {
    return describe_names(d, "wordalign_models", wa_kind_names, WA_N_KINDS) < 0 ||
                   describe_names(d, "ot_kinds", ot_kind_names, OT_N_KINDS) < 0
               ? -1
               : 0;
}

PyMethodDef calign_wordalign_methods[] = {
    KEYWORDS_METHOD("wa_model_new", py_wa_model_new, "A word-alignment model without a table."),
    KEYWORDS_METHOD("wa_model_settings", py_wa_model_settings, "A model's settings and jumps."),
    KEYWORDS_METHOD("wa_model_table", py_wa_model_table, "Copies of a model's translation table."),
    KEYWORDS_METHOD("wa_model_set_table", py_wa_model_set_table, "A model's table from saved arrays."),
    KEYWORDS_METHOD("wa_start", py_wa_start, "A uniform translation table over a corpus."),
    KEYWORDS_METHOD("wa_train", py_wa_train, "EM iterations of a model on its corpus."),
    KEYWORDS_METHOD("wa_train_joint", py_wa_train_joint, "EM of a JointHMM's two directions."),
    KEYWORDS_METHOD("wa_posteriors", py_wa_posteriors, "Link posteriors of each pair."),
    KEYWORDS_METHOD("wa_viterbi", py_wa_viterbi, "The HMM's Viterbi links."),
    KEYWORDS_METHOD("wa_fertility_sample", py_wa_fertility_sample, "Gibbs sampling of the fertility HMM from HMM links."),
    KEYWORDS_METHOD("wa_soft_union", py_wa_soft_union, "Links whose two directional posteriors average above a threshold."),
    KEYWORDS_METHOD("ot_cost", py_ot_cost, "1 - cosine (+ distortion) between two embedding sets."),
    KEYWORDS_METHOD("ot_transport", py_ot_transport, "Entropic OT plan in the log domain."),
    {NULL, NULL, 0, NULL},
};
