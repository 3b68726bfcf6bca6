/* Bindings of the transformer engine (calign.Model uses these).
 *
 * A model is a capsule holding its configuration, parameter layout and
 * activation arena; parameters and gradients are float32 NumPy vectors owned
 * by Python and passed in on each call. One call at a time per model: the
 * arena is shared state, so a second thread gets a RuntimeError. */
#include "binding/common.h"

#include <stdlib.h>

#include "core/gemm.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/scoring.h"
#include "losses/dpo_pairs.h"

#define CAPSULE_NAME "calign.model"

typedef struct {
    model *m;
    int busy;
} model_handle;

static void capsule_destructor(PyObject *capsule) {
    model_handle *h = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (h) {
        model_free(h->m);
        free(h);
    }
}

static model_handle *get_handle(PyObject *capsule) {
    model_handle *h = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (!h) return NULL;
    if (h->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this model is being used by another thread; calls on one model must "
                        "not overlap");
        return NULL;
    }
    return h;
}

/* ---- configuration ------------------------------------------------------ */

static int dict_int(PyObject *d, const char *key, int *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "engine config lacks %s", key);
        return -1;
    }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = (int)x;
    return 0;
}

static int dict_double(PyObject *d, const char *key, double *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "engine config lacks %s", key);
        return -1;
    }
    *out = PyFloat_AsDouble(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *py_model_create(PyObject *self, PyObject *arg) {
    if (!PyDict_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "engine config must be a dict");
        return NULL;
    }
    model_config c = {0};
    int norm, mlp, layout;
    double eps;
    if (dict_int(arg, "n_layer", &c.n_layer) || dict_int(arg, "d_model", &c.d_model) ||
        dict_int(arg, "n_head", &c.n_head) || dict_int(arg, "n_kv_head", &c.n_kv_head) ||
        dict_int(arg, "head_dim", &c.head_dim) || dict_int(arg, "d_ff", &c.d_ff) ||
        dict_int(arg, "vocab", &c.vocab) || dict_int(arg, "max_positions", &c.max_positions) ||
        dict_int(arg, "rmsnorm", &norm) || dict_int(arg, "swiglu", &mlp) ||
        dict_int(arg, "conv1d_layout", &layout) ||
        dict_int(arg, "learned_positions", &c.learned_positions) ||
        dict_double(arg, "rope_theta", &c.rope_theta) || dict_int(arg, "qkv_bias", &c.qkv_bias) ||
        dict_int(arg, "o_bias", &c.o_bias) || dict_int(arg, "mlp_bias", &c.mlp_bias) ||
        dict_int(arg, "qk_norm", &c.qk_norm) ||
        dict_int(arg, "tied_embeddings", &c.tied_embeddings) ||
        dict_double(arg, "norm_eps", &eps))
        return NULL;
    c.norm = norm ? NORM_RMSNORM : NORM_LAYERNORM;
    c.mlp = mlp ? MLP_SWIGLU : MLP_GELU_TANH;
    c.layout = layout ? WEIGHT_IN_OUT : WEIGHT_OUT_IN;
    c.norm_eps = (float)eps;
    char err[256] = "";
    model_handle *h = calloc(1, sizeof(model_handle));
    if (!h) return PyErr_NoMemory();
    h->m = model_create(&c, err);
    if (!h->m) {
        free(h);
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(h, CAPSULE_NAME, capsule_destructor);
    if (!capsule) {
        model_free(h->m);
        free(h);
    }
    return capsule;
}

static PyObject *py_model_arena_bytes(PyObject *self, PyObject *capsule) {
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    return PyLong_FromSize_t(model_arena_bytes(h->m));
}

static PyObject *py_model_workspace_allocations(PyObject *self, PyObject *capsule) {
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    return PyLong_FromLong(model_workspace_allocations(h->m));
}

static PyObject *py_model_layout(PyObject *self, PyObject *capsule) {
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    int n = model_param_entries(h->m, NULL, 0);
    param_entry *e = calloc(n > 0 ? n : 1, sizeof(param_entry));
    if (!e) return PyErr_NoMemory();
    model_param_entries(h->m, e, n);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        /* (role, layer, offset, shape) */
        PyObject *item =
            e[i].ndim == 1
                ? Py_BuildValue("(sil(l))", e[i].role, e[i].layer, e[i].offset, e[i].shape[0])
                : Py_BuildValue("(sil(ll))", e[i].role, e[i].layer, e[i].offset, e[i].shape[0],
                                e[i].shape[1]);
        if (!item) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, item);
    }
    free(e);
    if (!list) return NULL;
    return Py_BuildValue("(lN)", model_param_count(h->m), list);
}

/* ---- arguments ------------------------------------------------------------ */

/* params or grads: float32 vector of exactly the model's parameter count. */
static PyArrayObject *param_vector(PyObject *obj, const char *name, const model *m, int writable) {
    PyArrayObject *arr = arg_f32_array(obj, name, 1);
    if (!arr) return NULL;
    if (PyArray_DIM(arr, 0) != model_param_count(m)) {
        PyErr_Format(PyExc_ValueError, "%s has %zd floats but the model has %ld parameters", name,
                     (Py_ssize_t)PyArray_DIM(arr, 0), model_param_count(m));
        Py_DECREF(arr);
        return NULL;
    }
    if (writable && !PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "%s must be writable", name);
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

/* The packed batch's arrays, checked against the model. */
typedef struct {
    PyArrayObject *tokens, *positions, *seq_start, *branch;
    packed_batch b;
} batch_args;

static void release_batch(batch_args *a) {
    Py_XDECREF(a->tokens);
    Py_XDECREF(a->positions);
    Py_XDECREF(a->seq_start);
    Py_XDECREF(a->branch);
}

static int parse_batch(batch_args *a, const model *m, PyObject *tokens, PyObject *positions,
                       PyObject *seq_start, PyObject *branch) {
    const model_config *c = model_get_config(m);
    if (!(a->tokens = arg_int32_vector(tokens, "input_ids")) ||
        !(a->positions = arg_int32_vector(positions, "position_ids")) ||
        !(a->seq_start = arg_int32_vector(seq_start, "sequence_starts")) ||
        !(a->branch = arg_int32_vector(branch, "branch_ids")))
        return -1;
    npy_intp T = PyArray_DIM(a->tokens, 0);
    if (T == 0) {
        PyErr_SetString(PyExc_ValueError, "the batch is empty: input_ids has no tokens");
        return -1;
    }
    if (check_length(a->positions, "position_ids", T, "input_ids") < 0 ||
        check_length(a->branch, "branch_ids", T, "input_ids") < 0)
        return -1;
    const int32_t *tok = PyArray_DATA(a->tokens), *pos = PyArray_DATA(a->positions),
                  *br = PyArray_DATA(a->branch), *ss = PyArray_DATA(a->seq_start);
    for (npy_intp t = 0; t < T; t++) {
        if (tok[t] < 0 || tok[t] >= c->vocab) {
            PyErr_Format(PyExc_ValueError, "input_ids holds token id %d, outside [0, %d) (vocab_size)",
                         tok[t], c->vocab);
            return -1;
        }
        if (pos[t] < 0 || pos[t] >= c->max_positions) {
            PyErr_Format(PyExc_ValueError,
                         "position %d is outside [0, %d): the sequence is longer than the "
                         "model's maximum positions (max_position_embeddings)",
                         pos[t], c->max_positions);
            return -1;
        }
        if (br[t] < 0) {
            PyErr_Format(PyExc_ValueError, "branch_ids[%zd] = %d is negative", (Py_ssize_t)t, br[t]);
            return -1;
        }
    }
    npy_intp n_starts = PyArray_DIM(a->seq_start, 0);
    if (n_starts < 2 || ss[0] != 0 || ss[n_starts - 1] != T) {
        PyErr_SetString(PyExc_ValueError,
                        "sequence_starts must begin at 0 and end at the number of tokens");
        return -1;
    }
    for (npy_intp s = 1; s < n_starts; s++) {
        if (ss[s] <= ss[s - 1]) {
            PyErr_SetString(PyExc_ValueError, "sequence_starts must be strictly increasing "
                                              "(every sequence holds at least one token)");
            return -1;
        }
    }
    a->b = (packed_batch){tok, pos, br, ss, T, (int)(n_starts - 1)};
    return 0;
}

static PyObject *new_f32_2d(npy_intp rows, npy_intp cols) {
    npy_intp dims[2] = {rows, cols};
    return PyArray_ZEROS(2, dims, NPY_FLOAT32, 0);
}

/* ---- calls ----------------------------------------------------------------- */

static PyObject *py_model_forward(PyObject *self, PyObject *args) {
    PyObject *capsule, *params_obj, *tokens, *positions, *seq_start, *branch;
    int mode;
    if (!PyArg_ParseTuple(args, "OOOOOOi", &capsule, &params_obj, &tokens, &positions,
                          &seq_start, &branch, &mode))
        return NULL;
    if (mode != FORWARD_INFERENCE && mode != FORWARD_TRAIN && mode != FORWARD_TRAIN_CHECKPOINTED) {
        PyErr_Format(PyExc_ValueError, "mode must be 0 (inference), 1 (train) or 2 (train, "
                     "checkpointed), got %d", mode);
        return NULL;
    }
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    PyArrayObject *params = param_vector(params_obj, "params", h->m, 0);
    if (!params) return NULL;
    batch_args a = {0};
    PyObject *hidden = NULL;
    if (parse_batch(&a, h->m, tokens, positions, seq_start, branch) < 0) goto done;
    if (model_prepare(h->m, &a.b, mode) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(hidden = new_f32_2d(a.b.T, model_get_config(h->m)->d_model))) goto done;
    h->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    model_forward(h->m, PyArray_DATA((PyArrayObject *)hidden), PyArray_DATA(params), &a.b, mode);
    Py_END_ALLOW_THREADS
    h->busy = 0;
done:
    Py_DECREF(params);
    release_batch(&a);
    return hidden;
}

static PyObject *py_model_backward(PyObject *self, PyObject *args) {
    PyObject *capsule, *params_obj, *grads_obj, *d_hidden_obj, *tokens, *positions, *seq_start,
        *branch;
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &capsule, &params_obj, &grads_obj, &d_hidden_obj,
                          &tokens, &positions, &seq_start, &branch))
        return NULL;
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    PyArrayObject *params = NULL, *grads = NULL, *d_hidden = NULL;
    batch_args a = {0};
    PyObject *result = NULL;
    if (!(params = param_vector(params_obj, "params", h->m, 0)) ||
        !(grads = param_vector(grads_obj, "grads", h->m, 1)) ||
        !(d_hidden = arg_f32_array(d_hidden_obj, "d_hidden", 2)))
        goto done;
    if (parse_batch(&a, h->m, tokens, positions, seq_start, branch) < 0) goto done;
    if (PyArray_DIM(d_hidden, 0) != a.b.T ||
        PyArray_DIM(d_hidden, 1) != model_get_config(h->m)->d_model) {
        PyErr_SetString(PyExc_ValueError, "d_hidden must have shape [tokens, hidden_size]");
        goto done;
    }
    if (!model_ready_for_backward(h->m, &a.b)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "backward needs a training forward of the same batch just before it");
        goto done;
    }
    /* the backward uses d_hidden as scratch: work on a copy */
    PyArrayObject *d_copy = (PyArrayObject *)PyArray_NewCopy(d_hidden, NPY_CORDER);
    if (!d_copy) goto done;
    h->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    model_backward(h->m, PyArray_DATA(grads), PyArray_DATA(params), PyArray_DATA(d_copy), &a.b);
    Py_END_ALLOW_THREADS
    h->busy = 0;
    Py_DECREF(d_copy);
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(params);
    Py_XDECREF(grads);
    Py_XDECREF(d_hidden);
    release_batch(&a);
    return result;
}

/* Final hidden states: float32 [T, hidden_size]. */
static PyArrayObject *hidden_states(PyObject *obj, const model *m) {
    PyArrayObject *hidden = arg_f32_array(obj, "hidden", 2);
    if (hidden && PyArray_DIM(hidden, 1) != model_get_config(m)->d_model) {
        PyErr_SetString(PyExc_ValueError, "hidden must have hidden_size columns");
        Py_CLEAR(hidden);
    }
    return hidden;
}

static PyObject *py_model_logits(PyObject *self, PyObject *args) {
    PyObject *capsule, *params_obj, *hidden_obj;
    if (!PyArg_ParseTuple(args, "OOO", &capsule, &params_obj, &hidden_obj)) return NULL;
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    const model_config *c = model_get_config(h->m);
    PyArrayObject *params = NULL, *hidden = NULL;
    PyObject *logits = NULL;
    if (!(params = param_vector(params_obj, "params", h->m, 0)) ||
        !(hidden = hidden_states(hidden_obj, h->m)))
        goto done;
    npy_intp T = PyArray_DIM(hidden, 0);
    if (!(logits = new_f32_2d(T, c->vocab))) goto done;
    const float *W = (const float *)PyArray_DATA(params) + model_lm_head_offset(h->m);
    Py_BEGIN_ALLOW_THREADS
    linear_forward(PyArray_DATA((PyArrayObject *)logits), c->vocab, PyArray_DATA(hidden), W, NULL,
                   (int)T, c->d_model, c->vocab, WEIGHT_OUT_IN);
    Py_END_ALLOW_THREADS
done:
    Py_XDECREF(params);
    Py_XDECREF(hidden);
    return logits;
}

/* rows/targets of a score request, checked against the hidden states. */
static int parse_scores(PyArrayObject **rows, PyArrayObject **targets, PyObject *rows_obj,
                        PyObject *targets_obj, npy_intp T, int vocab) {
    if (!(*rows = arg_int64_vector(rows_obj, "score_rows")) ||
        !(*targets = arg_int64_vector(targets_obj, "score_targets")))
        return -1;
    npy_intp M = PyArray_DIM(*rows, 0);
    if (check_length(*targets, "score_targets", M, "score_rows") < 0) return -1;
    const int64_t *r = PyArray_DATA(*rows), *t = PyArray_DATA(*targets);
    for (npy_intp i = 0; i < M; i++) {
        if (r[i] < 0 || r[i] >= T) {
            PyErr_Format(PyExc_ValueError, "score_rows[%zd] = %lld is outside [0, %zd)",
                         (Py_ssize_t)i, (long long)r[i], (Py_ssize_t)T);
            return -1;
        }
        if (t[i] != -100 && (t[i] < 0 || t[i] >= vocab)) {
            PyErr_Format(PyExc_ValueError, "label %lld is outside [0, %d) (vocab_size) and is not -100",
                         (long long)t[i], vocab);
            return -1;
        }
    }
    return 0;
}

/* The per-score statistics TRL logs, as NumPy arrays and the C view of them. */
typedef struct {
    PyObject *entropy, *mean_logit, *log_sum_sq_probs, *is_top1;
    logprob_stats view;
} stats_arrays;

static int new_stats(stats_arrays *s, npy_intp M) {
    npy_intp dims[1] = {M};
    if (!(s->entropy = PyArray_ZEROS(1, dims, NPY_FLOAT32, 0)) ||
        !(s->mean_logit = PyArray_ZEROS(1, dims, NPY_FLOAT32, 0)) ||
        !(s->log_sum_sq_probs = PyArray_ZEROS(1, dims, NPY_FLOAT32, 0)) ||
        !(s->is_top1 = PyArray_ZEROS(1, dims, NPY_BOOL, 0)))
        return -1;
    s->view.entropy = PyArray_DATA((PyArrayObject *)s->entropy);
    s->view.mean_logit = PyArray_DATA((PyArrayObject *)s->mean_logit);
    s->view.log_sum_sq_probs = PyArray_DATA((PyArrayObject *)s->log_sum_sq_probs);
    s->view.is_top1 = PyArray_DATA((PyArrayObject *)s->is_top1);
    return 0;
}

static PyObject *stats_dict(const stats_arrays *s) {
    return Py_BuildValue("{s:O,s:O,s:O,s:O}", "entropy", s->entropy, "mean_logit",
                         s->mean_logit, "log_sum_sq_probs", s->log_sum_sq_probs, "is_top1",
                         s->is_top1);
}

static void release_stats(stats_arrays *s) {
    Py_XDECREF(s->entropy);
    Py_XDECREF(s->mean_logit);
    Py_XDECREF(s->log_sum_sq_probs);
    Py_XDECREF(s->is_top1);
}

/* 1 with FloatingPointError when a scoring kernel met a non-finite logit
 * (it returns the first such row, or -1). */
static int non_finite_logits(long bad) {
    if (bad < 0) return 0;
    PyErr_SetString(PyExc_FloatingPointError,
                    "the model produced non-finite logits (NaN or infinity in the parameters?)");
    return 1;
}

/* model_score(capsule, params, hidden, rows, targets, temperature, return_stats)
 * -> logprobs [M], or (logprobs, {"entropy", "mean_logit", "log_sum_sq_probs",
 * "is_top1"}) with return_stats. */
static PyObject *py_model_score(PyObject *self, PyObject *args) {
    PyObject *capsule, *params_obj, *hidden_obj, *rows_obj, *targets_obj;
    double temperature;
    int return_stats = 0;
    if (!PyArg_ParseTuple(args, "OOOOOd|p", &capsule, &params_obj, &hidden_obj, &rows_obj,
                          &targets_obj, &temperature, &return_stats) ||
        check_temperature(temperature) < 0)
        return NULL;
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    const model_config *c = model_get_config(h->m);
    PyArrayObject *params = NULL, *hidden = NULL, *rows = NULL, *targets = NULL;
    PyObject *logprobs = NULL, *result = NULL, *stats_out = NULL;
    stats_arrays stats = {0};
    float *scratch;
    if (!(params = param_vector(params_obj, "params", h->m, 0)) ||
        !(hidden = hidden_states(hidden_obj, h->m)))
        goto done;
    if (parse_scores(&rows, &targets, rows_obj, targets_obj, PyArray_DIM(hidden, 0), c->vocab) < 0)
        goto done;
    score_request r = {PyArray_DATA(rows), PyArray_DATA(targets), PyArray_DIM(rows, 0),
                       (float)temperature};
    npy_intp dims[1] = {r.M};
    if (!(logprobs = PyArray_ZEROS(1, dims, NPY_FLOAT32, 0))) goto done;
    if (return_stats && new_stats(&stats, r.M) < 0) goto done;
    if (!(scratch = model_scratch(h->m, scoring_scratch_floats(h->m, &r)))) {
        PyErr_NoMemory();
        goto done;
    }
    long bad;
    h->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    bad = model_score_forward(PyArray_DATA((PyArrayObject *)logprobs),
                              return_stats ? &stats.view : NULL, h->m, PyArray_DATA(params),
                              PyArray_DATA(hidden), &r, scratch);
    Py_END_ALLOW_THREADS
    h->busy = 0;
    if (non_finite_logits(bad)) goto done;
    if (!return_stats)
        result = Py_NewRef(logprobs);
    else if ((stats_out = stats_dict(&stats)))
        result = Py_BuildValue("(ON)", logprobs, stats_out);
done:
    release_stats(&stats);
    Py_XDECREF(logprobs);
    Py_XDECREF(params);
    Py_XDECREF(hidden);
    Py_XDECREF(rows);
    Py_XDECREF(targets);
    return result;
}

/* Returns (d_hidden [T, d], logprobs [M]) or with return_stats (d_hidden,
 * logprobs, stats as model_score's); the lm_head gradient goes into grads. */
static PyObject *py_model_score_backward(PyObject *self, PyObject *args) {
    PyObject *capsule, *params_obj, *grads_obj, *hidden_obj, *rows_obj, *targets_obj, *grad_obj;
    double temperature;
    int return_stats = 0;
    if (!PyArg_ParseTuple(args, "OOOOOOOd|p", &capsule, &params_obj, &grads_obj, &hidden_obj,
                          &rows_obj, &targets_obj, &grad_obj, &temperature, &return_stats) ||
        check_temperature(temperature) < 0)
        return NULL;
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    const model_config *c = model_get_config(h->m);
    PyArrayObject *params = NULL, *grads = NULL, *hidden = NULL, *rows = NULL, *targets = NULL,
                  *grad64 = NULL;
    PyObject *logprobs = NULL, *d_hidden = NULL, *result = NULL, *stats_out = NULL;
    stats_arrays stats = {0};
    float *scratch, *grad32 = NULL;
    if (!(params = param_vector(params_obj, "params", h->m, 0)) ||
        !(grads = param_vector(grads_obj, "grads", h->m, 1)) ||
        !(hidden = hidden_states(hidden_obj, h->m)))
        goto done;
    npy_intp T = PyArray_DIM(hidden, 0);
    if (parse_scores(&rows, &targets, rows_obj, targets_obj, T, c->vocab) < 0) goto done;
    score_request r = {PyArray_DATA(rows), PyArray_DATA(targets), PyArray_DIM(rows, 0),
                       (float)temperature};
    if (!(grad64 = arg_f64_vector(grad_obj, "grad_logprobs", 1)) ||
        check_length(grad64, "grad_logprobs", r.M, "score_rows") < 0)
        goto done;
    npy_intp dims[1] = {r.M};
    if (!(logprobs = PyArray_ZEROS(1, dims, NPY_FLOAT32, 0)) ||
        !(d_hidden = new_f32_2d(T, c->d_model)))
        goto done;
    if (return_stats && new_stats(&stats, r.M) < 0) goto done;
    scratch = model_scratch(h->m, scoring_scratch_floats(h->m, &r));
    grad32 = malloc(sizeof(float) * (r.M + 1));
    if (!scratch || !grad32) {
        PyErr_NoMemory();
        goto done;
    }
    for (npy_intp i = 0; i < r.M; i++) grad32[i] = (float)((double *)PyArray_DATA(grad64))[i];
    long bad;
    h->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    bad = model_score_backward(PyArray_DATA((PyArrayObject *)d_hidden), PyArray_DATA(grads),
                               PyArray_DATA((PyArrayObject *)logprobs),
                               return_stats ? &stats.view : NULL, h->m, PyArray_DATA(params),
                               PyArray_DATA(hidden), grad32, &r, scratch);
    Py_END_ALLOW_THREADS
    h->busy = 0;
    if (non_finite_logits(bad)) goto done;
    if (!return_stats)
        result = Py_BuildValue("(OO)", d_hidden, logprobs);
    else if ((stats_out = stats_dict(&stats)))
        result = Py_BuildValue("(OON)", d_hidden, logprobs, stats_out);
done:
    release_stats(&stats);
    free(grad32);
    Py_XDECREF(logprobs);
    Py_XDECREF(d_hidden);
    Py_XDECREF(params);
    Py_XDECREF(grads);
    Py_XDECREF(hidden);
    Py_XDECREF(rows);
    Py_XDECREF(targets);
    Py_XDECREF(grad64);
    return result;
}

/* model_generate(capsule, params, prompt_tokens, prompt_starts, max_new_tokens,
 * do_sample, temperature, top_k, top_p, eos_token_id, num_return_sequences,
 * seed) -> (tokens [n * R, max_new_tokens], lengths [n * R]); the Python side
 * checks the settings. */
static PyObject *py_model_generate(PyObject *self, PyObject *args) {
    PyObject *capsule, *params_obj, *tokens_obj, *starts_obj;
    generate_settings s;
    long long eos;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOOipfifLiK", &capsule, &params_obj, &tokens_obj, &starts_obj,
                          &s.max_new_tokens, &s.do_sample, &s.temperature, &s.top_k, &s.top_p,
                          &eos, &s.num_return_sequences, &seed))
        return NULL;
    s.eos_token_id = eos;
    s.seed = seed;
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    const model_config *c = model_get_config(h->m);
    PyArrayObject *params = NULL, *tokens = NULL, *starts = NULL;
    PyObject *out = NULL, *lengths = NULL, *result = NULL;
    if (!(params = param_vector(params_obj, "params", h->m, 0)) ||
        !(tokens = arg_int32_vector(tokens_obj, "input_ids")) ||
        !(starts = arg_int32_vector(starts_obj, "prompt_starts")))
        goto done;
    int n = (int)PyArray_DIM(starts, 0) - 1;
    const int32_t *tok = PyArray_DATA(tokens), *st = PyArray_DATA(starts);
    if (n < 1 || st[0] != 0 || st[n] != PyArray_DIM(tokens, 0)) {
        PyErr_SetString(PyExc_ValueError, "prompt_starts must begin at 0 and end at the token count");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        if (st[i + 1] <= st[i]) {
            PyErr_Format(PyExc_ValueError, "prompt %d is empty", i);
            goto done;
        }
        if (st[i + 1] - st[i] + s.max_new_tokens > c->max_positions) {
            PyErr_Format(PyExc_ValueError,
                         "prompt %d (%d tokens) plus max_new_tokens (%d) exceeds the model's "
                         "maximum positions (%d)",
                         i, st[i + 1] - st[i], s.max_new_tokens, c->max_positions);
            goto done;
        }
    }
    for (npy_intp t = 0; t < PyArray_DIM(tokens, 0); t++) {
        if (tok[t] < 0 || tok[t] >= c->vocab) {
            PyErr_Format(PyExc_ValueError, "input_ids holds token id %d, outside [0, %d) (vocab_size)",
                         tok[t], c->vocab);
            goto done;
        }
    }
    npy_intp dims[2] = {(npy_intp)n * s.num_return_sequences, s.max_new_tokens};
    if (!(out = PyArray_ZEROS(2, dims, NPY_INT32, 0)) || !(lengths = PyArray_ZEROS(1, dims, NPY_INT32, 0)))
        goto done;
    char err[256] = "";
    int status;
    h->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    status = model_generate(h->m, PyArray_DATA(params), tok, st, n, &s,
                            PyArray_DATA((PyArrayObject *)out),
                            PyArray_DATA((PyArrayObject *)lengths), err);
    Py_END_ALLOW_THREADS
    h->busy = 0;
    if (status < 0) {
        PyErr_SetString(status == -2 ? PyExc_ValueError : PyExc_MemoryError, err);
        goto done;
    }
    result = Py_BuildValue("(OO)", out, lengths);
done:
    Py_XDECREF(params);
    Py_XDECREF(tokens);
    Py_XDECREF(starts);
    Py_XDECREF(out);
    Py_XDECREF(lengths);
    return result;
}

/* model_score_dpo(capsule, params, grads, hidden, rows, targets, completion_lengths,
 *                 row_weights, ref_chosen, ref_rejected, weights, grad_scale, settings)
 * Scores the 2B completions of B preference pairs (completion_lengths [2B]:
 * chosen, rejected, chosen, ... rows in that order) in chunks of whole pairs,
 * with the DPO loss (settings: calign.losses' tuple) applied inside each chunk:
 * adds the lm_head gradient of grad_scale * sum of the losses into grads and
 * returns (d_hidden [T, d], logprobs [M], stats, policy sums [B, 2], losses [B],
 * chosen_rewards [B], rejected_rewards [B]). */
static PyObject *py_model_score_dpo(PyObject *self, PyObject *args) {
    PyObject *capsule, *params_obj, *grads_obj, *hidden_obj, *rows_obj, *targets_obj,
        *lengths_obj, *row_weights_obj, *ref_c_obj, *ref_r_obj, *weights_obj, *settings;
    double grad_scale;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOdO!", &capsule, &params_obj, &grads_obj,
                          &hidden_obj, &rows_obj, &targets_obj, &lengths_obj, &row_weights_obj,
                          &ref_c_obj, &ref_r_obj, &weights_obj, &grad_scale, &PyTuple_Type,
                          &settings))
        return NULL;
    if (!isfinite(grad_scale)) {
        raise_printf(PyExc_ValueError, "grad_scale must be finite, got %g", grad_scale);
        return NULL;
    }
    model_handle *h = get_handle(capsule);
    if (!h) return NULL;
    const model_config *c = model_get_config(h->m);
    dpo_params dp = {0};
    int types[DPO_MAX_LOSS_TYPES];
    double loss_weights[DPO_MAX_LOSS_TYPES];
    if (parse_dpo_settings(settings, &dp, types, loss_weights) < 0) return NULL;
    for (int t = 0; t < dp.n_loss_types; t++)
        if (types[t] == DPO_AOT || types[t] == DPO_AOT_UNPAIRED || types[t] == DPO_SFT) {
            /* each chunk of pairs gets its own loss: these need the whole batch */
            PyErr_SetString(PyExc_ValueError, "score_dpo_pairs cannot fuse the loss types that "
                            "couple a batch's pairs (aot, aot_unpaired, sft): score the pairs, "
                            "then call calign.losses.dpo_loss on the whole batch");
            return NULL;
        }
    PyArrayObject *params = NULL, *grads = NULL, *hidden = NULL, *rows = NULL, *targets = NULL,
                  *lengths = NULL, *row_weights = NULL, *ref_c = NULL, *ref_r = NULL,
                  *weights = NULL;
    PyObject *d_hidden = NULL, *logprobs = NULL, *policy = NULL, *losses = NULL,
             *chosen_rewards = NULL, *rejected_rewards = NULL, *stats_out = NULL, *result = NULL;
    stats_arrays stats = {0};
    int *group_first_seq = NULL, *iwork = NULL;
    long *seq_first_row = NULL;
    double *work = NULL;
    if (!(params = param_vector(params_obj, "params", h->m, 0)) ||
        !(grads = param_vector(grads_obj, "grads", h->m, 1)) ||
        !(hidden = hidden_states(hidden_obj, h->m)))
        goto done;
    npy_intp T = PyArray_DIM(hidden, 0);
    if (parse_scores(&rows, &targets, rows_obj, targets_obj, T, c->vocab) < 0 ||
        !(lengths = arg_int64_vector(lengths_obj, "completion_lengths")) ||
        !(ref_c = arg_f64_vector(ref_c_obj, "ref_chosen_logps", 1)) ||
        !(ref_r = arg_f64_vector(ref_r_obj, "ref_rejected_logps", 1)))
        goto done;
    npy_intp M = PyArray_DIM(rows, 0), n_seq = PyArray_DIM(lengths, 0), B = n_seq / 2;
    if (n_seq == 0 || n_seq % 2) {
        PyErr_SetString(PyExc_ValueError, "completion_lengths must hold a chosen and a rejected "
                        "length per pair");
        goto done;
    }
    if (check_length(ref_c, "ref_chosen_logps", B, "pairs") < 0 ||
        check_length(ref_r, "ref_rejected_logps", B, "pairs") < 0)
        goto done;
    if (row_weights_obj != Py_None &&
        (!(row_weights = arg_f64_vector(row_weights_obj, "row_weights", 1)) ||
         check_length(row_weights, "row_weights", M, "score_rows") < 0))
        goto done;
    if (weights_obj != Py_None &&
        (!(weights = arg_f64_vector(weights_obj, "weights", 1)) ||
         check_length(weights, "weights", B, "pairs") < 0))
        goto done;
    const int64_t *len = PyArray_DATA(lengths), *tgt = PyArray_DATA(targets);
    for (npy_intp i = 0; i < M; i++) {
        if (tgt[i] == -100) {
            PyErr_SetString(PyExc_ValueError, "every completion token must be scored (no -100)");
            goto done;
        }
    }
    group_first_seq = malloc(sizeof(int) * (B + 1));
    seq_first_row = malloc(sizeof(long) * (n_seq + 1));
    work = malloc(sizeof(double) * (15 * B + 1));
    iwork = malloc(sizeof(int) * (2 * B + 1));
    if (!group_first_seq || !seq_first_row || !work || !iwork) {
        PyErr_NoMemory();
        goto done;
    }
    seq_first_row[0] = 0;
    for (npy_intp s = 0; s < n_seq; s++) {
        if (len[s] < 1) {
            PyErr_Format(PyExc_ValueError, "completion_lengths[%zd] = %lld: every completion "
                         "needs a token", (Py_ssize_t)s, (long long)len[s]);
            goto done;
        }
        if (len[s] > M) { /* so that their sum cannot wrap */
            PyErr_Format(PyExc_ValueError, "completion_lengths[%zd] = %lld: more than the %zd "
                         "score_rows", (Py_ssize_t)s, (long long)len[s], (Py_ssize_t)M);
            goto done;
        }
        seq_first_row[s + 1] = seq_first_row[s] + len[s];
    }
    if (seq_first_row[n_seq] != M) {
        PyErr_Format(PyExc_ValueError, "completion_lengths add up to %ld but there are %zd "
                     "score_rows", seq_first_row[n_seq], (Py_ssize_t)M);
        goto done;
    }
    for (npy_intp g = 0; g <= B; g++) group_first_seq[g] = (int)(2 * g);
    /* work: seq sums [2B] | seq grads [2B] | lengths chosen, rejected [B each] |
     * dpo_pairs scratch [4B] | dpo_loss scratch [5B] */
    double *seq_sums = work, *seq_grads = seq_sums + n_seq, *chosen_len = seq_grads + n_seq;
    double *rejected_len = chosen_len + B, *pair_work = rejected_len + B;
    double *loss_work = pair_work + 4 * B;
    for (npy_intp i = 0; i < B; i++) {
        chosen_len[i] = (double)len[2 * i];
        rejected_len[i] = (double)len[2 * i + 1];
    }
    npy_intp dims[1] = {M}, pair_dims[2] = {B, 2};
    if (!(d_hidden = new_f32_2d(T, c->d_model)) ||
        !(logprobs = PyArray_ZEROS(1, dims, NPY_FLOAT32, 0)) ||
        !(policy = PyArray_ZEROS(2, pair_dims, NPY_FLOAT64, 0)) ||
        !(losses = PyArray_ZEROS(1, pair_dims, NPY_FLOAT64, 0)) ||
        !(chosen_rewards = PyArray_ZEROS(1, pair_dims, NPY_FLOAT64, 0)) ||
        !(rejected_rewards = PyArray_ZEROS(1, pair_dims, NPY_FLOAT64, 0)) ||
        new_stats(&stats, M) < 0)
        goto done;
    dpo_pairs ctx = {&dp, PyArray_DATA(ref_c), PyArray_DATA(ref_r), chosen_len, rejected_len,
                     weights ? PyArray_DATA(weights) : NULL, grad_scale,
                     PyArray_DATA((PyArrayObject *)losses),
                     PyArray_DATA((PyArrayObject *)chosen_rewards),
                     PyArray_DATA((PyArrayObject *)rejected_rewards), pair_work, loss_work, iwork};
    logprob_groups groups = {(int)B, group_first_seq, seq_first_row,
                             row_weights ? PyArray_DATA(row_weights) : NULL,
                             dpo_pairs_sequence_grads, &ctx};
    score_request r = {PyArray_DATA(rows), tgt, M, 1.0f};
    float *scratch = model_scratch(h->m, scoring_grouped_scratch_floats(h->m, &r));
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    long bad;
    h->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    bad = model_score_grouped(PyArray_DATA((PyArrayObject *)d_hidden), PyArray_DATA(grads),
                              PyArray_DATA((PyArrayObject *)logprobs), &stats.view, seq_sums,
                              seq_grads, h->m, PyArray_DATA(params), PyArray_DATA(hidden), &r,
                              &groups, scratch);
    Py_END_ALLOW_THREADS
    h->busy = 0;
    if (non_finite_logits(bad)) goto done;
    memcpy(PyArray_DATA((PyArrayObject *)policy), seq_sums, sizeof(double) * n_seq);
    if ((stats_out = stats_dict(&stats)))
        result = Py_BuildValue("(OONOOOO)", d_hidden, logprobs, stats_out, policy, losses,
                               chosen_rewards, rejected_rewards);
done:
    free(group_first_seq);
    free(seq_first_row);
    free(work);
    free(iwork);
    release_stats(&stats);
    Py_XDECREF(d_hidden);
    Py_XDECREF(logprobs);
    Py_XDECREF(policy);
    Py_XDECREF(losses);
    Py_XDECREF(chosen_rewards);
    Py_XDECREF(rejected_rewards);
    Py_XDECREF(params);
    Py_XDECREF(grads);
    Py_XDECREF(hidden);
    Py_XDECREF(rows);
    Py_XDECREF(targets);
    Py_XDECREF(lengths);
    Py_XDECREF(row_weights);
    Py_XDECREF(ref_c);
    Py_XDECREF(ref_r);
    Py_XDECREF(weights);
    return result;
}

PyMethodDef calign_model_methods[] = {
    {"model_generate", py_model_generate, METH_VARARGS, "Generation with a KV cache."},
    {"model_create", py_model_create, METH_O, "Engine model from an engine config dict."},
    {"model_layout", py_model_layout, METH_O, "(n_params, [(role, layer, offset, shape)])."},
    {"model_forward", py_model_forward, METH_VARARGS, "Final hidden states of a packed batch."},
    {"model_arena_bytes", py_model_arena_bytes, METH_O, "Bytes of the activation arena."},
    {"model_workspace_allocations", py_model_workspace_allocations, METH_O,
     "Times the activation arena or the logits scratch was (re)allocated."},
    {"model_backward", py_model_backward, METH_VARARGS, "Adds parameter gradients."},
    {"model_logits", py_model_logits, METH_VARARGS, "lm_head logits of hidden states."},
    {"model_score", py_model_score, METH_VARARGS, "Log-probs of targets at hidden rows."},
    {"model_score_dpo", py_model_score_dpo, METH_VARARGS,
     "Scores of preference pairs with the DPO loss fused in, and its backward."},
    {"model_score_backward", py_model_score_backward, METH_VARARGS,
     "Backward of model_score: (d_hidden, logprobs); lm_head gradient added to grads."},
    {NULL, NULL, 0, NULL},
};
