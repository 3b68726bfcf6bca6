/* Bindings of the transformer engine (calign.Model uses these).
 *
 * A model is a capsule holding its configuration, parameter layout,
 * activation arena and workspace; parameters and gradients are float32 NumPy
 * vectors owned by Python and passed in on each call. One call at a time per
 * model: every entry point that touches the arena or the workspace claims
 * the model first (check and claim are one step, under the GIL) and gives it
 * back on every way out, so a second thread gets a RuntimeError, never
 * another call's buffers. */
#include "binding/common.h"
#include "binding/model_handle.h"

#include <math.h>
#include <stdlib.h>

#include "core/gemm.h"
#include "core/status.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/scoring.h"

#define CAPSULE_NAME "calign.model"

static void capsule_destructor(PyObject *capsule) {
    model_handle *h = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (h) {
        model_free(h->m);
        Py_XDECREF(h->frozen);
        free(h);
    }
}

int refuse_frozen(const model_handle *h, const char *what) {
    if (!model_frozen_bf16(h->m)) return 0;
    PyErr_Format(PyExc_ValueError,
                 "this model holds its block weights in bfloat16 only (a frozen reference): %s "
                 "needs the float32 weights",
                 what);
    return -1;
}

/* The model of a capsule, without claiming it (for what only reads its
 * immutable configuration and layout). */
model_handle *model_of(PyObject *capsule) {
    return PyCapsule_GetPointer(capsule, CAPSULE_NAME);
}

/* The model, claimed for this call; NULL with RuntimeError when a call on
 * another thread holds it. */
model_handle *claim_model(PyObject *capsule) {
    model_handle *h = model_of(capsule);
    if (!h) return NULL;
    if (h->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this model is being used by another thread; calls on one model must "
                        "not overlap");
        return NULL;
    }
    h->busy = 1;
    return h;
}

void release_model(model_handle *h) {
    if (h) h->busy = 0;
}

/* ---- configuration ------------------------------------------------------------- */

/* The engine config's fields (csrc/model/model.h's model_config), as
 * calign.model.config builds them: _C.describe()["engine_config"]. */
static char *ENGINE_CONFIG_KEYS[] = {
    "n_layer", "d_model", "n_head", "n_kv_head", "head_dim", "d_ff", "vocab", "max_positions",
    "rmsnorm", "swiglu", "conv1d_layout", "learned_positions", "rope_theta", "qkv_bias",
    "o_bias", "mlp_bias", "qk_norm", "tied_embeddings", "norm_eps", "polynorm", "differential",
    "attn_norm_eps", NULL,
};

static PyObject *py_model_create(PyObject *self, PyObject *args, PyObject *kwargs) {
    int_arg size[8], flag[11];
    for (int i = 0; i < 8; i++) size[i] = (int_arg){ENGINE_CONFIG_KEYS[i], 1, INT32_MAX};
    const int flag_key[11] = {8, 9, 10, 11, 13, 14, 15, 16, 17, 19, 20};
    for (int i = 0; i < 11; i++) flag[i] = (int_arg){ENGINE_CONFIG_KEYS[flag_key[i]], 0, 1};
    double rope_theta, norm_eps, attn_norm_eps;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$O&O&O&O&O&O&O&O&O&O&O&O&dO&O&O&O&O&dO&O&d", ENGINE_CONFIG_KEYS,
            to_int, &size[0], to_int, &size[1], to_int, &size[2], to_int, &size[3], to_int,
            &size[4], to_int, &size[5], to_int, &size[6], to_int, &size[7], to_int, &flag[0],
            to_int, &flag[1], to_int, &flag[2], to_int, &flag[3], &rope_theta, to_int, &flag[4],
            to_int, &flag[5], to_int, &flag[6], to_int, &flag[7], to_int, &flag[8], &norm_eps,
            to_int, &flag[9], to_int, &flag[10], &attn_norm_eps))
        return NULL;
    if (!isfinite(rope_theta) || rope_theta < 0)
        return raise_printf(PyExc_ValueError, "rope_theta must be a finite number >= 0 (0: no "
                            "rotary embedding), got %g", rope_theta);
    if (!isfinite(norm_eps) || norm_eps < 0 || !isfinite((float)norm_eps))
        return raise_printf(PyExc_ValueError, "norm_eps must be a finite number >= 0 (in "
                            "float32), got %g", norm_eps);
    if (!isfinite(attn_norm_eps) || attn_norm_eps < 0 || !isfinite((float)attn_norm_eps))
        return raise_printf(PyExc_ValueError, "attn_norm_eps must be a finite number >= 0 (in "
                            "float32), got %g", attn_norm_eps);
    if (flag[9].value && !flag[1].value)
        return raise_printf(PyExc_ValueError, "polynorm gates a gated MLP: it needs swiglu=1 "
                            "(the [gate; up] projection)");
    model_config c = {
        .n_layer = (int)size[0].value, .d_model = (int)size[1].value,
        .n_head = (int)size[2].value, .n_kv_head = (int)size[3].value,
        .head_dim = (int)size[4].value, .d_ff = (int)size[5].value, .vocab = (int)size[6].value,
        .max_positions = (int)size[7].value,
        .norm = flag[0].value ? NORM_RMSNORM : NORM_LAYERNORM,
        .mlp = flag[9].value ? MLP_POLYNORM : flag[1].value ? MLP_SWIGLU : MLP_GELU_TANH,
        .attention = flag[10].value ? ATTENTION_DIFFERENTIAL : ATTENTION_STANDARD,
        .attn_norm_eps = (float)attn_norm_eps,
        .layout = flag[2].value ? WEIGHT_IN_OUT : WEIGHT_OUT_IN,
        .learned_positions = (int)flag[3].value, .rope_theta = rope_theta,
        .qkv_bias = (int)flag[4].value, .o_bias = (int)flag[5].value,
        .mlp_bias = (int)flag[6].value, .qk_norm = (int)flag[7].value,
        .tied_embeddings = (int)flag[8].value, .norm_eps = (float)norm_eps,
    };
    char err[CALIGN_ERR_LEN] = "";
    model_handle *h = calloc(1, sizeof(model_handle));
    if (!h) return PyErr_NoMemory();
    if (!(h->m = model_create(&c, err))) {
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

/* model_set_adapters(model, layer, site, out_offset, out_dim, in_dim, r, a_offset, b_offset,
 * scale, n_floats): one entry per adapter in each sequence (site by name,
 * _C.describe()["lora_sites"]); n_floats, the adapter vector's length.
 * Empty sequences remove the adapters. */
static PyObject *py_model_set_adapters(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "layer", "site", "out_offset", "out_dim", "in_dim", "r",
                             "a_offset", "b_offset", "scale", "n_floats", NULL};
    PyObject *capsule, *sites;
    array_arg ints[8] = {{"layer"}, {"out_offset"}, {"out_dim"}, {"in_dim"}, {"r"},
                         {"a_offset"}, {"b_offset"}}, scale = {"scale"};
    int_arg n_floats = {"n_floats", 0, INT64_MAX};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O$O&OO&O&O&O&O&O&O&O&", kwlist, &capsule,
                                     to_int64_vector, &ints[0], &sites, to_int64_vector, &ints[1],
                                     to_int64_vector, &ints[2], to_int64_vector, &ints[3],
                                     to_int64_vector, &ints[4], to_int64_vector, &ints[5],
                                     to_int64_vector, &ints[6], to_f64_vector, &scale, to_int,
                                     &n_floats))
        return NULL;
    PyObject *result = NULL, *fast = NULL;
    lora_adapter *list = NULL;
    model_handle *h = NULL;
    npy_intp n = ARG_LEN(ints[0]);
    if (!(fast = PySequence_Fast(sites, "site must be a sequence of names"))) goto done;
    if (PySequence_Fast_GET_SIZE(fast) != n || check_rows(&scale, n, "layer") < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "site has another length than layer");
        goto done;
    }
    for (int k = 1; k < 7; k++)
        if (check_rows(&ints[k], n, "layer") < 0) goto done;
    if (n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "more than 2**31 - 1 adapters");
        goto done;
    }
    if (!(list = calloc(n > 0 ? n : 1, sizeof(lora_adapter)))) {
        PyErr_NoMemory();
        goto done;
    }
    for (npy_intp i = 0; i < n; i++) {
        PyObject *name = PySequence_Fast_GET_ITEM(fast, i);
        const char *text = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
        if (!text) PyErr_Clear();
        int site = name_index(text, "site", LORA_SITE_NAMES, LORA_N_SITES);
        if (site < 0) goto done;
        int64_t v[7];
        for (int k = 0; k < 7; k++) {
            v[k] = ARG_DATA(const int64_t, ints[k])[i];
            if (v[k] < 0 || (k < 5 && v[k] > INT32_MAX)) {
                PyErr_Format(PyExc_ValueError, "%s[%zd] = %lld is out of range", ints[k].name,
                             (Py_ssize_t)i, (long long)v[k]);
                goto done;
            }
        }
        list[i] = (lora_adapter){(int)v[0], (lora_site)site, (int)v[1], (int)v[2], (int)v[3],
                                 (int)v[4], (long)v[5], (long)v[6],
                                 (float)ARG_DATA(const double, scale)[i]};
    }
    if (!(h = claim_model(capsule))) goto done;
    char err[CALIGN_ERR_LEN] = "";
    int status = model_set_adapters(h->m, list, (int)n, (long)n_floats.value, err);
    if (status == -2) {
        PyErr_NoMemory();
        goto done;
    }
    if (status < 0) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    release_model(h);
    free(list);
    Py_XDECREF(fast);
    for (int k = 0; k < 7; k++) arg_release(&ints[k]);
    arg_release(&scale);
    return result;
}

static PyObject *py_model_arena_bytes(PyObject *self, PyObject *capsule) {
    model_handle *h = model_of(capsule);
    return h ? PyLong_FromSize_t(model_arena_bytes(h->m)) : NULL;
}

static PyObject *py_model_workspace_allocations(PyObject *self, PyObject *capsule) {
    model_handle *h = model_of(capsule);
    return h ? PyLong_FromLong(model_workspace_allocations(h->m)) : NULL;
}

static PyObject *py_model_layout(PyObject *self, PyObject *capsule) {
    model_handle *h = model_of(capsule);
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

/* ---- argument checks against the model ------------------------------------------ */

/* params or grads: a float32 vector of exactly the model's parameter count. */
int check_param_vector(const array_arg *a, const model *m) {
    if (ARG_LEN(*a) != model_param_count(m)) {
        PyErr_Format(PyExc_ValueError, "%s has %zd floats but the model has %ld parameters",
                     a->name, (Py_ssize_t)ARG_LEN(*a), model_param_count(m));
        return -1;
    }
    return 0;
}

/* adapters or adapter_grads: None, or a float32 vector of the model's adapter
 * vector length (model_set_adapters). */
int check_adapter_vector(const array_arg *a, const model *m) {
    if (!a->array) return 0;
    if (!model_adapter_floats(m)) {
        PyErr_Format(PyExc_ValueError, "%s given but the model has no adapters", a->name);
        return -1;
    }
    if (ARG_LEN(*a) != model_adapter_floats(m)) {
        PyErr_Format(PyExc_ValueError, "%s has %zd floats but the model's adapters have %ld",
                     a->name, (Py_ssize_t)ARG_LEN(*a), model_adapter_floats(m));
        return -1;
    }
    return 0;
}

/* A packed batch's four arrays (int64 as given, narrowed to int32 once
 * checked against the model) and the C view of them. */
typedef struct {
    array_arg ids, positions, starts, branch;
    packed_batch b;
} batch_args;

#define BATCH_ARGS {{"input_ids"}, {"position_ids"}, {"sequence_starts"}, {"branch_ids"}}

static void release_batch(batch_args *a) {
    arg_release(&a->ids);
    arg_release(&a->positions);
    arg_release(&a->starts);
    arg_release(&a->branch);
}

static int check_batch(batch_args *a, const model *m) {
    const model_config *c = model_get_config(m);
    npy_intp T = ARG_LEN(a->ids);
    if (T == 0) {
        PyErr_SetString(PyExc_ValueError, "the batch is empty: input_ids has no tokens");
        return -1;
    }
    if (T > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "input_ids has %zd tokens, more than 2**31 - 1",
                     (Py_ssize_t)T);
        return -1;
    }
    if (check_rows(&a->positions, T, "input_ids") < 0 ||
        check_rows(&a->branch, T, "input_ids") < 0 ||
        narrow_to_int32_described(&a->ids, 0, c->vocab, "token id", " (vocab_size)") < 0 ||
        narrow_to_int32_described(&a->positions, 0, c->max_positions, "position",
                                  ": the sequence is longer than the model's maximum positions "
                                  "(max_position_embeddings)") < 0 ||
        narrow_to_int32(&a->branch, 0, INT32_MAX, "branch ids are >= 0") < 0 ||
        narrow_to_int32(&a->starts, 0, T + 1, "sequence starts are token indices") < 0)
        return -1;
    const int32_t *ss = ARG_DATA(const int32_t, a->starts);
    npy_intp n_starts = ARG_LEN(a->starts);
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
    a->b = (packed_batch){ARG_DATA(const int32_t, a->ids), ARG_DATA(const int32_t, a->positions),
                          ARG_DATA(const int32_t, a->branch), ss, T, (int)(n_starts - 1)};
    return 0;
}

/* Final hidden states: [T, hidden_size]. */
static int check_hidden(const array_arg *hidden, const model *m) {
    if (PyArray_DIM(hidden->array, 1) != model_get_config(m)->d_model) {
        PyErr_Format(PyExc_ValueError, "%s must have hidden_size columns (%d), got %zd",
                     hidden->name, model_get_config(m)->d_model,
                     (Py_ssize_t)PyArray_DIM(hidden->array, 1));
        return -1;
    }
    return 0;
}

/* score_rows in [0, T), score_targets in [0, vocab) or -100, of equal length. */
static int check_scores(const array_arg *rows, const array_arg *targets, npy_intp T,
                        const model *m) {
    const int vocab = model_get_config(m)->vocab;
    npy_intp M = ARG_LEN(*rows);
    if (check_rows(targets, M, rows->name) < 0) return -1;
    const int64_t *r = ARG_DATA(const int64_t, *rows), *t = ARG_DATA(const int64_t, *targets);
    for (npy_intp i = 0; i < M; i++) {
        if (r[i] < 0 || r[i] >= T) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] = %lld is outside [0, %zd) (rows of hidden)",
                         rows->name, (Py_ssize_t)i, (long long)r[i], (Py_ssize_t)T);
            return -1;
        }
        if (t[i] != -100 && (t[i] < 0 || t[i] >= vocab)) {
            PyErr_Format(PyExc_ValueError, "label %lld is outside [0, %d) (vocab_size) and is "
                         "not -100", (long long)t[i], vocab);
            return -1;
        }
    }
    return 0;
}

static PyObject *new_f32_2d(npy_intp rows, npy_intp cols) {
    npy_intp dims[2] = {rows, cols};
    return PyArray_ZEROS(2, dims, NPY_FLOAT32, 0);
}

static float *f32(PyObject *arr) { return (float *)PyArray_DATA((PyArrayObject *)arr); }

/* The per-score statistics TRL logs, as NumPy arrays and the C view of them. */
typedef struct {
    PyObject *entropy, *mean_logit, *log_sum_sq_probs, *is_top1;
    logprob_stats view;
} stats_arrays;

static int new_stats(stats_arrays *s, npy_intp M) {
    if (!(s->entropy = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) ||
        !(s->mean_logit = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) ||
        !(s->log_sum_sq_probs = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) ||
        !(s->is_top1 = PyArray_ZEROS(1, &M, NPY_BOOL, 0)))
        return -1;
    s->view.entropy = f32(s->entropy);
    s->view.mean_logit = f32(s->mean_logit);
    s->view.log_sum_sq_probs = f32(s->log_sum_sq_probs);
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

/* ---- calls ------------------------------------------------------------------------- */

static PyObject *py_model_forward(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "input_ids", "position_ids", "sequence_starts",
                             "branch_ids", "mode", "adapters", NULL};
    PyObject *capsule;
    const char *mode_name = "inference";
    array_arg params = {"params"}, adapters = {"adapters"};
    batch_args a = BATCH_ARGS;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&O&O&O&|$sO&", kwlist, &capsule,
                                     to_f32_vector, &params, to_int64_vector, &a.ids,
                                     to_int64_vector, &a.positions, to_int64_vector, &a.starts,
                                     to_int64_vector, &a.branch, &mode_name,
                                     to_f32_vector_or_none, &adapters))
        return NULL;
    PyObject *hidden = NULL;
    model_handle *h = NULL;
    int mode = name_index(mode_name, "mode", FORWARD_MODE_NAMES, FORWARD_N_MODES);
    if (mode < 0 || !(h = claim_model(capsule)) || check_param_vector(&params, h->m) < 0 ||
        check_adapter_vector(&adapters, h->m) < 0 || check_batch(&a, h->m) < 0 ||
        (mode != FORWARD_INFERENCE && refuse_frozen(h, "a training forward") < 0))
        goto done;
    if (model_prepare(h->m, &a.b, mode) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(hidden = new_f32_2d(a.b.T, model_get_config(h->m)->d_model))) goto done;
    Py_BEGIN_ALLOW_THREADS
    model_forward(h->m, f32(hidden), ARG_DATA(const float, params),
                  adapters.array ? ARG_DATA(const float, adapters) : NULL, &a.b, mode);
    Py_END_ALLOW_THREADS
done:
    release_model(h);
    arg_release(&params);
    arg_release(&adapters);
    release_batch(&a);
    return hidden;
}

/* model_set_control: the steering rows [n_layer * d] (None: off), copied into the model. */
static PyObject *py_model_set_control(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "control", NULL};
    PyObject *capsule;
    array_arg control = {"control"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&", kwlist, &capsule,
                                     to_f32_vector_or_none, &control))
        return NULL;
    PyObject *result = NULL;
    model_handle *h = claim_model(capsule);
    if (!h) goto done;
    const model_config *c = model_get_config(h->m);
    if (control.array) {
        if (check_rows(&control, (npy_intp)c->n_layer * c->d_model, "n_layer * hidden_size") < 0)
            goto done;
        const float *x = ARG_DATA(const float, control);
        for (npy_intp i = 0; i < ARG_LEN(control); i++)
            if (!isfinite(x[i])) {
                raise_printf(PyExc_ValueError, "control[%zd] = %g must be finite",
                             (Py_ssize_t)i, (double)x[i]);
                goto done;
            }
    }
    if (model_set_control(h->m, control.array ? ARG_DATA(const float, control) : NULL) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    release_model(h);
    arg_release(&control);
    return result;
}

/* model_set_bf16_products: whether the packed forward and backward multiply
 * bfloat16-rounded operands (model_set_bf16_products). */
static PyObject *py_model_set_bf16_products(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "on", NULL};
    PyObject *capsule;
    int on;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Op", kwlist, &capsule, &on)) return NULL;
    model_handle *h = claim_model(capsule);
    if (!h) return NULL;
    if (!on && refuse_frozen(h, "turning bf16 products off") < 0) {
        release_model(h);
        return NULL;
    }
    model_set_bf16_products(h->m, on);
    release_model(h);
    Py_RETURN_NONE;
}

/* model_bf16_block_weights: a new uint16 vector of the model's parameter
 * count holding the blocks' linear weights of params rounded to bfloat16
 * (model_bf16_block_weights; the other entries 0, never written). */
static PyObject *py_model_bf16_block_weights(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", NULL};
    PyObject *capsule, *out = NULL;
    array_arg params = {"params"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&", kwlist, &capsule, to_f32_vector, &params))
        return NULL;
    model_handle *h = claim_model(capsule);
    if (!h || check_param_vector(&params, h->m) < 0) goto done;
    npy_intp n = (npy_intp)model_param_count(h->m);
    if (!(out = PyArray_ZEROS(1, &n, NPY_UINT16, 0))) goto done;
    Py_BEGIN_ALLOW_THREADS
    model_bf16_block_weights(h->m, ARG_DATA(const float, params),
                             (uint16_t *)PyArray_DATA((PyArrayObject *)out));
    Py_END_ALLOW_THREADS
done:
    release_model(h);
    arg_release(&params);
    return out;
}

/* model_set_frozen_bf16: the model reads its block weights from `weights`
 * (model_bf16_block_weights' vector, kept alive by the model) from now on. */
static PyObject *py_model_set_frozen_bf16(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "weights", NULL};
    PyObject *capsule, *weights;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO", kwlist, &capsule, &weights)) return NULL;
    model_handle *h = claim_model(capsule);
    if (!h) return NULL;
    PyArrayObject *w = (PyArrayObject *)weights;
    if (!PyArray_Check(weights) || PyArray_TYPE(w) != NPY_UINT16 || PyArray_NDIM(w) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(w) || PyArray_DIM(w, 0) != (npy_intp)model_param_count(h->m)) {
        PyErr_SetString(PyExc_ValueError, "weights must be model_bf16_block_weights' uint16 "
                                          "vector of the model's parameter count");
        release_model(h);
        return NULL;
    }
    Py_XSETREF(h->frozen, Py_NewRef(weights));
    model_set_frozen_bf16(h->m, (const uint16_t *)PyArray_DATA(w));
    release_model(h);
    Py_RETURN_NONE;
}

/* model_forward_layers: the residual stream after the given blocks, [n, T, d]. */
static PyObject *py_model_forward_layers(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "input_ids", "position_ids", "sequence_starts",
                             "branch_ids", "layers", "adapters", NULL};
    PyObject *capsule;
    array_arg params = {"params"}, adapters = {"adapters"}, layers = {"layers"};
    batch_args a = BATCH_ARGS;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&O&O&O&O&|$O&", kwlist, &capsule,
                                     to_f32_vector, &params, to_int64_vector, &a.ids,
                                     to_int64_vector, &a.positions, to_int64_vector, &a.starts,
                                     to_int64_vector, &a.branch, to_int64_vector, &layers,
                                     to_f32_vector_or_none, &adapters))
        return NULL;
    PyObject *out = NULL;
    int *chosen = NULL;
    model_handle *h = NULL;
    const npy_intp n = ARG_LEN(layers);
    if (!(h = claim_model(capsule)) || check_param_vector(&params, h->m) < 0 ||
        check_adapter_vector(&adapters, h->m) < 0 || check_batch(&a, h->m) < 0)
        goto done;
    const int n_layer = model_get_config(h->m)->n_layer;
    const int64_t *want = ARG_DATA(const int64_t, layers);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "layers must name at least one block");
        goto done;
    }
    for (npy_intp i = 0; i < n; i++)
        if (want[i] < 0 || want[i] >= n_layer || (i > 0 && want[i] <= want[i - 1])) {
            raise_printf(PyExc_ValueError, "layers must be ascending distinct block indices in "
                         "[0, %d), got %lld at %zd", n_layer, (long long)want[i], (Py_ssize_t)i);
            goto done;
        }
    if (!(chosen = malloc(sizeof(int) * n))) {
        PyErr_NoMemory();
        goto done;
    }
    for (npy_intp i = 0; i < n; i++) chosen[i] = (int)want[i];
    if (model_prepare(h->m, &a.b, FORWARD_INFERENCE) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    npy_intp dims[3] = {n, a.b.T, model_get_config(h->m)->d_model};
    if (!(out = PyArray_ZEROS(3, dims, NPY_FLOAT32, 0))) goto done;
    Py_BEGIN_ALLOW_THREADS
    model_forward_layers(h->m, f32(out), ARG_DATA(const float, params),
                         adapters.array ? ARG_DATA(const float, adapters) : NULL, &a.b, chosen,
                         (int)n);
    Py_END_ALLOW_THREADS
done:
    free(chosen);
    release_model(h);
    arg_release(&params);
    arg_release(&adapters);
    arg_release(&layers);
    release_batch(&a);
    return out;
}

static PyObject *py_model_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "grads", "d_hidden", "input_ids", "position_ids",
                             "sequence_starts", "branch_ids", "adapters", "adapter_grads", NULL};
    PyObject *capsule;
    array_arg params = {"params"}, grads = {"grads"}, d_hidden = {"d_hidden"},
              adapters = {"adapters"}, adapter_grads = {"adapter_grads"};
    batch_args a = BATCH_ARGS;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&O&O&O&O&O&|$O&O&", kwlist, &capsule,
                                     to_f32_vector, &params, to_f32_vector_out_or_none, &grads,
                                     to_f32_matrix, &d_hidden, to_int64_vector, &a.ids,
                                     to_int64_vector, &a.positions, to_int64_vector, &a.starts,
                                     to_int64_vector, &a.branch, to_f32_vector_or_none,
                                     &adapters, to_f32_vector_out_or_none, &adapter_grads))
        return NULL;
    PyObject *result = NULL;
    PyArrayObject *d_copy = NULL;
    model_handle *h = claim_model(capsule);
    if (!h || refuse_frozen(h, "the backward") < 0 || check_param_vector(&params, h->m) < 0 ||
        (grads.array && check_param_vector(&grads, h->m) < 0) ||
        check_adapter_vector(&adapters, h->m) < 0 ||
        check_adapter_vector(&adapter_grads, h->m) < 0 || check_batch(&a, h->m) < 0 ||
        check_hidden(&d_hidden, h->m) < 0)
        goto done;
    if (!adapters.array != !adapter_grads.array) {
        PyErr_SetString(PyExc_ValueError, "adapters and adapter_grads go together (None for "
                                          "neither)");
        goto done;
    }
    if (!grads.array && !adapter_grads.array) {
        PyErr_SetString(PyExc_ValueError, "grads is None (the base frozen) and there are no "
                                          "adapter_grads: the backward would compute nothing");
        goto done;
    }
    if (PyArray_DIM(d_hidden.array, 0) != a.b.T) {
        PyErr_SetString(PyExc_ValueError, "d_hidden must have shape [tokens, hidden_size]");
        goto done;
    }
    const float *lora = adapters.array ? ARG_DATA(const float, adapters) : NULL;
    if (!model_ready_for_backward(h->m, &a.b, lora)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "backward needs a training forward of the same batch, with the same "
                        "adapters, just before it");
        goto done;
    }
    /* the backward uses d_hidden as scratch: work on a copy */
    if (!(d_copy = (PyArrayObject *)PyArray_NewCopy(d_hidden.array, NPY_CORDER))) goto done;
    Py_BEGIN_ALLOW_THREADS
    model_backward(h->m, grads.array ? ARG_DATA(float, grads) : NULL,
                   adapter_grads.array ? ARG_DATA(float, adapter_grads) : NULL,
                   ARG_DATA(const float, params), lora, PyArray_DATA(d_copy), &a.b);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release_model(h);
    Py_XDECREF(d_copy);
    arg_release(&params);
    arg_release(&grads);
    arg_release(&adapters);
    arg_release(&adapter_grads);
    arg_release(&d_hidden);
    release_batch(&a);
    return result;
}

static PyObject *py_model_logits(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "hidden", NULL};
    PyObject *capsule;
    array_arg params = {"params"}, hidden = {"hidden"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&", kwlist, &capsule, to_f32_vector,
                                     &params, to_f32_matrix, &hidden))
        return NULL;
    PyObject *logits = NULL;
    model_handle *h = claim_model(capsule);
    if (!h || check_param_vector(&params, h->m) < 0 || check_hidden(&hidden, h->m) < 0)
        goto done;
    const model_config *c = model_get_config(h->m);
    npy_intp T = PyArray_DIM(hidden.array, 0);
    if (T > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "hidden has more than 2**31 - 1 rows");
        goto done;
    }
    if (!(logits = new_f32_2d(T, c->vocab))) goto done;
    const float *W = ARG_DATA(const float, params) + model_lm_head_offset(h->m);
    Py_BEGIN_ALLOW_THREADS
    linear_forward(f32(logits), c->vocab, ARG_DATA(const float, hidden), W, NULL, (int)T,
                   c->d_model, c->vocab, WEIGHT_OUT_IN, model_bf16_products(h->m));
    Py_END_ALLOW_THREADS
done:
    release_model(h);
    arg_release(&params);
    arg_release(&hidden);
    return logits;
}

/* model_score(model, params, hidden, score_rows, score_targets, temperature=1.0,
 *             return_stats=False) -> logprobs [M], or (logprobs, {"entropy",
 * "mean_logit", "log_sum_sq_probs", "is_top1"}) with return_stats. */
static PyObject *py_model_score(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "hidden", "score_rows", "score_targets",
                             "temperature", "return_stats", NULL};
    PyObject *capsule;
    array_arg params = {"params"}, hidden = {"hidden"}, rows = {"score_rows"},
              targets = {"score_targets"};
    double temperature = 1.0;
    int return_stats = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&O&O&|$dp", kwlist, &capsule,
                                     to_f32_vector, &params, to_f32_matrix, &hidden,
                                     to_int64_vector, &rows, to_int64_vector, &targets,
                                     &temperature, &return_stats))
        return NULL;
    PyObject *logprobs = NULL, *result = NULL, *stats_out = NULL;
    stats_arrays stats = {0};
    model_handle *h = NULL;
    if (check_temperature(temperature) < 0 || !(h = claim_model(capsule)) ||
        check_param_vector(&params, h->m) < 0 || check_hidden(&hidden, h->m) < 0 ||
        check_scores(&rows, &targets, PyArray_DIM(hidden.array, 0), h->m) < 0)
        goto done;
    score_request r = {ARG_DATA(const int64_t, rows), ARG_DATA(const int64_t, targets),
                       ARG_LEN(rows), (float)temperature};
    if (!(logprobs = PyArray_ZEROS(1, &r.M, NPY_FLOAT32, 0)) ||
        (return_stats && new_stats(&stats, r.M) < 0))
        goto done;
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = model_score_forward(f32(logprobs), return_stats ? &stats.view : NULL, h->m,
                                 ARG_DATA(const float, params), ARG_DATA(const float, hidden),
                                 &r, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    if (!return_stats)
        result = Py_NewRef(logprobs);
    else if ((stats_out = stats_dict(&stats)))
        result = Py_BuildValue("(ON)", logprobs, stats_out);
done:
    release_model(h);
    release_stats(&stats);
    Py_XDECREF(logprobs);
    arg_release(&params);
    arg_release(&hidden);
    arg_release(&rows);
    arg_release(&targets);
    return result;
}

/* model_score_backward(model, params, grads, hidden, score_rows, score_targets,
 * grad_logprobs, temperature=1.0, return_stats=False) -> (d_hidden [T, d],
 * logprobs [M]) or with return_stats (d_hidden, logprobs, stats as
 * model_score's); the lm_head gradient goes into grads. */
static PyObject *py_model_score_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "grads", "hidden", "score_rows", "score_targets",
                             "grad_logprobs", "temperature", "return_stats", NULL};
    PyObject *capsule;
    array_arg params = {"params"}, grads = {"grads"}, hidden = {"hidden"}, rows = {"score_rows"},
              targets = {"score_targets"}, grad = {"grad_logprobs"};
    double temperature = 1.0;
    int return_stats = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&O&O&O&O&|$dp", kwlist, &capsule,
                                     to_f32_vector, &params, to_f32_vector_out_or_none, &grads,
                                     to_f32_matrix, &hidden, to_int64_vector, &rows,
                                     to_int64_vector, &targets, to_f64_vector, &grad,
                                     &temperature, &return_stats))
        return NULL;
    PyObject *logprobs = NULL, *d_hidden = NULL, *result = NULL, *stats_out = NULL;
    stats_arrays stats = {0};
    model_handle *h = NULL;
    if (check_temperature(temperature) < 0 || !(h = claim_model(capsule)) ||
        check_param_vector(&params, h->m) < 0 ||
        (grads.array && check_param_vector(&grads, h->m) < 0) ||
        check_hidden(&hidden, h->m) < 0 ||
        check_scores(&rows, &targets, PyArray_DIM(hidden.array, 0), h->m) < 0 ||
        check_rows(&grad, ARG_LEN(rows), rows.name) < 0)
        goto done;
    score_request r = {ARG_DATA(const int64_t, rows), ARG_DATA(const int64_t, targets),
                       ARG_LEN(rows), (float)temperature};
    if (!(logprobs = PyArray_ZEROS(1, &r.M, NPY_FLOAT32, 0)) ||
        !(d_hidden = new_f32_2d(PyArray_DIM(hidden.array, 0), model_get_config(h->m)->d_model)) ||
        (return_stats && new_stats(&stats, r.M) < 0))
        goto done;
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = model_score_backward(f32(d_hidden), grads.array ? ARG_DATA(float, grads) : NULL,
                                  f32(logprobs),
                                  return_stats ? &stats.view : NULL, h->m,
                                  ARG_DATA(const float, params), ARG_DATA(const float, hidden),
                                  ARG_DATA(const double, grad), &r, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    if (!return_stats)
        result = Py_BuildValue("(OO)", d_hidden, logprobs);
    else if ((stats_out = stats_dict(&stats)))
        result = Py_BuildValue("(OON)", d_hidden, logprobs, stats_out);
done:
    release_model(h);
    release_stats(&stats);
    Py_XDECREF(logprobs);
    Py_XDECREF(d_hidden);
    arg_release(&params);
    arg_release(&grads);
    arg_release(&hidden);
    arg_release(&rows);
    arg_release(&targets);
    arg_release(&grad);
    return result;
}

/* model_score_dpo(model, params, grads, hidden, score_rows, score_targets,
 *                 completion_lengths, ref_chosen_logps, ref_rejected_logps, settings,
 *                 token_weights=None, weights=None, grad_scale=1.0)
 * Scores the 2B completions of B preference pairs (completion_lengths [2B]:
 * chosen, rejected, chosen, ...) with the DPO loss (settings: the dict of
 * calign.losses.dpo_settings) applied inside the kernel (model_score_dpo_pairs):
 * adds the lm_head gradient of grad_scale * sum of the losses into grads and
 * returns (d_hidden [T, d], logprobs [M], stats, policy sums [B, 2], losses [B],
 * chosen_rewards [B], rejected_rewards [B]). */
static PyObject *py_model_score_grpo(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "grads", "hidden", "score_rows", "score_targets",
                             "completion_lengths", "advantages", "completion_mask", "settings",
                             "old_logps", "ref_logps", "temperature", "max_completion_length",
                             "num_items_in_batch", "gradient_accumulation_steps", NULL};
    PyObject *capsule, *settings;
    array_arg params = {"params"}, grads = {"grads"}, hidden = {"hidden"}, rows = {"score_rows"},
              targets = {"score_targets"}, lengths = {"completion_lengths"},
              advantages = {"advantages"}, mask = {"completion_mask"}, old = {"old_logps"},
              ref = {"ref_logps"};
    double temperature = 1.0;
    real_arg items = {"num_items_in_batch", 0, INFINITY};
    int_arg max_len = {"max_completion_length", 0, INT32_MAX},
            accum = {"gradient_accumulation_steps", 1, INT32_MAX};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OO&O&O&O&O&O&O&O&O!|$O&O&dO&O&O&", kwlist, &capsule, to_f32_vector,
            &params, to_f32_vector_out_or_none, &grads, to_f32_matrix, &hidden, to_int64_vector,
            &rows, to_int64_vector, &targets, to_int64_vector, &lengths, to_f64_vector,
            &advantages, to_f32_vector, &mask, &PyDict_Type, &settings, to_f32_vector_or_none,
            &old, to_f32_vector_or_none, &ref, &temperature, to_int, &max_len, to_real, &items,
            to_int, &accum))
        return NULL;
    PyObject *d_hidden = NULL, *logprobs = NULL, *grad_logps = NULL, *stats_out = NULL,
             *metrics = NULL, *result = NULL;
    stats_arrays stats = {0};
    model_handle *h = NULL;
    grpo_params gp;
    grpo_metrics gm;
    npy_intp S = ARG_LEN(lengths), M = ARG_LEN(rows);
    if (S == 0 || S > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "completion_lengths must hold one length per "
                        "completion (at least one)");
        goto done;
    }
    if (check_temperature(temperature) < 0 || parse_grpo_settings(settings, &gp) < 0 ||
        check_grpo_batch(&gp, ref.array != NULL, max_len.value) < 0 ||
        check_rows(&advantages, S, "completions") < 0 || check_rows(&mask, M, rows.name) < 0 ||
        check_values(&mask, MASK) < 0 ||
        (old.array && (check_rows(&old, M, rows.name) < 0 || check_values(&old, LOGPROB) < 0)) ||
        (ref.array && (check_rows(&ref, M, rows.name) < 0 || check_values(&ref, LOGPROB) < 0)) ||
        !(h = claim_model(capsule)) || check_param_vector(&params, h->m) < 0 ||
        (grads.array && check_param_vector(&grads, h->m) < 0) ||
        check_hidden(&hidden, h->m) < 0 ||
        check_scores(&rows, &targets, PyArray_DIM(hidden.array, 0), h->m) < 0)
        goto done;
    if (!(d_hidden = new_f32_2d(PyArray_DIM(hidden.array, 0), model_get_config(h->m)->d_model)) ||
        !(logprobs = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) ||
        !(grad_logps = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) || new_stats(&stats, M) < 0)
        goto done;
    grpo_request q = {ARG_DATA(const int64_t, lengths), (int)S,
                      ARG_DATA(const double, advantages),
                      old.array ? ARG_DATA(const float, old) : NULL,
                      ref.array ? ARG_DATA(const float, ref) : NULL, ARG_DATA(const float, mask),
                      (int)max_len.value, items.value, (int)accum.value, &gp};
    grpo_scores out = {f32(d_hidden), f32(logprobs), stats.view, f32(grad_logps), &gm};
    score_request r = {ARG_DATA(const int64_t, rows), ARG_DATA(const int64_t, targets), M,
                       (float)temperature};
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = model_score_grpo(&out, grads.array ? ARG_DATA(float, grads) : NULL, h->m,
                              ARG_DATA(const float, params), ARG_DATA(const float, hidden), &r, &q,
                              err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    if ((stats_out = stats_dict(&stats)) && (metrics = PyDict_New()) &&
        set_grpo_metrics(metrics, &gm) == 0)
        result = Py_BuildValue("(OOOOdO)", d_hidden, logprobs, stats_out, grad_logps, gm.loss,
                               metrics);
done:
    release_model(h);
    release_stats(&stats);
    Py_XDECREF(d_hidden);
    Py_XDECREF(logprobs);
    Py_XDECREF(grad_logps);
    Py_XDECREF(stats_out);
    Py_XDECREF(metrics);
    array_arg *arrays[] = {&params, &grads, &hidden, &rows, &targets, &lengths, &advantages,
                           &mask, &old, &ref};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) arg_release(arrays[i]);
    return result;
}

/* model_score_constrained: the token-wise constrained loss (Qi et al. 2024)
 * fused into the scoring kernel; returns (d_hidden [T, d], logprobs [M],
 * stats, grad_logps [M], losses [S]). */
static PyObject *py_model_score_constrained(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "grads", "hidden", "score_rows", "score_targets",
                             "completion_lengths", "ref_logps", "betas", "grad_scale", NULL};
    PyObject *capsule;
    array_arg params = {"params"}, grads = {"grads"}, hidden = {"hidden"}, rows = {"score_rows"},
              targets = {"score_targets"}, lengths = {"completion_lengths"}, ref = {"ref_logps"},
              betas = {"betas"};
    real_arg grad_scale = {"grad_scale", -INFINITY, INFINITY};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OO&O&O&O&O&O&O&O&$O&", kwlist, &capsule, to_f32_vector, &params,
            to_f32_vector_out_or_none, &grads, to_f32_matrix, &hidden, to_int64_vector, &rows,
            to_int64_vector, &targets, to_int64_vector, &lengths, to_f32_vector, &ref,
            to_f32_vector, &betas, to_real, &grad_scale))
        return NULL;
    PyObject *d_hidden = NULL, *logprobs = NULL, *grad_logps = NULL, *losses = NULL,
             *stats_out = NULL, *result = NULL;
    stats_arrays stats = {0};
    model_handle *h = NULL;
    npy_intp S = ARG_LEN(lengths), M = ARG_LEN(rows);
    if (S == 0 || S > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "completion_lengths must hold one length per "
                        "sequence (at least one)");
        goto done;
    }
    if (check_rows(&ref, M, rows.name) < 0 || check_values(&ref, LOGPROB) < 0 ||
        check_rows(&betas, M, rows.name) < 0 || check_values(&betas, POSITIVE) < 0 ||
        !(h = claim_model(capsule)) || check_param_vector(&params, h->m) < 0 ||
        (grads.array && check_param_vector(&grads, h->m) < 0) ||
        check_hidden(&hidden, h->m) < 0 ||
        check_scores(&rows, &targets, PyArray_DIM(hidden.array, 0), h->m) < 0)
        goto done;
    if (!(d_hidden = new_f32_2d(PyArray_DIM(hidden.array, 0), model_get_config(h->m)->d_model)) ||
        !(logprobs = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) ||
        !(grad_logps = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) ||
        !(losses = PyArray_ZEROS(1, &S, NPY_FLOAT64, 0)) || new_stats(&stats, M) < 0)
        goto done;
    constrained_request q = {ARG_DATA(const int64_t, lengths), (int)S, ARG_DATA(const float, ref),
                             ARG_DATA(const float, betas), grad_scale.value};
    constrained_scores out = {f32(d_hidden), f32(logprobs), stats.view, f32(grad_logps),
                              (double *)PyArray_DATA((PyArrayObject *)losses)};
    score_request r = {ARG_DATA(const int64_t, rows), ARG_DATA(const int64_t, targets), M, 1.0f};
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = model_score_constrained(&out, grads.array ? ARG_DATA(float, grads) : NULL, h->m,
                                     ARG_DATA(const float, params), ARG_DATA(const float, hidden),
                                     &r, &q, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    if ((stats_out = stats_dict(&stats)))
        result = Py_BuildValue("(OOOOO)", d_hidden, logprobs, stats_out, grad_logps, losses);
done:
    release_model(h);
    release_stats(&stats);
    Py_XDECREF(d_hidden);
    Py_XDECREF(logprobs);
    Py_XDECREF(grad_logps);
    Py_XDECREF(losses);
    Py_XDECREF(stats_out);
    array_arg *arrays[] = {&params, &grads, &hidden, &rows, &targets, &lengths, &ref, &betas};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) arg_release(arrays[i]);
    return result;
}

static PyObject *py_model_score_dpo(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "grads", "hidden", "score_rows", "score_targets",
                             "completion_lengths", "ref_chosen_logps", "ref_rejected_logps",
                             "settings", "token_weights", "weights", "grad_scale", NULL};
    PyObject *capsule, *settings;
    array_arg params = {"params"}, grads = {"grads"}, hidden = {"hidden"}, rows = {"score_rows"},
              targets = {"score_targets"}, lengths = {"completion_lengths"},
              ref_c = {"ref_chosen_logps"}, ref_r = {"ref_rejected_logps"},
              token_weights = {"token_weights"}, weights = {"weights"};
    double grad_scale = 1.0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OO&O&O&O&O&O&O&O&O!|$O&O&d", kwlist, &capsule, to_f32_vector, &params,
            to_f32_vector_out_or_none, &grads, to_f32_matrix, &hidden, to_int64_vector, &rows,
            to_int64_vector, &targets, to_int64_vector, &lengths, to_f64_vector, &ref_c,
            to_f64_vector, &ref_r, &PyDict_Type, &settings, to_f64_vector_or_none,
            &token_weights, to_f64_vector_or_none, &weights, &grad_scale))
        return NULL;
    PyObject *d_hidden = NULL, *logprobs = NULL, *policy = NULL, *losses = NULL,
             *chosen_rewards = NULL, *rejected_rewards = NULL, *stats_out = NULL, *result = NULL;
    stats_arrays stats = {0};
    model_handle *h = NULL;
    dpo_params dp = {0};
    int types[DPO_MAX_LOSS_TYPES];
    double loss_weights[DPO_MAX_LOSS_TYPES];
    npy_intp n_seq = ARG_LEN(lengths), B = n_seq / 2, M = ARG_LEN(rows);
    if (!isfinite(grad_scale)) {
        raise_printf(PyExc_ValueError, "grad_scale must be finite, got %g", grad_scale);
        goto done;
    }
    if (n_seq == 0 || n_seq % 2 || B > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "completion_lengths must hold a chosen and a rejected "
                        "length per pair");
        goto done;
    }
    if (parse_dpo_settings(settings, &dp, types, loss_weights) < 0 ||
        check_rows(&ref_c, B, "pairs") < 0 || check_rows(&ref_r, B, "pairs") < 0 ||
        (token_weights.array && check_rows(&token_weights, M, rows.name) < 0) ||
        (weights.array && check_rows(&weights, B, "pairs") < 0) ||
        !(h = claim_model(capsule)) || check_param_vector(&params, h->m) < 0 ||
        (grads.array && check_param_vector(&grads, h->m) < 0) ||
        check_hidden(&hidden, h->m) < 0 ||
        check_scores(&rows, &targets, PyArray_DIM(hidden.array, 0), h->m) < 0)
        goto done;
    npy_intp pair_dims[2] = {B, 2};
    if (!(d_hidden = new_f32_2d(PyArray_DIM(hidden.array, 0), model_get_config(h->m)->d_model)) ||
        !(logprobs = PyArray_ZEROS(1, &M, NPY_FLOAT32, 0)) ||
        !(policy = PyArray_ZEROS(2, pair_dims, NPY_FLOAT64, 0)) ||
        !(losses = PyArray_ZEROS(1, &B, NPY_FLOAT64, 0)) ||
        !(chosen_rewards = PyArray_ZEROS(1, &B, NPY_FLOAT64, 0)) ||
        !(rejected_rewards = PyArray_ZEROS(1, &B, NPY_FLOAT64, 0)) || new_stats(&stats, M) < 0)
        goto done;
    dpo_pair_request q = {
        ARG_DATA(const int64_t, lengths), (int)B, ARG_DATA(const double, ref_c),
        ARG_DATA(const double, ref_r),
        token_weights.array ? ARG_DATA(const double, token_weights) : NULL,
        weights.array ? ARG_DATA(const double, weights) : NULL, grad_scale, &dp};
    dpo_pair_scores out = {f32(d_hidden), f32(logprobs), stats.view,
                           PyArray_DATA((PyArrayObject *)policy),
                           PyArray_DATA((PyArrayObject *)losses),
                           PyArray_DATA((PyArrayObject *)chosen_rewards),
                           PyArray_DATA((PyArrayObject *)rejected_rewards)};
    score_request r = {ARG_DATA(const int64_t, rows), ARG_DATA(const int64_t, targets), M, 1.0f};
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = model_score_dpo_pairs(&out, grads.array ? ARG_DATA(float, grads) : NULL, h->m,
                                   ARG_DATA(const float, params), ARG_DATA(const float, hidden),
                                   &r, &q, err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    if ((stats_out = stats_dict(&stats)))
        result = Py_BuildValue("(OONOOOO)", d_hidden, logprobs, stats_out, policy, losses,
                               chosen_rewards, rejected_rewards);
done:
    release_model(h);
    release_stats(&stats);
    Py_XDECREF(d_hidden);
    Py_XDECREF(logprobs);
    Py_XDECREF(policy);
    Py_XDECREF(losses);
    Py_XDECREF(chosen_rewards);
    Py_XDECREF(rejected_rewards);
    array_arg *arrays[] = {&params, &grads, &hidden, &rows, &targets, &lengths, &ref_c, &ref_r,
                           &token_weights, &weights};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) arg_release(arrays[i]);
    return result;
}

/* model_generate(model, params, input_ids, prompt_starts, max_new_tokens, do_sample,
 * temperature, top_k, top_p, repetition_penalty, eos_token_ids, num_return_sequences, seed,
 * adapters, return_logprobs, reset_token_id, reset_logit_bias, max_resets, first_prompt,
 * bf16_weights)
 * -> (tokens [n * R, max_new_tokens], lengths [n * R], logprobs float32 as tokens or None,
 * discarded int32 [n * R]: drawn tokens dropped by a reset, -1 for none);
 * reset_token_id -1: no reset token. calign.Model.generate checks the settings' ranges
 * against the model. */
static PyObject *py_model_generate(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "params", "input_ids", "prompt_starts", "max_new_tokens",
                             "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                             "eos_token_ids", "num_return_sequences", "seed", "adapters",
                             "return_logprobs", "reset_token_id", "reset_logit_bias",
                             "max_resets", "first_prompt", "bf16_weights", NULL};
    PyObject *capsule;
    array_arg params = {"params"}, tokens = {"input_ids"}, starts = {"prompt_starts"},
              eos = {"eos_token_ids"}, adapters = {"adapters"};
    int_arg max_new = {"max_new_tokens", 1, INT32_MAX}, top_k = {"top_k", 0, INT32_MAX},
            n_return = {"num_return_sequences", 1, INT32_MAX},
            reset_token = {"reset_token_id", -1, INT32_MAX},
            max_resets = {"max_resets", 0, INT32_MAX},
            first_prompt = {"first_prompt", 0, INT32_MAX};
    int do_sample, return_logprobs = 0, bf16_weights = 0;
    real_arg temperature = {"temperature", 0, INFINITY, 1}, top_p = {"top_p", 0, 1, 1},
             repetition_penalty = {"repetition_penalty", 0, INFINITY, 1},
             reset_bias = {"reset_logit_bias", -INFINITY, INFINITY};
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&O&$O&pO&O&O&O&O&O&O&O&pO&O&O&O&p", kwlist,
                                     &capsule, to_f32_vector, &params, to_int64_vector, &tokens,
                                     to_int64_vector, &starts, to_int, &max_new, &do_sample,
                                     to_real32, &temperature, to_int, &top_k, to_real32, &top_p,
                                     to_real32, &repetition_penalty, to_int64_vector, &eos,
                                     to_int, &n_return, to_seed, &seed, to_f32_vector_or_none,
                                     &adapters, &return_logprobs, to_int, &reset_token,
                                     to_real32, &reset_bias, to_int, &max_resets, to_int,
                                     &first_prompt, &bf16_weights))
        return NULL;
    PyObject *out = NULL, *lengths = NULL, *logprobs = NULL, *discarded = NULL, *result = NULL;
    model_handle *h = NULL;
    if (ARG_LEN(eos) > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "eos_token_ids holds more than 2**31 - 1 ids");
        goto done;
    }
    if (narrow_to_int32_described(&eos, 0, INT32_MAX, "token id", " (an eos token id)") < 0)
        goto done;
    if (!(h = claim_model(capsule)) || refuse_frozen(h, "generation") < 0 ||
        check_param_vector(&params, h->m) < 0 || check_adapter_vector(&adapters, h->m) < 0)
        goto done;
    const model_config *c = model_get_config(h->m);
    npy_intp T = ARG_LEN(tokens), n = ARG_LEN(starts) - 1;
    if (T > INT32_MAX || n < 1 || n * n_return.value > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "generate takes 1 to 2**31 - 1 prompts x samples and "
                                          "fewer than 2**31 tokens");
        goto done;
    }
    if (narrow_to_int32_described(&tokens, 0, c->vocab, "token id", " (vocab_size)") < 0 ||
        narrow_to_int32(&starts, 0, T + 1, "prompt starts are token indices") < 0)
        goto done;
    const int32_t *st = ARG_DATA(const int32_t, starts);
    if (st[0] != 0 || st[n] != T) {
        PyErr_SetString(PyExc_ValueError, "prompt_starts must begin at 0 and end at the token count");
        goto done;
    }
    for (npy_intp i = 0; i < n; i++) {
        if (st[i + 1] <= st[i]) {
            PyErr_Format(PyExc_ValueError, "prompt %zd is empty", (Py_ssize_t)i);
            goto done;
        }
        if ((long long)st[i + 1] - st[i] + max_new.value > c->max_positions) {
            PyErr_Format(PyExc_ValueError,
                         "prompt %zd (%d tokens) plus max_new_tokens (%lld) exceeds the model's "
                         "maximum positions (%d)",
                         (Py_ssize_t)i, st[i + 1] - st[i], max_new.value, c->max_positions);
            goto done;
        }
    }
    generate_settings s = {(int)max_new.value, do_sample, (int)top_k.value,
                           (int)n_return.value, (float)temperature.value, (float)top_p.value,
                           (float)repetition_penalty.value, ARG_DATA(const int32_t, eos),
                           (int)ARG_LEN(eos), seed,
                           (uint64_t)first_prompt.value * (uint64_t)n_return.value,
                           reset_token.value >= 0,
                           (int)reset_token.value, (int)max_resets.value,
                           (float)reset_bias.value, bf16_weights};
    npy_intp dims[2] = {n * s.num_return_sequences, s.max_new_tokens};
    if (!(out = PyArray_ZEROS(2, dims, NPY_INT32, 0)) ||
        !(lengths = PyArray_ZEROS(1, dims, NPY_INT32, 0)) ||
        !(logprobs = return_logprobs ? PyArray_ZEROS(2, dims, NPY_FLOAT32, 0)
                                     : Py_NewRef(Py_None)) ||
        !(discarded = PyArray_ZEROS(1, dims, NPY_INT32, 0)))
        goto done;
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = model_generate(h->m, ARG_DATA(const float, params),
                            adapters.array ? ARG_DATA(const float, adapters) : NULL,
                            ARG_DATA(const int32_t, tokens),
                            st, (int)n, &s, PyArray_DATA((PyArrayObject *)out),
                            PyArray_DATA((PyArrayObject *)lengths),
                            return_logprobs ? PyArray_DATA((PyArrayObject *)logprobs) : NULL,
                            PyArray_DATA((PyArrayObject *)discarded), err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    result = Py_BuildValue("(OOOO)", out, lengths, logprobs, discarded);
done:
    release_model(h);
    Py_XDECREF(out);
    Py_XDECREF(lengths);
    Py_XDECREF(logprobs);
    Py_XDECREF(discarded);
    arg_release(&params);
    arg_release(&tokens);
    arg_release(&starts);
    arg_release(&eos);
    arg_release(&adapters);
    return result;
}

int describe_model(PyObject *d) {
    int n_keys = 0;
    while (ENGINE_CONFIG_KEYS[n_keys]) n_keys++;
    return describe_names(d, "engine_config", (const char *const *)ENGINE_CONFIG_KEYS, n_keys) < 0 ||
                   describe_names(d, "forward_modes", FORWARD_MODE_NAMES, FORWARD_N_MODES) < 0 ||
                   describe_names(d, "lora_sites", LORA_SITE_NAMES, LORA_N_SITES) < 0
               ? -1
               : 0;
}

PyMethodDef calign_model_methods[] = {
    KEYWORDS_METHOD("model_generate", py_model_generate, "Generation with a KV cache."),
    KEYWORDS_METHOD("model_create", py_model_create,
                    "Engine model from the engine config's fields (keywords)."),
    {"model_layout", py_model_layout, METH_O, "(n_params, [(role, layer, offset, shape)])."},
    KEYWORDS_METHOD("model_forward", py_model_forward, "Final hidden states of a packed batch."),
    KEYWORDS_METHOD("model_set_adapters", py_model_set_adapters,
                    "LoRA adapters on the model's projections."),
    {"model_arena_bytes", py_model_arena_bytes, METH_O, "Bytes of the activation arena."},
    {"model_workspace_allocations", py_model_workspace_allocations, METH_O,
     "Times the activation arena or the workspace was (re)allocated."},
    KEYWORDS_METHOD("model_backward", py_model_backward, "Adds parameter gradients."),
    KEYWORDS_METHOD("model_logits", py_model_logits, "lm_head logits of hidden states."),
    KEYWORDS_METHOD("model_set_control", py_model_set_control,
                    "Steering rows added after each decoder block (None: off)."),
    KEYWORDS_METHOD("model_set_bf16_products", py_model_set_bf16_products,
                    "Products of bfloat16-rounded operands in the packed forward and backward."),
    KEYWORDS_METHOD("model_bf16_block_weights", py_model_bf16_block_weights,
                    "The blocks' linear weights of params rounded to bfloat16."),
    KEYWORDS_METHOD("model_set_frozen_bf16", py_model_set_frozen_bf16,
                    "A frozen model reads its block weights from a bfloat16 vector."),
    KEYWORDS_METHOD("model_forward_layers", py_model_forward_layers,
                    "The residual stream after chosen decoder blocks."),
    KEYWORDS_METHOD("model_score", py_model_score, "Log-probs of targets at hidden rows."),
    KEYWORDS_METHOD("model_score_grpo", py_model_score_grpo,
                    "Scores completions with the GRPO loss in one pass; see Model.score_grpo."),
    KEYWORDS_METHOD("model_score_constrained", py_model_score_constrained,
                    "Scores sequences with the token-wise constrained loss in one pass; see "
                    "Model.score_constrained."),
    KEYWORDS_METHOD("model_score_dpo", py_model_score_dpo,
                    "Scores of preference pairs with the DPO loss fused in, and its backward."),
    KEYWORDS_METHOD("model_score_backward", py_model_score_backward,
                    "Backward of model_score: (d_hidden, logprobs); lm_head gradient added to "
                    "grads."),
    {NULL, NULL, 0, NULL},
};
