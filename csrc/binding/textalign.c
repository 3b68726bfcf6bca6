/* Bindings of summary-document alignment (calign.textalign): Jing &
 * McKeown's Viterbi decomposition and Daumé & Marcu's phrase HMM (EM and
 * Viterbi). The Python side flattens the texts into id and offset arrays
 * (calign/textalign/corpus.py); the phrase HMM's numbers are float64 arrays
 * the caller owns and EM updates in place. */
#include "binding/common.h"

#include <math.h>
#include <stdlib.h>

#include "core/status.h"
#include "core/threads.h"
#include "textalign/decompose.h"
#include "textalign/phrase_hmm.h"

/* ta_decompose(word_offsets, candidate_offsets, candidate_sentences,
 * candidate_words, p_adjacent, p_same_later, p_same_earlier, p_near_later,
 * p_near_earlier, p_far, near, p_new) -> (best int64 [words], log_scores
 * float64 [problems]): best[j] = the global index of word j's chosen
 * candidate, or -1 for a new word */
static PyObject *py_ta_decompose(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"word_offsets", "candidate_offsets", "candidate_sentences",
                             "candidate_words", "p_adjacent", "p_same_later", "p_same_earlier",
                             "p_near_later", "p_near_earlier", "p_far", "near", "p_new", NULL};
    array_arg word_off = {"word_offsets"}, cand_off = {"candidate_offsets"};
    array_arg cand_sent = {"candidate_sentences"}, cand_word = {"candidate_words"};
    /* finite here; ranges and order checked by ta_rules_init */
    real_arg p[6] = {{"p_adjacent", -INFINITY, INFINITY}, {"p_same_later", -INFINITY, INFINITY},
                     {"p_same_earlier", -INFINITY, INFINITY},
                     {"p_near_later", -INFINITY, INFINITY},
                     {"p_near_earlier", -INFINITY, INFINITY}, {"p_far", -INFINITY, INFINITY}};
    real_arg p_new = {"p_new", -INFINITY, INFINITY};
    int_arg near = {"near", 1, INT32_MAX, 0};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "O&O&O&O&O&O&O&O&O&O&O&O&:ta_decompose", kwlist, to_int64_vector,
            &word_off, to_int64_vector, &cand_off, to_int64_vector, &cand_sent, to_int64_vector,
            &cand_word, to_real, &p[0], to_real, &p[1], to_real, &p[2], to_real, &p[3], to_real,
            &p[4], to_real, &p[5], to_int, &near, to_real, &p_new))
        return NULL;
    PyObject *best = NULL, *scores = NULL, *result = NULL;
    double *delta = NULL;
    int64_t *back = NULL;
    char err[CALIGN_ERR_LEN] = "";
    ta_rules rules;
    const double probabilities[6] = {p[0].value, p[1].value, p[2].value,
                                     p[3].value, p[4].value, p[5].value};
    if (raise_status(ta_rules_init(&rules, probabilities, (int)near.value, p_new.value, err),
                     err) < 0)
        goto done;
    if (ARG_LEN(word_off) < 1 || ARG_LEN(cand_off) < 1) {
        PyErr_SetString(PyExc_ValueError, ARG_LEN(word_off) < 1
                                              ? "word_offsets must hold at least one offset (0)"
                                              : "candidate_offsets must hold at least one offset (0)");
        goto done;
    }
    const npy_intp n_problems = ARG_LEN(word_off) - 1, n_words = ARG_LEN(cand_off) - 1;
    if (check_rows(&cand_word, ARG_LEN(cand_sent), "candidate_sentences") < 0 ||
        narrow_to_int32(&cand_sent, 0, INT32_MAX, "sentence indices") < 0 ||
        narrow_to_int32(&cand_word, 0, INT32_MAX - 1, "word indices") < 0)
        goto done;
    const int64_t *wo = ARG_DATA(int64_t, word_off), *co = ARG_DATA(int64_t, cand_off);
    const npy_intp n_cand = ARG_LEN(cand_sent);
    if (raise_status(ta_decompose_check(wo, n_problems, n_words, co, n_cand, err), err) < 0)
        goto done;
    if (!(best = PyArray_SimpleNew(1, &n_words, NPY_INT64)) ||
        !(scores = PyArray_SimpleNew(1, &n_problems, NPY_FLOAT64)))
        goto done;
    delta = malloc(sizeof(double) * (n_cand + 1));
    back = malloc(sizeof(int64_t) * (n_cand + 1));
    if (!delta || !back) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t *b = PyArray_DATA((PyArrayObject *)best);
    double *s = PyArray_DATA((PyArrayObject *)scores);
    const int32_t *cs = ARG_DATA(int32_t, cand_sent), *cw = ARG_DATA(int32_t, cand_word);
    int threads = calign_num_threads();
    Py_BEGIN_ALLOW_THREADS
    ta_decompose(b, s, delta, back, wo, co, cs, cw, n_problems, &rules, threads);
    Py_END_ALLOW_THREADS
    result = PyTuple_Pack(2, best, scores);
done:
    Py_XDECREF(best);
    Py_XDECREF(scores);
    free(delta);
    free(back);
    arg_release(&word_off);
    arg_release(&cand_off);
    arg_release(&cand_sent);
    arg_release(&cand_word);
    return result;
}

/* ---- the phrase HMM ------------------------------------------------------------- */

typedef struct {
    array_arg sum_ids, sum_off, doc_ids, doc_off, doc_sent;
    ta_pairs pairs;
} pairs_arg;

#define PAIRS_ARG {{"summary_ids"}, {"summary_offsets"}, {"document_ids"}, \
                   {"document_offsets"}, {"document_sentences"}}
#define PAIRS_KEYWORDS "summary_ids", "summary_offsets", "document_ids", "document_offsets", \
                       "document_sentences"
#define PAIRS_CONVERTERS(a)                                                                    \
    to_int64_vector, &(a).sum_ids, to_int64_vector, &(a).sum_off, to_int64_vector,           \
        &(a).doc_ids, to_int64_vector, &(a).doc_off, to_int64_vector, &(a).doc_sent

static void pairs_release(pairs_arg *a) {
    arg_release(&a->sum_ids);
    arg_release(&a->sum_off);
    arg_release(&a->doc_ids);
    arg_release(&a->doc_off);
    arg_release(&a->doc_sent);
}

/* The model's arrays (float64, written in place by EM) and numbers. */
typedef struct {
    array_arg length, jump, rewrite, generate;
    real_arg p_null, identity;
    ta_phrase_hmm h;
} model_args;

#define MODEL_ARGS {{"length"}, {"jump"}, {"rewrite"}, {"generate"}, \
                    {"p_null", -INFINITY, INFINITY}, {"identity", -INFINITY, INFINITY}}
#define MODEL_KEYWORDS "length", "jump", "rewrite", "generate", "p_null", "identity"
#define MODEL_CONVERTERS(a)                                                                   \
    to_f64_vector_out, &(a).length, to_f64_vector_out, &(a).jump, to_f64_vector_out,          \
        &(a).rewrite, to_f64_vector_out, &(a).generate, to_real, &(a).p_null, to_real,        \
        &(a).identity

static void model_release(model_args *a) {
    arg_release(&a->length);
    arg_release(&a->jump);
    arg_release(&a->rewrite);
    arg_release(&a->generate);
}

/* The checked views of the pairs and the model; -1 with an exception. */
static int phrase_views(pairs_arg *p, model_args *m) {
    if (ARG_LEN(m->jump) % 2 == 0) {
        PyErr_Format(PyExc_ValueError, "jump must hold an odd number of weights (2 max_jump + "
                                       "1), got %zd", (Py_ssize_t)ARG_LEN(m->jump));
        return -1;
    }
    if (ARG_LEN(m->length) > TA_MAX_PHRASE || ARG_LEN(m->jump) > 2 * TA_MAX_JUMP + 1 ||
        ARG_LEN(m->rewrite) > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "length, jump or rewrite holds more weights than the "
                                          "kernels take");
        return -1;
    }
    if (check_rows(&m->generate, ARG_LEN(m->rewrite), "rewrite") < 0) return -1;
    m->h = (ta_phrase_hmm){(int)ARG_LEN(m->length), (int)(ARG_LEN(m->jump) - 1) / 2,
                           (int)ARG_LEN(m->rewrite), m->p_null.value, m->identity.value,
                           ARG_DATA(double, m->length), ARG_DATA(double, m->jump),
                           ARG_DATA(double, m->rewrite), ARG_DATA(double, m->generate)};
    char err[CALIGN_ERR_LEN] = "";
    if (raise_status(ta_phrase_hmm_check(&m->h, err), err) < 0) return -1;
    if (ARG_LEN(p->sum_off) < 1 || ARG_LEN(p->doc_off) != ARG_LEN(p->sum_off)) {
        PyErr_SetString(PyExc_ValueError, "summary_offsets and document_offsets must hold one "
                                          "offset more than there are pairs, the same number");
        return -1;
    }
    if (check_rows(&p->doc_sent, ARG_LEN(p->doc_ids), "document_ids") < 0 ||
        narrow_to_int32(&p->sum_ids, 0, m->h.vocab, "the vocabulary of rewrite") < 0 ||
        narrow_to_int32(&p->doc_ids, 0, m->h.vocab, "the vocabulary of rewrite") < 0 ||
        narrow_to_int32(&p->doc_sent, 0, INT32_MAX, "sentence indices") < 0)
        return -1;
    p->pairs = (ta_pairs){ARG_DATA(int32_t, p->sum_ids), ARG_DATA(int32_t, p->doc_ids),
                          ARG_DATA(int32_t, p->doc_sent), ARG_DATA(int64_t, p->sum_off),
                          ARG_DATA(int64_t, p->doc_off), ARG_LEN(p->sum_off) - 1};
    return raise_status(ta_pairs_check(&p->pairs, ARG_LEN(p->sum_ids), ARG_LEN(p->doc_ids),
                                       m->h.vocab, err),
                        err);
}

/* ta_phrase_em(pairs..., length, jump, rewrite, generate, p_null, identity,
 * iterations, smoothing) -> (p_null, identity, [log-likelihood before each
 * iteration]); the four arrays are updated in place */
static PyObject *py_ta_phrase_em(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {PAIRS_KEYWORDS, MODEL_KEYWORDS, "iterations", "smoothing", NULL};
    pairs_arg p = PAIRS_ARG;
    model_args m = MODEL_ARGS;
    int_arg iterations = {"iterations", 0, INT32_MAX, 0};
    real_arg smoothing = {"smoothing", 0.0, INFINITY, 1, 0, 0.0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&O&O&O&O&O&O&O&O&O&:ta_phrase_em",
                                     kwlist, PAIRS_CONVERTERS(p), MODEL_CONVERTERS(m), to_int,
                                     &iterations, to_real, &smoothing))
        return NULL;
    PyObject *result = NULL;
    double *logliks = NULL;
    if (phrase_views(&p, &m) < 0) goto done;
    const int n = (int)iterations.value;
    if (!(logliks = malloc(sizeof(double) * (n + 1)))) {
        PyErr_NoMemory();
        goto done;
    }
    int threads = calign_num_threads(), status = CALIGN_OK;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < n && status == CALIGN_OK; i++)
        status = ta_phrase_em(&m.h, &p.pairs, smoothing.value, &logliks[i], threads);
    Py_END_ALLOW_THREADS
    if (raise_status(status, "no memory for the phrase HMM's forward-backward") < 0) goto done;
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *v = PyFloat_FromDouble(logliks[i]);
        if (!v) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, v);
    }
    if (list) result = Py_BuildValue("(ddN)", m.h.p_null, m.h.identity, list);
done:
    free(logliks);
    pairs_release(&p);
    model_release(&m);
    return result;
}

/* ta_phrase_viterbi(pairs..., length, jump, rewrite, generate, p_null,
 * identity) -> (best int32 [summary tokens], phrase int32 [summary tokens]):
 * the document index (within its pair) of each summary token or -1, and the
 * number of its phrase within its summary */
static PyObject *py_ta_phrase_viterbi(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {PAIRS_KEYWORDS, MODEL_KEYWORDS, NULL};
    pairs_arg p = PAIRS_ARG;
    model_args m = MODEL_ARGS;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&O&O&O&O&O&O&O&:ta_phrase_viterbi",
                                     kwlist, PAIRS_CONVERTERS(p), MODEL_CONVERTERS(m)))
        return NULL;
    PyObject *best = NULL, *phrase = NULL, *result = NULL;
    if (phrase_views(&p, &m) < 0) goto done;
    npy_intp n = ARG_LEN(p.sum_ids);
    if (!(best = PyArray_SimpleNew(1, &n, NPY_INT32)) ||
        !(phrase = PyArray_SimpleNew(1, &n, NPY_INT32)))
        goto done;
    int32_t *b = PyArray_DATA((PyArrayObject *)best), *ph = PyArray_DATA((PyArrayObject *)phrase);
    int threads = calign_num_threads(), status;
    Py_BEGIN_ALLOW_THREADS
    status = ta_phrase_viterbi(b, ph, &m.h, &p.pairs, threads);
    Py_END_ALLOW_THREADS
    if (raise_status(status, "no memory for the phrase HMM's Viterbi") == 0)
        result = PyTuple_Pack(2, best, phrase);
done:
    Py_XDECREF(best);
    Py_XDECREF(phrase);
    pairs_release(&p);
    model_release(&m);
    return result;
}

PyMethodDef calign_textalign_methods[] = {
    KEYWORDS_METHOD("ta_decompose", py_ta_decompose, "Jing & McKeown's Viterbi decomposition."),
    KEYWORDS_METHOD("ta_phrase_em", py_ta_phrase_em, "EM iterations of the phrase HMM."),
    KEYWORDS_METHOD("ta_phrase_viterbi", py_ta_phrase_viterbi, "The phrase HMM's best phrases."),
    {NULL, NULL, 0, NULL},
};
