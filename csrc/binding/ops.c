/* Bindings of the fused token log-prob kernel (calign.ops). */
#include "binding/common.h"

#include <math.h>
#include <stdlib.h>

#include "core/bf16.h"
#include "core/gemm.h"
#include "logprob.h"

/* The checked operands of one token_logprobs call. */
typedef struct {
    array_arg hidden, weight, bias, targets;
    logprob_problem problem;
} logprob_args;

#define LOGPROB_ARGS {{"hidden"}, {"weight"}, {"bias"}, {"targets"}}

static void release_args(logprob_args *a) {
    arg_release(&a->hidden);
    arg_release(&a->weight);
    arg_release(&a->bias);
    arg_release(&a->targets);
}

/* Checks the converted operands against each other and fills a->problem. */
static int check_problem(logprob_args *a, double temperature, long long ignore_index,
                         PyObject *chunk_size) {
    npy_intp N = PyArray_DIM(a->hidden.array, 0), d = PyArray_DIM(a->hidden.array, 1);
    npy_intp V = PyArray_DIM(a->weight.array, 0);
    if (PyArray_DIM(a->weight.array, 1) != d) {
        PyErr_Format(PyExc_ValueError,
                     "weight has shape (%zd, %zd) but hidden has %zd columns: weight must be "
                     "[vocab, hidden_size]",
                     (Py_ssize_t)V, (Py_ssize_t)PyArray_DIM(a->weight.array, 1), (Py_ssize_t)d);
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
    if (check_rows(&a->targets, N, "hidden") < 0) return -1;
    if (a->bias.array && check_rows(&a->bias, V, "weight") < 0) return -1;
    if (check_temperature(temperature) < 0) return -1;
    long chunk_rows = logprob_default_chunk_rows((int)V, (int)d);
    if (chunk_size != Py_None) {
        int_arg rows = {"chunk_size", 1, INT32_MAX};
        if (!to_int(chunk_size, &rows)) return -1;
        chunk_rows = (long)rows.value;
    }
    const int64_t *t = ARG_DATA(const int64_t, a->targets);
    for (npy_intp i = 0; i < N; i++) {
        if (t[i] != ignore_index && (t[i] < 0 || t[i] >= V)) {
            PyErr_Format(PyExc_ValueError,
                         "targets[%zd] = %lld is outside [0, %zd) and is not ignore_index (%lld)",
                         (Py_ssize_t)i, (long long)t[i], (Py_ssize_t)V, ignore_index);
            return -1;
        }
    }
    a->problem = (logprob_problem){
        .hidden = ARG_DATA(const float, a->hidden),
        .weight = ARG_DATA(const float, a->weight),
        .bias = a->bias.array ? ARG_DATA(const float, a->bias) : NULL,
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
    logprob_args a = LOGPROB_ARGS;
    PyObject *chunk_size = Py_None;
    double temperature = 1.0;
    long long ignore_index = -100;
    int return_stats = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&|$O&dLOp", kwlist, to_f32_matrix,
                                     &a.hidden, to_f32_matrix, &a.weight, to_int64_vector,
                                     &a.targets, to_f32_vector_or_none, &a.bias, &temperature,
                                     &ignore_index, &chunk_size, &return_stats))
        return NULL;
    PyObject *logprobs = NULL, *lse = NULL, *entropy = NULL, *mean_logit = NULL, *lssp = NULL,
             *top1 = NULL, *result = NULL;
    void *scratch = NULL;
    if (check_problem(&a, temperature, ignore_index, chunk_size) < 0) goto done;
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
    logprob_args a = LOGPROB_ARGS;
    array_arg grad64 = {"grad_logprobs"};
    PyObject *chunk_size = Py_None;
    double temperature = 1.0;
    long long ignore_index = -100;
    int return_logprobs = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&|$O&dLOp", kwlist, to_f32_matrix,
                                     &a.hidden, to_f32_matrix, &a.weight, to_int64_vector,
                                     &a.targets, to_f64_vector, &grad64, to_f32_vector_or_none,
                                     &a.bias, &temperature, &ignore_index, &chunk_size,
                                     &return_logprobs))
        return NULL;
    PyObject *grad32 = NULL, *grad_hidden = NULL, *grad_weight = NULL, *grad_bias = NULL,
             *logprobs = NULL, *result = NULL;
    void *scratch = NULL;
    if (check_problem(&a, temperature, ignore_index, chunk_size) < 0) goto done;
    npy_intp N = a.problem.N;
    if (check_rows(&grad64, N, "hidden") < 0) goto done;
    if (!(grad32 = new_f32(1, N, 0))) goto done;
    const double *g = ARG_DATA(const double, grad64);
    for (npy_intp i = 0; i < N; i++) f32_data(grad32)[i] = (float)g[i];
    if (!(grad_hidden = new_f32(2, N, a.problem.d)) ||
        !(grad_weight = new_f32(2, a.problem.V, a.problem.d)))
        goto done;
    if (a.bias.array && !(grad_bias = new_f32(1, a.problem.V, 0))) goto done;
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
    arg_release(&grad64);
    Py_XDECREF(grad32);
    Py_XDECREF(grad_hidden);
    Py_XDECREF(grad_weight);
    Py_XDECREF(grad_bias);
    Py_XDECREF(logprobs);
    release_args(&a);
    return result;
}

/* float32_to_bfloat16(values) -> uint16 array of values' shape: each float32 rounded to
 * the nearest bfloat16 (ties to even, NaN as 0xFFFF, as torch), by the C rounding that
 * generate(weight_dtype="bfloat16") uses. values: a C-contiguous float32 vector. */
static PyObject *py_float32_to_bfloat16(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"values", NULL};
    array_arg values = {"values"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&", kwlist, to_f32_vector, &values))
        return NULL;
    npy_intp n = ARG_LEN(values);
    PyObject *out = PyArray_EMPTY(1, &n, NPY_UINT16, 0);
    if (out) {
        const float *src = ARG_DATA(const float, values);
        uint16_t *dst = PyArray_DATA((PyArrayObject *)out);
        Py_BEGIN_ALLOW_THREADS
        bf16_from_f32(dst, src, (long)n);
        Py_END_ALLOW_THREADS
    }
    arg_release(&values);
    return out;
}

/* matmul(a, b, trans_a=False, trans_b=False, bf16=False, alpha=1.0, beta=0.0, out=None)
 * -> out: out = alpha op(a) @ op(b) + beta out by gemm_model, the product a model's
 * forward and backward use (bf16: bfloat16 operands, float32 sums). op(a) is a, or a.T
 * when trans_a (a stored [K, M]); likewise b. */
static PyObject *py_matmul(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"a", "b", "trans_a", "trans_b", "bf16", "alpha", "beta", "out", NULL};
    array_arg a = {"a"}, b = {"b"}, out = {"out"};
    int trans_a = 0, trans_b = 0, bf16 = 0;
    real_arg alpha = {"alpha", -INFINITY, INFINITY, 0, 0, 1.0};
    real_arg beta = {"beta", -INFINITY, INFINITY, 0, 0, 0.0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&|pppO&O&O&", kwlist, to_f32_matrix, &a,
                                     to_f32_matrix, &b, &trans_a, &trans_b, &bf16, to_real32,
                                     &alpha, to_real32, &beta, to_f32_matrix_out_or_none, &out))
        return NULL;
    PyObject *result = NULL;
    const npy_intp M = PyArray_DIM(a.array, trans_a ? 1 : 0),
                   K = PyArray_DIM(a.array, trans_a ? 0 : 1);
    const npy_intp Kb = PyArray_DIM(b.array, trans_b ? 1 : 0),
                   N = PyArray_DIM(b.array, trans_b ? 0 : 1);
    if (K != Kb) {
        PyErr_Format(PyExc_ValueError,
                     "op(a) is %zd x %zd but op(b) is %zd x %zd: inner "
                     "dimensions differ",
                     (Py_ssize_t)M, (Py_ssize_t)K, (Py_ssize_t)Kb, (Py_ssize_t)N);
        goto done;
    }
    if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a or b is too large (dimension over 2^31)");
        goto done;
    }
    if (out.array) {
        if (PyArray_DIM(out.array, 0) != M || PyArray_DIM(out.array, 1) != N) {
            PyErr_Format(PyExc_ValueError, "out has shape (%zd, %zd) but the product is %zd x %zd",
                         (Py_ssize_t)PyArray_DIM(out.array, 0),
                         (Py_ssize_t)PyArray_DIM(out.array, 1), (Py_ssize_t)M, (Py_ssize_t)N);
            goto done;
        }
        result = Py_NewRef((PyObject *)out.array);
    } else if (beta.value != 0.0) {
        PyErr_SetString(PyExc_ValueError, "beta != 0 adds to out: pass out");
        goto done;
    } else {
        npy_intp dims[2] = {M, N};
        if (!(result = PyArray_ZEROS(2, dims, NPY_FLOAT32, 0))) goto done;
    }
    const float *A = ARG_DATA(const float, a), *B = ARG_DATA(const float, b);
    float *C = PyArray_DATA((PyArrayObject *)result);
    /* BLAS wants leading dimensions of at least 1, even for an empty operand */
    const int lda = (int)(PyArray_DIM(a.array, 1) > 1 ? PyArray_DIM(a.array, 1) : 1);
    const int ldb = (int)(PyArray_DIM(b.array, 1) > 1 ? PyArray_DIM(b.array, 1) : 1);
    Py_BEGIN_ALLOW_THREADS
    gemm_model(bf16, trans_a, trans_b, (int)M, (int)N, (int)K, (float)alpha.value, A, lda, B,
               ldb, (float)beta.value, C, N > 0 ? (int)N : 1);
    Py_END_ALLOW_THREADS
done:
    arg_release(&a);
    arg_release(&b);
    arg_release(&out);
    return result;
}

PyMethodDef calign_ops_methods[] = {
    KEYWORDS_METHOD("matmul", py_matmul,
                    "alpha op(a) @ op(b) + beta out, as a model's products compute it (see "
                    "calign.ops)."),
    KEYWORDS_METHOD("float32_to_bfloat16", py_float32_to_bfloat16,
                    "uint16 bits of the nearest bfloat16 of each float32 (see "
                    "calign.model.dtypes)."),
    KEYWORDS_METHOD("token_logprobs", py_token_logprobs,
                    "Fused lm_head -> log-softmax -> gather (see calign.ops)."),
    KEYWORDS_METHOD("token_logprobs_backward", py_token_logprobs_backward,
                    "Backward of token_logprobs (see calign.ops)."),
    {NULL, NULL, 0, NULL},
};
