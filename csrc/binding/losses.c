/* Bindings of the loss library (calign.losses).
 *
 * Loss types, divergences and DPO settings cross the language line by name
 * (the tables beside the enums in losses/losses.h); the Python wrappers
 * check the settings' ranges. Here the arrays are converted to contiguous
 * float64 and checked (rank, length, finite, log-probs <= 0). Losses work on
 * one number per example, so they run with the GIL held. */
#include "binding/common.h"

#include <stdlib.h>
#include <string.h>

#include "losses/losses.h"

/* ---- names ----------------------------------------------------------------------- */

static const char *DPO_LOSS_NAMES[DPO_N_LOSS_TYPES]; /* DPO_LOSS_INFO's names, see dpo_names */

static const char *const *dpo_names(void) {
    for (int i = 0; i < DPO_N_LOSS_TYPES; i++) DPO_LOSS_NAMES[i] = DPO_LOSS_INFO[i].name;
    return DPO_LOSS_NAMES;
}

/* The index of the name obj (a str) in names; -1 with a ValueError naming arg. */
static int loss_name_index(PyObject *obj, const char *arg, const char *const *names, int n) {
    const char *text = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (!text) PyErr_Clear();
    return name_index(text, arg, names, n);
}

/* The names of the DPO loss types with a property, for describe(). */
static int describe_dpo_names_where(PyObject *d, const char *key, int field) {
    const char *names[DPO_N_LOSS_TYPES];
    int n = 0;
    for (int i = 0; i < DPO_N_LOSS_TYPES; i++) {
        const dpo_loss_info *info = &DPO_LOSS_INFO[i];
        if (field == 0 ? info->needs_chosen_lengths
            : field == 1 ? info->needs_rejected_lengths : info->couples_batch)
            names[n++] = info->name;
    }
    return describe_names(d, key, names, n);
}

/* ---- DPO settings ------------------------------------------------------------------- */

/* The keys of the settings dict calign.losses.dpo_settings returns. */
static const char *const DPO_SETTING_KEYS[] = {
    "beta", "label_smoothing", "f_divergence_type", "f_alpha_divergence_coef", "discopop_tau",
    "bco_reward_shift", "scpo_alpha", "loss_type", "loss_weights", NULL,
};

static int setting_double(PyObject *d, const char *key, double *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!PyFloat_Check(v) && !PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "DPO setting %s must be a number, got %R", key, v);
        return -1;
    }
    *out = PyFloat_AsDouble(v);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

int parse_dpo_settings(PyObject *settings, dpo_params *p, int *types, double *loss_weights) {
    if (!PyDict_Check(settings)) {
        PyErr_SetString(PyExc_TypeError, "settings must be the dict calign.losses.dpo_settings "
                                         "returns");
        return -1;
    }
    Py_ssize_t known = 0;
    for (const char *const *key = DPO_SETTING_KEYS; *key; key++, known++)
        if (!PyDict_GetItemString(settings, *key)) {
            PyErr_Format(PyExc_ValueError, "DPO settings lack %s", *key);
            return -1;
        }
    if (PyDict_Size(settings) != known) {
        PyErr_SetString(PyExc_ValueError, "DPO settings hold keys besides those of "
                                          "calign.losses.dpo_settings");
        return -1;
    }
    if (setting_double(settings, "beta", &p->beta) < 0 ||
        setting_double(settings, "label_smoothing", &p->label_smoothing) < 0 ||
        setting_double(settings, "f_alpha_divergence_coef", &p->f_alpha_divergence_coef) < 0 ||
        setting_double(settings, "discopop_tau", &p->discopop_tau) < 0 ||
        setting_double(settings, "bco_reward_shift", &p->bco_reward_shift) < 0 ||
        setting_double(settings, "scpo_alpha", &p->scpo_alpha) < 0)
        return -1;
    int divergence = loss_name_index(PyDict_GetItemString(settings, "f_divergence_type"),
                                     "f_divergence_type", F_DIVERGENCE_NAMES, F_N_DIVERGENCES);
    if (divergence < 0) return -1;
    p->divergence = (f_divergence)divergence;
    PyObject *type_list = PyDict_GetItemString(settings, "loss_type");
    PyObject *weight_list = PyDict_GetItemString(settings, "loss_weights");
    if (!PyList_Check(type_list) || PyList_GET_SIZE(type_list) < 1 ||
        PyList_GET_SIZE(type_list) > DPO_MAX_LOSS_TYPES) {
        PyErr_Format(PyExc_ValueError, "DPO setting loss_type must be a list of 1 to %d names",
                     DPO_MAX_LOSS_TYPES);
        return -1;
    }
    int n = (int)PyList_GET_SIZE(type_list);
    if (!PyList_Check(weight_list) || PyList_GET_SIZE(weight_list) != n) {
        PyErr_Format(PyExc_ValueError, "DPO setting loss_weights must be a list of %d numbers "
                                       "(one per loss type)", n);
        return -1;
    }
    for (int t = 0; t < n; t++) {
        types[t] = loss_name_index(PyList_GET_ITEM(type_list, t), "loss_type", dpo_names(),
                                   DPO_N_LOSS_TYPES);
        if (types[t] < 0) return -1;
        PyObject *w = PyList_GET_ITEM(weight_list, t);
        if (!PyFloat_Check(w) && !PyLong_Check(w)) {
            PyErr_Format(PyExc_TypeError, "loss_weights must hold numbers, got %R", w);
            return -1;
        }
        loss_weights[t] = PyFloat_AsDouble(w);
        if (loss_weights[t] == -1.0 && PyErr_Occurred()) return -1;
    }
    p->n_loss_types = n;
    p->loss_types = types;
    p->loss_weights = loss_weights;
    return 0;
}

/* ---- per-example inputs ------------------------------------------------------------- */

typedef enum { ANY_SIGN, NOT_POSITIVE, NOT_NEGATIVE } sign_rule;

/* Checks a batch of converted vectors (NULL .array: an optional one not
 * given): the first is non-empty with B <= INT_MAX rows, the others have B,
 * and each obeys its sign rule. Returns B, or -1 with an exception. */
static npy_intp check_batch(array_arg *in, const sign_rule *rules, int n) {
    npy_intp B = ARG_LEN(in[0]);
    if (B == 0) {
        PyErr_Format(PyExc_ValueError, "%s is empty: a batch needs at least one example",
                     in[0].name);
        return -1;
    }
    if (B > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s has %zd examples, more than 2**31 - 1", in[0].name,
                     (Py_ssize_t)B);
        return -1;
    }
    for (int a = 0; a < n; a++) {
        if (!in[a].array) continue;
        if (a > 0 && check_rows(&in[a], B, in[0].name) < 0) return -1;
        const double *x = ARG_DATA(const double, in[a]);
        for (npy_intp i = 0; i < B; i++) {
            if (rules[a] == NOT_POSITIVE && x[i] > 0) {
                raise_printf(PyExc_ValueError,
                             "%s[%zd] = %g is a log-probability > 0 (log-probabilities are <= 0)",
                             in[a].name, (Py_ssize_t)i, x[i]);
                return -1;
            }
            if (rules[a] == NOT_NEGATIVE && x[i] < 0) {
                raise_printf(PyExc_ValueError, "%s[%zd] = %g must be >= 0", in[a].name,
                             (Py_ssize_t)i, x[i]);
                return -1;
            }
        }
    }
    return B;
}

static void release_all(array_arg *in, int n) {
    for (int a = 0; a < n; a++) arg_release(&in[a]);
}

static double *data_or_null(const array_arg *a) {
    return a->array ? ARG_DATA(double, *a) : NULL;
}

/* n new float64 vectors of length B in out[]; -1 (all released) on failure. */
static int new_outputs(PyObject **out, int n, npy_intp B) {
    for (int i = 0; i < n; i++) {
        if (!(out[i] = PyArray_ZEROS(1, &B, NPY_FLOAT64, 0))) {
            for (int j = 0; j < i; j++) Py_DECREF(out[j]);
            return -1;
        }
    }
    return 0;
}

static double *f64(PyObject *arr) { return (double *)PyArray_DATA((PyArrayObject *)arr); }

/* A tuple stealing the n references in items. */
static PyObject *tuple_of(PyObject **items, int n) {
    PyObject *t = PyTuple_New(n);
    for (int i = 0; i < n; i++) {
        if (t) PyTuple_SET_ITEM(t, i, items[i]);
        else Py_DECREF(items[i]);
    }
    return t;
}

/* ---- the losses ----------------------------------------------------------------------- */

static PyObject *py_dpo_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                             "ref_rejected_logps", "settings", "chosen_lengths",
                             "rejected_lengths", "weights", "return_grad", NULL};
    array_arg in[7] = {{"policy_chosen_logps"}, {"policy_rejected_logps"}, {"ref_chosen_logps"},
                       {"ref_rejected_logps"}, {"chosen_lengths"}, {"rejected_lengths"},
                       {"weights"}};
    const sign_rule rules[7] = {NOT_POSITIVE, NOT_POSITIVE, NOT_POSITIVE, NOT_POSITIVE,
                                NOT_NEGATIVE, NOT_NEGATIVE, ANY_SIGN};
    PyObject *settings;
    int return_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "O&O&O&O&O!|$O&O&O&p", kwlist, to_f64_vector, &in[0], to_f64_vector,
            &in[1], to_f64_vector, &in[2], to_f64_vector, &in[3], &PyDict_Type, &settings,
            to_f64_vector_or_none, &in[4], to_f64_vector_or_none, &in[5],
            to_f64_vector_or_none, &in[6], &return_grad))
        return NULL;
    dpo_params p = {0};
    int types[DPO_MAX_LOSS_TYPES];
    double loss_weights[DPO_MAX_LOSS_TYPES];
    PyObject *result = NULL, *out[5];
    double *work = NULL;
    npy_intp B;
    if (parse_dpo_settings(settings, &p, types, loss_weights) < 0 ||
        (B = check_batch(in, rules, 7)) < 0)
        goto done;
    for (int t = 0; t < p.n_loss_types; t++) {
        const dpo_loss_info *info = &DPO_LOSS_INFO[types[t]];
        array_arg *missing = info->needs_chosen_lengths && !in[4].array ? &in[4]
                             : info->needs_rejected_lengths && !in[5].array ? &in[5] : NULL;
        if (missing) {
            PyErr_Format(PyExc_ValueError, "%s is required by loss_type '%s' (it normalises by "
                         "completion token counts)", missing->name, info->name);
            goto done;
        }
    }
    /* dpo_loss's scratch: 5 B doubles, then 2 B ints */
    if (!(work = malloc(sizeof(double) * 5 * B + sizeof(int) * 2 * B))) {
        PyErr_NoMemory();
        goto done;
    }
    int n_out = return_grad ? 5 : 3;
    if (new_outputs(out, n_out, B) < 0) goto done;
    dpo_loss(f64(out[0]), f64(out[1]), f64(out[2]), return_grad ? f64(out[3]) : NULL,
             return_grad ? f64(out[4]) : NULL, data_or_null(&in[0]), data_or_null(&in[1]),
             data_or_null(&in[2]), data_or_null(&in[3]), data_or_null(&in[4]),
             data_or_null(&in[5]), data_or_null(&in[6]), (int)B, &p, work,
             (int *)(work + 5 * B));
    result = tuple_of(out, n_out);
done:
    free(work);
    release_all(in, 7);
    return result;
}

static PyObject *py_kto_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"policy_logps", "ref_logps", "labels", "kl", "beta", "loss_type",
                             "desirable_weight", "undesirable_weight", "return_grad", NULL};
    array_arg in[2] = {{"policy_logps"}, {"ref_logps"}}, labels = {"labels"};
    const sign_rule rules[2] = {NOT_POSITIVE, NOT_POSITIVE};
    double kl, beta, desirable_weight, undesirable_weight;
    PyObject *type_obj;
    int return_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&$ddOddp", kwlist, to_f64_vector,
                                     &in[0], to_f64_vector, &in[1], to_bool_vector, &labels, &kl,
                                     &beta, &type_obj, &desirable_weight, &undesirable_weight,
                                     &return_grad))
        return NULL;
    PyObject *result = NULL, *out[3];
    npy_intp B;
    int type = loss_name_index(type_obj, "loss_type", KTO_LOSS_NAMES, KTO_N_LOSS_TYPES);
    if (type < 0 || (B = check_batch(in, rules, 2)) < 0 || check_rows(&labels, B, in[0].name) < 0)
        goto done;
    int n_out = return_grad ? 3 : 2;
    if (new_outputs(out, n_out, B) < 0) goto done;
    kto_loss(f64(out[0]), f64(out[1]), return_grad ? f64(out[2]) : NULL, data_or_null(&in[0]),
             data_or_null(&in[1]), ARG_DATA(const unsigned char, labels), (int)B, kl, beta,
             (kto_loss_type)type, desirable_weight, undesirable_weight);
    result = tuple_of(out, n_out);
done:
    arg_release(&labels);
    release_all(in, 2);
    return result;
}

static PyObject *py_orpo_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"policy_chosen_logps", "policy_rejected_logps", "beta",
                             "return_grad", NULL};
    array_arg in[2] = {{"policy_chosen_logps"}, {"policy_rejected_logps"}};
    const sign_rule rules[2] = {NOT_POSITIVE, NOT_POSITIVE};
    double beta;
    int return_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$dp", kwlist, to_f64_vector, &in[0],
                                     to_f64_vector, &in[1], &beta, &return_grad))
        return NULL;
    PyObject *result = NULL, *out[6];
    npy_intp B = check_batch(in, rules, 2);
    int n_out = return_grad ? 6 : 4;
    if (B < 0 || new_outputs(out, n_out, B) < 0) goto done;
    orpo_loss(f64(out[0]), f64(out[1]), f64(out[2]), f64(out[3]),
              return_grad ? f64(out[4]) : NULL, return_grad ? f64(out[5]) : NULL,
              data_or_null(&in[0]), data_or_null(&in[1]), (int)B, beta);
    result = tuple_of(out, n_out);
done:
    release_all(in, 2);
    return result;
}

static PyObject *py_cpo_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"policy_chosen_logps", "policy_rejected_logps", "beta", "loss_type",
                             "label_smoothing", "simpo_gamma", "alpha", "return_grad", NULL};
    array_arg in[2] = {{"policy_chosen_logps"}, {"policy_rejected_logps"}};
    const sign_rule rules[2] = {NOT_POSITIVE, NOT_POSITIVE};
    double beta, label_smoothing, simpo_gamma, alpha;
    PyObject *type_obj;
    int return_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$dOdddp", kwlist, to_f64_vector,
                                     &in[0], to_f64_vector, &in[1], &beta, &type_obj,
                                     &label_smoothing, &simpo_gamma, &alpha, &return_grad))
        return NULL;
    PyObject *result = NULL, *out[5];
    npy_intp B;
    int type = loss_name_index(type_obj, "loss_type", CPO_LOSS_NAMES, CPO_N_LOSS_TYPES);
    int n_out = return_grad ? 5 : 3;
    if (type < 0 || (B = check_batch(in, rules, 2)) < 0 || new_outputs(out, n_out, B) < 0)
        goto done;
    cpo_loss(f64(out[0]), f64(out[1]), f64(out[2]), return_grad ? f64(out[3]) : NULL,
             return_grad ? f64(out[4]) : NULL, data_or_null(&in[0]), data_or_null(&in[1]),
             (int)B, beta, (cpo_loss_type)type, label_smoothing, simpo_gamma, alpha);
    result = tuple_of(out, n_out);
done:
    release_all(in, 2);
    return result;
}

static PyObject *py_reward_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"chosen_rewards", "rejected_rewards", "margin",
                             "center_rewards_coefficient", "return_grad", NULL};
    array_arg in[3] = {{"chosen_rewards"}, {"rejected_rewards"}, {"margin"}};
    const sign_rule rules[3] = {ANY_SIGN, ANY_SIGN, ANY_SIGN};
    double center_coef;
    int return_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$O&dp", kwlist, to_f64_vector, &in[0],
                                     to_f64_vector, &in[1], to_f64_vector_or_none, &in[2],
                                     &center_coef, &return_grad))
        return NULL;
    PyObject *result = NULL, *out[4];
    npy_intp B = check_batch(in, rules, 3);
    int n_out = return_grad ? 4 : 2;
    if (B < 0 || new_outputs(out, n_out, B) < 0) goto done;
    reward_loss(f64(out[0]), f64(out[1]), return_grad ? f64(out[2]) : NULL,
                return_grad ? f64(out[3]) : NULL, data_or_null(&in[0]), data_or_null(&in[1]),
                data_or_null(&in[2]), (int)B, center_coef);
    result = tuple_of(out, n_out);
done:
    release_all(in, 3);
    return result;
}

static PyObject *py_listwise_dpo_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"policy_logps", "ref_logps", "beta", "return_grad", NULL};
    array_arg policy = {"policy_logps"}, ref = {"ref_logps"};
    double beta;
    int return_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$dp", kwlist, to_f64_matrix, &policy,
                                     to_f64_matrix, &ref, &beta, &return_grad))
        return NULL;
    PyObject *result = NULL;
    double *work = NULL;
    npy_intp B = PyArray_DIM(policy.array, 0), K = PyArray_DIM(policy.array, 1);
    if (B == 0) {
        PyErr_SetString(PyExc_ValueError, "policy_logps is empty: a batch needs at least one row");
        goto done;
    }
    if (B > INT32_MAX || K > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "policy_logps has more than 2**31 - 1 rows or columns");
        goto done;
    }
    if (PyArray_DIM(ref.array, 0) != B || PyArray_DIM(ref.array, 1) != K) {
        PyErr_Format(PyExc_ValueError, "ref_logps has shape (%zd, %zd) but policy_logps has (%zd, %zd)",
                     (Py_ssize_t)PyArray_DIM(ref.array, 0), (Py_ssize_t)PyArray_DIM(ref.array, 1),
                     (Py_ssize_t)B, (Py_ssize_t)K);
        goto done;
    }
    if (K < 2) {
        PyErr_Format(PyExc_ValueError, "policy_logps needs K >= 2 responses per row, got %zd",
                     (Py_ssize_t)K);
        goto done;
    }
    array_arg *both[2] = {&policy, &ref};
    for (int a = 0; a < 2; a++) {
        const double *x = ARG_DATA(const double, *both[a]);
        for (npy_intp i = 0; i < B * K; i++) {
            if (x[i] > 0) {
                raise_printf(PyExc_ValueError,
                             "%s[%zd, %zd] = %g is a log-probability > 0 (log-probabilities are <= 0)",
                             both[a]->name, (Py_ssize_t)(i / K), (Py_ssize_t)(i % K), x[i]);
                goto done;
            }
        }
    }
    if (!(work = malloc(sizeof(double) * K))) {
        PyErr_NoMemory();
        goto done;
    }
    npy_intp dims[2] = {B, K};
    PyObject *out[3] = {PyArray_ZEROS(1, &B, NPY_FLOAT64, 0), PyArray_ZEROS(2, dims, NPY_FLOAT64, 0),
                        return_grad ? PyArray_ZEROS(2, dims, NPY_FLOAT64, 0) : NULL};
    int n_out = return_grad ? 3 : 2;
    if (!out[0] || !out[1] || (return_grad && !out[2])) {
        for (int i = 0; i < 3; i++) Py_XDECREF(out[i]);
        goto done;
    }
    listwise_dpo_loss(f64(out[0]), f64(out[1]), return_grad ? f64(out[2]) : NULL,
                      ARG_DATA(const double, policy), ARG_DATA(const double, ref), (int)B, (int)K,
                      beta, work);
    result = tuple_of(out, n_out);
done:
    free(work);
    arg_release(&policy);
    arg_release(&ref);
    return result;
}

int describe_losses(PyObject *d) {
    int n_keys = 0;
    while (DPO_SETTING_KEYS[n_keys]) n_keys++;
    return describe_names(d, "dpo_loss_types", dpo_names(), DPO_N_LOSS_TYPES) < 0 ||
                   describe_dpo_names_where(d, "dpo_loss_types_needing_chosen_lengths", 0) < 0 ||
                   describe_dpo_names_where(d, "dpo_loss_types_needing_rejected_lengths", 1) < 0 ||
                   describe_dpo_names_where(d, "dpo_loss_types_coupling_the_batch", 2) < 0 ||
                   describe_names(d, "f_divergence_types", F_DIVERGENCE_NAMES,
                                  F_N_DIVERGENCES) < 0 ||
                   describe_names(d, "kto_loss_types", KTO_LOSS_NAMES, KTO_N_LOSS_TYPES) < 0 ||
                   describe_names(d, "cpo_loss_types", CPO_LOSS_NAMES, CPO_N_LOSS_TYPES) < 0 ||
                   describe_names(d, "dpo_settings", DPO_SETTING_KEYS, n_keys) < 0
               ? -1
               : 0;
}

PyMethodDef calign_losses_methods[] = {
    KEYWORDS_METHOD("dpo_loss", py_dpo_loss, "See calign.losses.dpo_loss."),
    KEYWORDS_METHOD("kto_loss", py_kto_loss, "See calign.losses.kto_loss."),
    KEYWORDS_METHOD("orpo_loss", py_orpo_loss, "See calign.losses.orpo_loss."),
    KEYWORDS_METHOD("cpo_loss", py_cpo_loss, "See calign.losses.cpo_loss."),
    KEYWORDS_METHOD("reward_loss", py_reward_loss, "See calign.losses.reward_loss."),
    KEYWORDS_METHOD("listwise_dpo_loss", py_listwise_dpo_loss,
                    "See calign.losses.listwise_dpo_loss."),
    {NULL, NULL, 0, NULL},
};
