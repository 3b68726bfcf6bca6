/* Bindings of the loss library (calign.losses).
 *
 * The Python wrappers in calign/losses.py check names and scalar settings and
 * pass loss types as integers; here the arrays are converted to contiguous
 * float64 and checked (rank, length, finite, log-probs <= 0). Losses work on
 * one number per example, so they run with the GIL held. */
#include "binding/common.h"

#include <stdlib.h>

#include "losses/losses.h"

/* Up to MAX_ARRAYS converted inputs of one call, released together. */
#define MAX_ARRAYS 8
typedef struct {
    PyArrayObject *arrays[MAX_ARRAYS];
    int count;
    npy_intp batch;        /* length of the first array */
    const char *first_name;
} inputs;

static void release_inputs(inputs *in) {
    for (int i = 0; i < in->count; i++) Py_DECREF(in->arrays[i]);
    in->count = 0;
}

typedef enum { ANY_SIGN, NOT_POSITIVE, NOT_NEGATIVE } sign_rule;

/* Converts obj (float array, rank 1) and checks it against the batch size
 * and the sign rule. obj == Py_None gives *out = NULL when optional. */
static int take_vector(inputs *in, PyObject *obj, const char *name, sign_rule rule,
                       const double **out) {
    *out = NULL;
    if (obj == Py_None) return 0;
    PyArrayObject *arr = arg_f64_vector(obj, name, 1);
    if (!arr) return -1;
    in->arrays[in->count++] = arr;
    if (in->count == 1) {
        in->batch = PyArray_DIM(arr, 0);
        in->first_name = name;
        if (in->batch == 0) {
            PyErr_Format(PyExc_ValueError, "%s is empty: a batch needs at least one example",
                         name);
            return -1;
        }
    } else if (check_length(arr, name, in->batch, in->first_name) < 0) {
        return -1;
    }
    const double *x = (const double *)PyArray_DATA(arr);
    for (npy_intp i = 0; i < PyArray_DIM(arr, 0); i++) {
        if (rule == NOT_POSITIVE && x[i] > 0) {
            raise_printf(PyExc_ValueError,
                         "%s[%zd] = %g is a log-probability > 0 (log-probabilities are <= 0)",
                         name, (Py_ssize_t)i, x[i]);
            return -1;
        }
        if (rule == NOT_NEGATIVE && x[i] < 0) {
            raise_printf(PyExc_ValueError, "%s[%zd] = %g must be >= 0", name, (Py_ssize_t)i,
                         x[i]);
            return -1;
        }
    }
    *out = x;
    return 0;
}

static PyObject *new_f64(npy_intp n) {
    npy_intp dims[1] = {n};
    return PyArray_ZEROS(1, dims, NPY_FLOAT64, 0);
}

static double *f64(PyObject *arr) { return (double *)PyArray_DATA((PyArrayObject *)arr); }

/* Builds a tuple from n new references (stealing them); NULL if any is NULL. */
static PyObject *tuple_of(int n, PyObject **items) {
    for (int i = 0; i < n; i++) {
        if (!items[i]) {
            for (int j = 0; j < n; j++) Py_XDECREF(items[j]);
            return NULL;
        }
    }
    PyObject *t = PyTuple_New(n);
    if (!t) {
        for (int j = 0; j < n; j++) Py_DECREF(items[j]);
        return NULL;
    }
    for (int i = 0; i < n; i++) PyTuple_SET_ITEM(t, i, items[i]);
    return t;
}

/* A list of ints or floats from a Python sequence. */
static int int_list(PyObject *seq, int *out, int max, const char *name) {
    Py_ssize_t n = PySequence_Size(seq);
    if (n < 1 || n > max) {
        PyErr_Format(PyExc_ValueError, "%s must hold 1 to %d entries", name, max);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_GetItem(seq, i);
        if (!item) return -1;
        long v = PyLong_AsLong(item);
        Py_DECREF(item);
        if (v == -1 && PyErr_Occurred()) return -1;
        out[i] = (int)v;
    }
    return (int)n;
}

static int double_list(PyObject *seq, double *out, int n, const char *name) {
    if (PySequence_Size(seq) != n) {
        PyErr_Format(PyExc_ValueError, "%s must have one entry per loss type (%d)", name, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        PyObject *item = PySequence_GetItem(seq, i);
        if (!item) return -1;
        out[i] = PyFloat_AsDouble(item);
        Py_DECREF(item);
        if (out[i] == -1.0 && PyErr_Occurred()) return -1;
    }
    return 0;
}

int parse_dpo_settings(PyObject *settings, dpo_params *p, int *types, double *loss_weights) {
    PyObject *types_obj, *lw_obj;
    int divergence;
    if (!PyArg_ParseTuple(settings, "ddddddiOO;DPO settings: (beta, label_smoothing, "
                          "f_alpha_divergence_coef, discopop_tau, bco_reward_shift, scpo_alpha, "
                          "divergence, loss type codes, loss weights)", &p->beta,
                          &p->label_smoothing, &p->f_alpha_divergence_coef, &p->discopop_tau,
                          &p->bco_reward_shift, &p->scpo_alpha, &divergence, &types_obj, &lw_obj))
        return -1;
    int n_types = int_list(types_obj, types, DPO_MAX_LOSS_TYPES, "loss_type");
    if (n_types < 0 || double_list(lw_obj, loss_weights, n_types, "loss_weights") < 0) return -1;
    for (int t = 0; t < n_types; t++) {
        if (types[t] < 0 || types[t] >= DPO_N_LOSS_TYPES) {
            PyErr_SetString(PyExc_ValueError, "loss_type code out of range");
            return -1;
        }
    }
    p->divergence = (f_divergence)divergence;
    p->n_loss_types = n_types;
    p->loss_types = types;
    p->loss_weights = loss_weights;
    return 0;
}

static PyObject *py_dpo_loss(PyObject *self, PyObject *args) {
    PyObject *pc, *pr, *rc, *rr, *chosen_len, *rejected_len, *weights_obj, *settings;
    dpo_params p = {0};
    int return_grad;
    if (!PyArg_ParseTuple(args, "OOOOOOOO!p", &pc, &pr, &rc, &rr, &chosen_len, &rejected_len,
                          &weights_obj, &PyTuple_Type, &settings, &return_grad))
        return NULL;
    int types[DPO_MAX_LOSS_TYPES];
    double loss_weights[DPO_MAX_LOSS_TYPES];
    if (parse_dpo_settings(settings, &p, types, loss_weights) < 0) return NULL;

    inputs in = {0};
    const double *x_pc, *x_pr, *x_rc, *x_rr, *x_cl, *x_rl, *x_w;
    PyObject *result = NULL;
    double *work = NULL;
    int *iwork = NULL;
    if (take_vector(&in, pc, "policy_chosen_logps", NOT_POSITIVE, &x_pc) < 0 ||
        take_vector(&in, pr, "policy_rejected_logps", NOT_POSITIVE, &x_pr) < 0 ||
        take_vector(&in, rc, "ref_chosen_logps", NOT_POSITIVE, &x_rc) < 0 ||
        take_vector(&in, rr, "ref_rejected_logps", NOT_POSITIVE, &x_rr) < 0 ||
        take_vector(&in, chosen_len, "chosen_lengths", NOT_NEGATIVE, &x_cl) < 0 ||
        take_vector(&in, rejected_len, "rejected_lengths", NOT_NEGATIVE, &x_rl) < 0 ||
        take_vector(&in, weights_obj, "weights", ANY_SIGN, &x_w) < 0)
        goto done;
    npy_intp B = in.batch;
    work = malloc(sizeof(double) * (5 * B + 1));
    iwork = malloc(sizeof(int) * (2 * B + 1));
    if (!work || !iwork) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *out[5] = {new_f64(B), new_f64(B), new_f64(B), NULL, NULL};
    int n_out = 3;
    if (return_grad) {
        out[3] = new_f64(B);
        out[4] = new_f64(B);
        n_out = 5;
    }
    if (out[0] && out[1] && out[2] && (!return_grad || (out[3] && out[4])))
        dpo_loss(f64(out[0]), f64(out[1]), f64(out[2]), return_grad ? f64(out[3]) : NULL,
                 return_grad ? f64(out[4]) : NULL, x_pc, x_pr, x_rc, x_rr, x_cl, x_rl, x_w,
                 (int)B, &p, work, iwork);
    result = tuple_of(n_out, out);
done:
    free(work);
    free(iwork);
    release_inputs(&in);
    return result;
}

static PyObject *py_kto_loss(PyObject *self, PyObject *args) {
    PyObject *policy, *ref, *labels_obj;
    double kl, beta, desirable_weight, undesirable_weight;
    int type, return_grad;
    if (!PyArg_ParseTuple(args, "OOOddiddp", &policy, &ref, &labels_obj, &kl, &beta, &type,
                          &desirable_weight, &undesirable_weight, &return_grad))
        return NULL;
    inputs in = {0};
    const double *x_p, *x_r;
    PyObject *result = NULL;
    PyArrayObject *labels = NULL;
    if (take_vector(&in, policy, "policy_logps", NOT_POSITIVE, &x_p) < 0 ||
        take_vector(&in, ref, "ref_logps", NOT_POSITIVE, &x_r) < 0)
        goto done;
    npy_intp B = in.batch;
    labels = (PyArrayObject *)PyArray_FROMANY(labels_obj, NPY_NOTYPE, 0, 0, 0);
    if (!labels || PyArray_TYPE(labels) != NPY_BOOL || PyArray_NDIM(labels) != 1) {
        Py_XDECREF(labels);
        labels = NULL;
        PyErr_SetString(PyExc_TypeError, "labels must be a 1-dimensional array of bools");
        goto done;
    }
    if (check_length(labels, "labels", B, "policy_logps") < 0) goto done;
    PyArrayObject *contiguous = (PyArrayObject *)PyArray_FROMANY(
        (PyObject *)labels, NPY_BOOL, 1, 1, NPY_ARRAY_CARRAY);
    Py_DECREF(labels);
    labels = contiguous;
    if (!labels) goto done;
    PyObject *out[3] = {new_f64(B), new_f64(B), return_grad ? new_f64(B) : NULL};
    int n_out = return_grad ? 3 : 2;
    if (out[0] && out[1] && (!return_grad || out[2]))
        kto_loss(f64(out[0]), f64(out[1]), return_grad ? f64(out[2]) : NULL, x_p, x_r,
                 (const unsigned char *)PyArray_DATA(labels), (int)B, kl, beta,
                 (kto_loss_type)type, desirable_weight, undesirable_weight);
    result = tuple_of(n_out, out);
done:
    Py_XDECREF(labels);
    release_inputs(&in);
    return result;
}

static PyObject *py_orpo_loss(PyObject *self, PyObject *args) {
    PyObject *pc, *pr;
    double beta;
    int return_grad;
    if (!PyArg_ParseTuple(args, "OOdp", &pc, &pr, &beta, &return_grad)) return NULL;
    inputs in = {0};
    const double *x_c, *x_r;
    PyObject *result = NULL;
    if (take_vector(&in, pc, "policy_chosen_logps", NOT_POSITIVE, &x_c) < 0 ||
        take_vector(&in, pr, "policy_rejected_logps", NOT_POSITIVE, &x_r) < 0)
        goto done;
    npy_intp B = in.batch;
    PyObject *out[6] = {new_f64(B), new_f64(B), new_f64(B), new_f64(B), NULL, NULL};
    if (return_grad) {
        out[4] = new_f64(B);
        out[5] = new_f64(B);
    }
    int n_out = return_grad ? 6 : 4;
    int ok = 1;
    for (int i = 0; i < n_out; i++) ok = ok && out[i];
    if (ok)
        orpo_loss(f64(out[0]), f64(out[1]), f64(out[2]), f64(out[3]),
                  return_grad ? f64(out[4]) : NULL, return_grad ? f64(out[5]) : NULL, x_c, x_r,
                  (int)B, beta);
    result = tuple_of(n_out, out);
done:
    release_inputs(&in);
    return result;
}

static PyObject *py_cpo_loss(PyObject *self, PyObject *args) {
    PyObject *pc, *pr;
    double beta, label_smoothing, simpo_gamma, alpha;
    int type, return_grad;
    if (!PyArg_ParseTuple(args, "OOdidddp", &pc, &pr, &beta, &type, &label_smoothing,
                          &simpo_gamma, &alpha, &return_grad))
        return NULL;
    inputs in = {0};
    const double *x_c, *x_r;
    PyObject *result = NULL;
    if (take_vector(&in, pc, "policy_chosen_logps", NOT_POSITIVE, &x_c) < 0 ||
        take_vector(&in, pr, "policy_rejected_logps", NOT_POSITIVE, &x_r) < 0)
        goto done;
    npy_intp B = in.batch;
    PyObject *out[5] = {new_f64(B), new_f64(B), new_f64(B), NULL, NULL};
    if (return_grad) {
        out[3] = new_f64(B);
        out[4] = new_f64(B);
    }
    int n_out = return_grad ? 5 : 3;
    int ok = 1;
    for (int i = 0; i < n_out; i++) ok = ok && out[i];
    if (ok)
        cpo_loss(f64(out[0]), f64(out[1]), f64(out[2]), return_grad ? f64(out[3]) : NULL,
                 return_grad ? f64(out[4]) : NULL, x_c, x_r, (int)B, beta, (cpo_loss_type)type,
                 label_smoothing, simpo_gamma, alpha);
    result = tuple_of(n_out, out);
done:
    release_inputs(&in);
    return result;
}

static PyObject *py_reward_loss(PyObject *self, PyObject *args) {
    PyObject *rc, *rr, *margin_obj;
    double center_coef;
    int return_grad;
    if (!PyArg_ParseTuple(args, "OOOdp", &rc, &rr, &margin_obj, &center_coef, &return_grad))
        return NULL;
    inputs in = {0};
    const double *x_c, *x_r, *x_m;
    PyObject *result = NULL;
    if (take_vector(&in, rc, "chosen_rewards", ANY_SIGN, &x_c) < 0 ||
        take_vector(&in, rr, "rejected_rewards", ANY_SIGN, &x_r) < 0 ||
        take_vector(&in, margin_obj, "margin", ANY_SIGN, &x_m) < 0)
        goto done;
    npy_intp B = in.batch;
    PyObject *out[4] = {new_f64(B), new_f64(B), NULL, NULL};
    if (return_grad) {
        out[2] = new_f64(B);
        out[3] = new_f64(B);
    }
    int n_out = return_grad ? 4 : 2;
    int ok = 1;
    for (int i = 0; i < n_out; i++) ok = ok && out[i];
    if (ok)
        reward_loss(f64(out[0]), f64(out[1]), return_grad ? f64(out[2]) : NULL,
                    return_grad ? f64(out[3]) : NULL, x_c, x_r, x_m, (int)B, center_coef);
    result = tuple_of(n_out, out);
done:
    release_inputs(&in);
    return result;
}

static PyObject *py_listwise_dpo_loss(PyObject *self, PyObject *args) {
    PyObject *policy_obj, *ref_obj;
    double beta;
    int return_grad;
    if (!PyArg_ParseTuple(args, "OOdp", &policy_obj, &ref_obj, &beta, &return_grad)) return NULL;
    PyArrayObject *policy = NULL, *ref = NULL;
    PyObject *result = NULL;
    double *work = NULL;
    if (!(policy = arg_f64_matrix(policy_obj, "policy_logps", 1))) goto done;
    if (!(ref = arg_f64_matrix(ref_obj, "ref_logps", 1))) goto done;
    npy_intp B = PyArray_DIM(policy, 0), K = PyArray_DIM(policy, 1);
    if (B == 0) {
        PyErr_SetString(PyExc_ValueError, "policy_logps is empty: a batch needs at least one row");
        goto done;
    }
    if (PyArray_DIM(ref, 0) != B || PyArray_DIM(ref, 1) != K) {
        PyErr_Format(PyExc_ValueError, "ref_logps has shape (%zd, %zd) but policy_logps has (%zd, %zd)",
                     (Py_ssize_t)PyArray_DIM(ref, 0), (Py_ssize_t)PyArray_DIM(ref, 1),
                     (Py_ssize_t)B, (Py_ssize_t)K);
        goto done;
    }
    if (K < 2) {
        PyErr_Format(PyExc_ValueError, "policy_logps needs K >= 2 responses per row, got %zd",
                     (Py_ssize_t)K);
        goto done;
    }
    PyArrayObject *both[2] = {policy, ref};
    const char *names[2] = {"policy_logps", "ref_logps"};
    for (int a = 0; a < 2; a++) {
        const double *x = (const double *)PyArray_DATA(both[a]);
        for (npy_intp i = 0; i < B * K; i++) {
            if (x[i] > 0) {
                raise_printf(PyExc_ValueError,
                             "%s[%zd, %zd] = %g is a log-probability > 0 (log-probabilities are <= 0)",
                             names[a], (Py_ssize_t)(i / K), (Py_ssize_t)(i % K), x[i]);
                goto done;
            }
        }
    }
    if (!(work = malloc(sizeof(double) * K))) {
        PyErr_NoMemory();
        goto done;
    }
    npy_intp dims[2] = {B, K};
    PyObject *out[3] = {new_f64(B), PyArray_ZEROS(2, dims, NPY_FLOAT64, 0),
                        return_grad ? PyArray_ZEROS(2, dims, NPY_FLOAT64, 0) : NULL};
    int n_out = return_grad ? 3 : 2;
    if (out[0] && out[1] && (!return_grad || out[2]))
        listwise_dpo_loss(f64(out[0]), f64(out[1]), return_grad ? f64(out[2]) : NULL,
                          (const double *)PyArray_DATA(policy), (const double *)PyArray_DATA(ref),
                          (int)B, (int)K, beta, work);
    result = tuple_of(n_out, out);
done:
    free(work);
    Py_XDECREF(policy);
    Py_XDECREF(ref);
    return result;
}

PyMethodDef calign_losses_methods[] = {
    {"dpo_loss", py_dpo_loss, METH_VARARGS, "See calign.losses.dpo_loss."},
    {"kto_loss", py_kto_loss, METH_VARARGS, "See calign.losses.kto_loss."},
    {"orpo_loss", py_orpo_loss, METH_VARARGS, "See calign.losses.orpo_loss."},
    {"cpo_loss", py_cpo_loss, METH_VARARGS, "See calign.losses.cpo_loss."},
    {"reward_loss", py_reward_loss, METH_VARARGS, "See calign.losses.reward_loss."},
    {"listwise_dpo_loss", py_listwise_dpo_loss, METH_VARARGS,
     "See calign.losses.listwise_dpo_loss."},
    {NULL, NULL, 0, NULL},
};
