/* Bindings of the fused token log-prob kernel (calign.ops). */
#include "binding/common.h"

#include <math.h>
#include <stdlib.h>

#include "logprob.h"

/* The checked operands of one token_logprobs call. */
typedef struct {
    PyArrayObject *hidden, *weight, *bias, *targets;
    logprob_problem problem;
} logprob_args;

static void release_args(logprob_args *a) {
    Py_XDECREF(a->hidden);
    Py_XDECREF(a->weight);
    Py_XDECREF(a->bias);
    Py_XDECREF(a->targets);
}

static int parse_problem(logprob_args *a, PyObject *hidden, PyObject *weight,
                         PyObject *targets, PyObject *bias, double temperature,
                         long long ignore_index, PyObject *chunk_size) {
    if (!(a->hidden = arg_f32_array(hidden, "hidden", 2))) return -1;
    if (!(a->weight = arg_f32_array(weight, "weight", 2))) return -1;
    if (!(a->targets = arg_int64_vector(targets, "targets"))) return -1;
    npy_intp N = PyArray_DIM(a->hidden, 0), d = PyArray_DIM(a->hidden, 1);
    npy_intp V = PyArray_DIM(a->weight, 0);
    if (PyArray_DIM(a->weight, 1) != d) {
        PyErr_Format(PyExc_ValueError,
                     "weight has shape (%zd, %zd) but hidden has %zd columns: weight must be "
                     "[vocab, hidden_size]",
                     (Py_ssize_t)V, (Py_ssize_t)PyArray_DIM(a->weight, 1), (Py_ssize_t)d);
        return -1;
    }
    if (V < 1 || d < 1) {
        PyErr_SetString(PyExc_ValueError, "weight must have at least one row and one column");
        return -1;
    }
    if (V > INT32_MAX || d > INT32_MAX || N > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "hidden or weight is too large (dimension over 2^31)");
        return -1;
    }
    if (check_length(a->targets, "targets", N, "hidden") < 0) return -1;
    if (bias != Py_None) {
        if (!(a->bias = arg_f32_array(bias, "bias", 1))) return -1;
        if (check_length(a->bias, "bias", V, "weight") < 0) return -1;
    }
    if (check_temperature(temperature) < 0) return -1;
    long chunk_rows = logprob_default_chunk_rows((int)V, (int)d);
    if (chunk_size != Py_None) {
        chunk_rows = PyLong_AsLong(chunk_size);
        if (chunk_rows == -1 && PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "chunk_size must be an integer or None");
            return -1;
        }
        if (chunk_rows < 1 || chunk_rows > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "chunk_size must be >= 1, got %ld", chunk_rows);
            return -1;
        }
    }
    const int64_t *t = (const int64_t *)PyArray_DATA(a->targets);
    for (npy_intp i = 0; i < N; i++) {
        if (t[i] != ignore_index && (t[i] < 0 || t[i] >= V)) {
            PyErr_Format(PyExc_ValueError,
                         "targets[%zd] = %lld is outside [0, %zd) and is not ignore_index (%lld)",
                         (Py_ssize_t)i, (long long)t[i], (Py_ssize_t)V, ignore_index);
            return -1;
        }
    }
    a->problem = (logprob_problem){
        .hidden = (const float *)PyArray_DATA(a->hidden),
        .weight = (const float *)PyArray_DATA(a->weight),
        .bias = a->bias ? (const float *)PyArray_DATA(a->bias) : NULL,
        .targets = t,
        .N = N,
        .d = (int)d,
        .V = (int)V,
        .temperature = (float)temperature,
        .ignore_index = ignore_index,
        .chunk_rows = (int)chunk_rows,
    };
    return 0;
}

static PyObject *new_f32(int ndim, npy_intp d0, npy_intp d1) {
    npy_intp dims[2] = {d0, d1};
    return PyArray_ZEROS(ndim, dims, NPY_FLOAT32, 0);
}

static float *f32_data(PyObject *arr) { return (float *)PyArray_DATA((PyArrayObject *)arr); }

static void raise_non_finite(long row) {
    PyErr_Format(PyExc_ValueError,
                 "hidden, weight or bias contains NaN or infinity: the logits of row %ld are "
                 "not finite",
                 row);
}

static PyObject *py_token_logprobs(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"hidden", "weight", "targets", "bias", "temperature",
                             "ignore_index", "chunk_size", "return_stats", NULL};
    PyObject *hidden, *weight, *targets, *bias = Py_None, *chunk_size = Py_None;
    double temperature = 1.0;
    long long ignore_index = -100;
    int return_stats = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|$OdLOp", kwlist, &hidden, &weight,
                                     &targets, &bias, &temperature, &ignore_index, &chunk_size,
                                     &return_stats))
        return NULL;
    logprob_args a = {0};
    PyObject *logprobs = NULL, *lse = NULL, *entropy = NULL, *mean_logit = NULL, *lssp = NULL,
             *top1 = NULL, *result = NULL;
    void *scratch = NULL;
    if (parse_problem(&a, hidden, weight, targets, bias, temperature, ignore_index, chunk_size) < 0)
        goto done;
    npy_intp N = a.problem.N;
    if (!(logprobs = new_f32(1, N, 0))) goto done;
    logprob_stats stats = {0};
    if (return_stats) {
        npy_intp dims[1] = {N};
        if (!(lse = new_f32(1, N, 0)) || !(entropy = new_f32(1, N, 0)) ||
            !(mean_logit = new_f32(1, N, 0)) || !(lssp = new_f32(1, N, 0)) ||
            !(top1 = PyArray_ZEROS(1, dims, NPY_BOOL, 0)))
            goto done;
        stats = (logprob_stats){f32_data(lse), f32_data(entropy), f32_data(mean_logit),
                                f32_data(lssp), (uint8_t *)PyArray_DATA((PyArrayObject *)top1)};
    }
    if (!(scratch = malloc(logprob_scratch_bytes(&a.problem)))) {
        PyErr_NoMemory();
        goto done;
    }
    long bad;
    Py_BEGIN_ALLOW_THREADS
    bad = token_logprobs_forward(f32_data(logprobs), return_stats ? &stats : NULL, &a.problem,
                                 scratch);
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        raise_non_finite(bad);
        goto done;
    }
    if (return_stats)
        result = Py_BuildValue("O{s:O,s:O,s:O,s:O,s:O}", logprobs, "logsumexp", lse, "entropy",
                               entropy, "mean_logit", mean_logit, "log_sum_sq_probs", lssp,
                               "is_top1", top1);
    else
        result = Py_NewRef(logprobs);
done:
    free(scratch);
    Py_XDECREF(logprobs);
    Py_XDECREF(lse);
    Py_XDECREF(entropy);
    Py_XDECREF(mean_logit);
    Py_XDECREF(lssp);
    Py_XDECREF(top1);
    release_args(&a);
    return result;
}

static PyObject *py_token_logprobs_backward(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"hidden", "weight", "targets", "grad_logprobs", "bias", "temperature",
                             "ignore_index", "chunk_size", "return_logprobs", NULL};
    PyObject *hidden, *weight, *targets, *grad_obj, *bias = Py_None, *chunk_size = Py_None;
    double temperature = 1.0;
    long long ignore_index = -100;
    int return_logprobs = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|$OdLOp", kwlist, &hidden, &weight,
                                     &targets, &grad_obj, &bias, &temperature, &ignore_index,
                                     &chunk_size, &return_logprobs))
        return NULL;
    logprob_args a = {0};
    PyArrayObject *grad64 = NULL;
    PyObject *grad32 = NULL, *grad_hidden = NULL, *grad_weight = NULL, *grad_bias = NULL,
             *logprobs = NULL, *result = NULL;
    void *scratch = NULL;
    if (parse_problem(&a, hidden, weight, targets, bias, temperature, ignore_index, chunk_size) < 0)
        goto done;
    npy_intp N = a.problem.N;
    if (!(grad64 = arg_f64_vector(grad_obj, "grad_logprobs", 1))) goto done;
    if (check_length(grad64, "grad_logprobs", N, "hidden") < 0) goto done;
    if (!(grad32 = new_f32(1, N, 0))) goto done;
    const double *g = (const double *)PyArray_DATA(grad64);
    for (npy_intp i = 0; i < N; i++) f32_data(grad32)[i] = (float)g[i];
    if (!(grad_hidden = new_f32(2, N, a.problem.d)) ||
        !(grad_weight = new_f32(2, a.problem.V, a.problem.d)))
        goto done;
    if (a.bias && !(grad_bias = new_f32(1, a.problem.V, 0))) goto done;
    if (return_logprobs && !(logprobs = new_f32(1, N, 0))) goto done;
    if (!(scratch = malloc(logprob_scratch_bytes(&a.problem)))) {
        PyErr_NoMemory();
        goto done;
    }
    long bad;
    Py_BEGIN_ALLOW_THREADS
    bad = token_logprobs_backward(f32_data(grad_hidden), f32_data(grad_weight),
                                  grad_bias ? f32_data(grad_bias) : NULL,
                                  logprobs ? f32_data(logprobs) : NULL, NULL, f32_data(grad32),
                                  &a.problem, scratch);
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        raise_non_finite(bad);
        goto done;
    }
    result = Py_BuildValue("(OOOO)", grad_hidden, grad_weight, grad_bias ? grad_bias : Py_None,
                           logprobs ? logprobs : Py_None);
done:
    free(scratch);
    Py_XDECREF(grad64);
    Py_XDECREF(grad32);
    Py_XDECREF(grad_hidden);
    Py_XDECREF(grad_weight);
    Py_XDECREF(grad_bias);
    Py_XDECREF(logprobs);
    release_args(&a);
    return result;
}

PyMethodDef calign_ops_methods[] = {
    {"token_logprobs", (PyCFunction)(void (*)(void))py_token_logprobs,
     METH_VARARGS | METH_KEYWORDS, "Fused lm_head -> log-softmax -> gather (see calign.ops)."},
    {"token_logprobs_backward", (PyCFunction)(void (*)(void))py_token_logprobs_backward,
     METH_VARARGS | METH_KEYWORDS, "Backward of token_logprobs (see calign.ops)."},
    {NULL, NULL, 0, NULL},
};
