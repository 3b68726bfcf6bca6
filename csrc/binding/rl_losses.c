/* Bindings of the per-token losses over [B, T] arrays (calign.losses: GRPO,
 * RLOO, PPO with their advantages, and the token-wise constrained SFT loss).
 * The arrays arrive as float32 (the Python wrappers convert once) and are
 * checked here: shapes against the first operand, values (log-probs finite
 * and <= 0, masks 0 or 1, rewards finite or NaN, betas positive), each error
 * naming the argument. Names of loss types and settings cross by name from
 * the tables beside their enums (losses/losses.h). The C calls run without
 * the GIL. */
#include "binding/common.h"

#include <math.h>
#include <stdlib.h>

#include "core/status.h"
#include "losses/losses.h"

/* ---- checks ----------------------------------------------------------------------- */

int check_values(const array_arg *a, value_rule rule) {
    const float *x = ARG_DATA(const float, *a);
    npy_intp n = PyArray_SIZE(a->array), cols = PyArray_NDIM(a->array) == 2
                                                    ? PyArray_DIM(a->array, 1) : 1;
    static const char *const why[] = {
        [FINITE] = "must be finite", [LOGPROB] = "must be a finite log-probability (<= 0)",
        [MASK] = "must be 0 or 1", [FINITE_OR_NAN] = "must be finite or NaN (no reward)",
        [POSITIVE] = "must be positive and finite",
    };
    for (npy_intp k = 0; k < n; k++) {
        float v = x[k];
        int ok = rule == FINITE ? isfinite(v)
                 : rule == LOGPROB ? isfinite(v) && v <= 0.0f
                 : rule == MASK ? v == 0.0f || v == 1.0f
                 : rule == POSITIVE ? isfinite(v) && v > 0.0f
                                    : !isinf(v);
        if (ok) continue;
        if (PyArray_NDIM(a->array) == 2)
            raise_printf(PyExc_ValueError, "%s[%zd, %zd] = %g %s", a->name, (Py_ssize_t)(k / cols),
                         (Py_ssize_t)(k % cols), (double)v, why[rule]);
        else
            raise_printf(PyExc_ValueError, "%s[%zd] = %g %s", a->name, (Py_ssize_t)k, (double)v,
                         why[rule]);
        return -1;
    }
    return 0;
}

/* ValueError unless a (if given) has the shape of `like` (a matrix). */
static int check_same_shape(const array_arg *a, const array_arg *like) {
    if (!a->array) return 0;
    npy_intp B = PyArray_DIM(like->array, 0), T = PyArray_DIM(like->array, 1);
    if (PyArray_DIM(a->array, 0) != B || PyArray_DIM(a->array, 1) != T) {
        PyErr_Format(PyExc_ValueError, "%s has shape (%zd, %zd) but %s has (%zd, %zd)", a->name,
                     (Py_ssize_t)PyArray_DIM(a->array, 0), (Py_ssize_t)PyArray_DIM(a->array, 1),
                     like->name, (Py_ssize_t)B, (Py_ssize_t)T);
        return -1;
    }
    return 0;
}

/* B and T of a [B, T] operand as C ints, B >= 1. */
static int batch_dims(int *B, int *T, const array_arg *a) {
    if (dim_as_int(B, a, 0, "rows") < 0 || dim_as_int(T, a, 1, "tokens") < 0) return -1;
    if (*B == 0) {
        PyErr_Format(PyExc_ValueError, "%s is empty: a batch needs at least one completion",
                     a->name);
        return -1;
    }
    return 0;
}

/* The matrices (shaped like in[0]) and vectors (length B) with their rules. */
static int check_operands(array_arg *const *in, const value_rule *rules, int n, int B) {
    for (int a = 0; a < n; a++) {
        if (!in[a]->array) continue;
        if (PyArray_NDIM(in[a]->array) == 2 ? check_same_shape(in[a], in[0]) < 0
                                            : check_rows(in[a], B, in[0]->name) < 0)
            return -1;
        if (check_values(in[a], rules[a]) < 0) return -1;
    }
    return 0;
}

static void release(array_arg *const *in, int n) {
    for (int a = 0; a < n; a++) arg_release(in[a]);
}

static float *f32_or_null(const array_arg *a) {
    return a->array ? ARG_DATA(float, *a) : NULL;
}

static PyObject *new_f32(int ndim, npy_intp B, npy_intp T) {
    npy_intp dims[2] = {B, T};
    return PyArray_ZEROS(ndim, dims, NPY_FLOAT32, 0);
}

static float *f32(PyObject *arr) { return (float *)PyArray_DATA((PyArrayObject *)arr); }

static int name_arg(PyObject *obj, const char *arg, const char *const *names, int n) {
    const char *text = PyUnicode_Check(obj) ? PyUnicode_AsUTF8(obj) : NULL;
    if (!text) PyErr_Clear();
    return name_index(text, arg, names, n);
}

/* Rewards [B, F] and weights [F] of the advantage functions. */
static int check_rewards(array_arg *rewards, array_arg *weights, int G, int *B, int *F) {
    if (dim_as_int(B, rewards, 0, "rows") < 0 || dim_as_int(F, rewards, 1, "reward functions") < 0)
        return -1;
    if (*B == 0 || *F == 0) {
        PyErr_Format(PyExc_ValueError, "rewards must have at least one row and one reward "
                     "function, got shape (%d, %d)", *B, *F);
        return -1;
    }
    if (*B % G != 0) {
        PyErr_Format(PyExc_ValueError, "num_generations must divide the %d rows of rewards (G "
                     "completions per prompt), got %d", *B, G);
        return -1;
    }
    if (ARG_LEN(*weights) != *F) {
        PyErr_Format(PyExc_ValueError, "reward_weights has %zd entries but rewards has %d reward "
                     "functions", (Py_ssize_t)ARG_LEN(*weights), *F);
        return -1;
    }
    return check_values(rewards, FINITE_OR_NAN) < 0 || check_values(weights, FINITE) < 0 ? -1 : 0;
}

/* ---- advantages --------------------------------------------------------------------- */

static PyObject *py_group_advantages(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"rewards", "reward_weights", "num_generations", "scale_rewards",
                             "multi_objective_aggregation", NULL};
    array_arg rewards = {"rewards"}, weights = {"reward_weights"};
    int_arg G = {"num_generations", 2, INT32_MAX};
    PyObject *scale_obj, *agg_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$O&OO", kwlist, to_f32_matrix, &rewards,
                                     to_f32_vector, &weights, to_int, &G, &scale_obj, &agg_obj))
        return NULL;
    array_arg *all[2] = {&rewards, &weights};
    PyObject *result = NULL;
    double *work = NULL;
    int B, F;
    int scale = name_arg(scale_obj, "scale_rewards", SCALE_REWARDS_NAMES, N_SCALE_REWARDS);
    int agg = scale < 0 ? -1 : name_arg(agg_obj, "multi_objective_aggregation",
                                        REWARD_AGGREGATION_NAMES, N_REWARD_AGGREGATIONS);
    if (agg < 0 || check_rewards(&rewards, &weights, (int)G.value, &B, &F) < 0) goto done;
    if (!(work = malloc(sizeof(double) * 2 * B))) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(result = new_f32(1, B, 0))) goto done;
    Py_BEGIN_ALLOW_THREADS
    group_advantages(f32(result), ARG_DATA(const float, rewards), ARG_DATA(const float, weights),
                     B, F, (int)G.value, (scale_rewards_kind)scale, (reward_aggregation)agg, work);
    Py_END_ALLOW_THREADS
done:
    free(work);
    release(all, 2);
    return result;
}

static PyObject *py_rloo_advantages(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"rewards", "reward_weights", "num_generations", "beta",
                             "old_per_token_logps", "ref_per_token_logps", "completion_mask",
                             "reward_clip_range", "normalize_advantages", NULL};
    array_arg rewards = {"rewards"}, weights = {"reward_weights"}, old = {"old_per_token_logps"},
              ref = {"ref_per_token_logps"}, mask = {"completion_mask"};
    int_arg G = {"num_generations", 2, INT32_MAX};
    real_arg beta = {"beta", -INFINITY, INFINITY};
    double clip_low = 0.0, clip_high = 0.0;
    PyObject *clip_obj = Py_None;
    int normalize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$O&O&O&O&O&Op", kwlist, to_f32_matrix,
                                     &rewards, to_f32_vector, &weights, to_int, &G, to_real,
                                     &beta, to_f32_matrix_or_none, &old, to_f32_matrix_or_none,
                                     &ref, to_f32_matrix_or_none, &mask, &clip_obj, &normalize))
        return NULL;
    array_arg *all[5] = {&rewards, &weights, &old, &ref, &mask};
    PyObject *result = NULL, *advantages = NULL, *kl_out = Py_None;
    double *work = NULL;
    int B, F, T = 0;
    Py_INCREF(Py_None);
    if (check_rewards(&rewards, &weights, (int)G.value, &B, &F) < 0) goto done;
    if (clip_obj != Py_None &&
        !PyArg_ParseTuple(clip_obj, "dd;reward_clip_range must be None or (low, high)",
                          &clip_low, &clip_high))
        goto done;
    int with_kl = beta.value != 0.0;
    if (with_kl) {
        array_arg *operands[3] = {&old, &ref, &mask};
        const value_rule rules[3] = {LOGPROB, LOGPROB, MASK};
        for (int a = 0; a < 3; a++)
            if (!operands[a]->array) {
                PyErr_Format(PyExc_ValueError, "%s is required when beta != 0 (RLOO folds the "
                             "k1 KL to the reference into the rewards)", operands[a]->name);
                goto done;
            }
        if (check_rows(&old, B, "rewards") < 0 || dim_as_int(&T, &old, 1, "tokens") < 0 ||
            check_operands(operands, rules, 3, B) < 0)
            goto done;
    }
    if (!(work = malloc(sizeof(double) * 2 * B))) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(advantages = new_f32(1, B, 0))) goto done;
    double *kl = with_kl ? work + B : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (with_kl)
        masked_row_difference_sums(kl, ARG_DATA(const float, old), ARG_DATA(const float, ref),
                                   ARG_DATA(const float, mask), B, T);
    rloo_advantages(f32(advantages), ARG_DATA(const float, rewards),
                    ARG_DATA(const float, weights), kl, B, F, (int)G.value, beta.value,
                    clip_obj != Py_None, clip_low, clip_high, normalize, work);
    Py_END_ALLOW_THREADS
    if (with_kl) {
        Py_DECREF(kl_out);
        if (!(kl_out = vector_copy(kl, B, NPY_FLOAT64))) goto done;
    }
    result = Py_BuildValue("(OO)", advantages, kl_out);
done:
    Py_XDECREF(advantages);
    Py_XDECREF(kl_out);
    free(work);
    release(all, 5);
    return result;
}

/* ---- GRPO and RLOO losses ---------------------------------------------------------------- */

/* d[key] = v, or None for NAN (a metric TRL does not log for these settings). */
static int set_metric(PyObject *d, const char *key, double v) {
    PyObject *value = isnan(v) ? Py_NewRef(Py_None) : PyFloat_FromDouble(v);
    int rc = value ? PyDict_SetItemString(d, key, value) : -1;
    Py_XDECREF(value);
    return rc;
}

/* ---- GRPO settings ------------------------------------------------------------------- */

/* The keys of the settings dict calign.losses.grpo_settings returns. */
static const char *const GRPO_SETTING_KEYS[] = {
    "loss_type", "importance_sampling_level", "epsilon", "epsilon_high", "delta", "beta",
    "use_bias_correction_kl", "sapo_temperature_pos", "sapo_temperature_neg", "vespo_k_pos",
    "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg", "off_policy_mask_threshold", NULL,
};

/* settings[arg->name] through to_real; None gives none_value when it is not NAN. */
static int grpo_real(PyObject *settings, real_arg *arg, double none_value, int none_ok) {
    PyObject *v = PyDict_GetItemString(settings, arg->name);
    if (v == Py_None && none_ok) {
        arg->value = none_value;
        return 0;
    }
    return to_real(v, arg) ? 0 : -1;
}

int parse_grpo_settings(PyObject *settings, grpo_params *p) {
    if (!PyDict_Check(settings)) {
        PyErr_SetString(PyExc_TypeError, "settings must be the dict calign.losses.grpo_settings "
                                         "returns");
        return -1;
    }
    Py_ssize_t known = 0;
    for (const char *const *key = GRPO_SETTING_KEYS; *key; key++, known++)
        if (!PyDict_GetItemString(settings, *key)) {
            PyErr_Format(PyExc_ValueError, "GRPO settings lack %s", *key);
            return -1;
        }
    if (PyDict_Size(settings) != known) {
        PyErr_SetString(PyExc_ValueError, "GRPO settings hold keys besides those of "
                                          "calign.losses.grpo_settings");
        return -1;
    }
    real_arg eps = {"epsilon", 0, INFINITY}, eps_high = {"epsilon_high", 0, INFINITY},
             delta = {"delta", 0, INFINITY, 1}, beta = {"beta", -INFINITY, INFINITY},
             sapo_pos = {"sapo_temperature_pos", 0, INFINITY, 1},
             sapo_neg = {"sapo_temperature_neg", 0, INFINITY, 1},
             k_pos = {"vespo_k_pos", -INFINITY, INFINITY},
             lambda_pos = {"vespo_lambda_pos", -INFINITY, INFINITY},
             k_neg = {"vespo_k_neg", -INFINITY, INFINITY},
             lambda_neg = {"vespo_lambda_neg", -INFINITY, INFINITY},
             opm = {"off_policy_mask_threshold", -INFINITY, INFINITY};
    PyObject *bias_kl = PyDict_GetItemString(settings, "use_bias_correction_kl");
    if (grpo_real(settings, &eps, 0, 0) < 0 || grpo_real(settings, &eps_high, 0, 0) < 0 ||
        grpo_real(settings, &delta, INFINITY, 1) < 0 || grpo_real(settings, &beta, 0, 0) < 0 ||
        grpo_real(settings, &sapo_pos, 0, 0) < 0 || grpo_real(settings, &sapo_neg, 0, 0) < 0 ||
        grpo_real(settings, &k_pos, 0, 0) < 0 || grpo_real(settings, &lambda_pos, 0, 0) < 0 ||
        grpo_real(settings, &k_neg, 0, 0) < 0 || grpo_real(settings, &lambda_neg, 0, 0) < 0 ||
        grpo_real(settings, &opm, NAN, 1) < 0)
        return -1;
    if (!PyBool_Check(bias_kl)) {
        PyErr_Format(PyExc_TypeError, "GRPO setting use_bias_correction_kl must be True or "
                                      "False, got %R", bias_kl);
        return -1;
    }
    int type = name_arg(PyDict_GetItemString(settings, "loss_type"), "loss_type",
                        GRPO_LOSS_NAMES, GRPO_N_LOSS_TYPES);
    int level = type < 0 ? -1 : name_arg(PyDict_GetItemString(settings,
                                                              "importance_sampling_level"),
                                         "importance_sampling_level",
                                         IMPORTANCE_SAMPLING_LEVEL_NAMES,
                                         N_IMPORTANCE_SAMPLING_LEVELS);
    if (level < 0) return -1;
    *p = (grpo_params){(grpo_loss_type)type, (importance_sampling_level)level, eps.value,
                       eps_high.value, delta.value, beta.value, bias_kl == Py_True,
                       sapo_pos.value, sapo_neg.value, k_pos.value, lambda_pos.value,
                       k_neg.value, lambda_neg.value, opm.value};
    return 0;
}

/* The checks every GRPO entry point makes of the batch-level arguments. */
int check_grpo_batch(const grpo_params *p, int has_ref, long long max_completion_length) {
    if (p->beta != 0.0 && !has_ref) {
        PyErr_SetString(PyExc_ValueError, "ref_per_token_logps is required when beta != 0 (the "
                        "KL term compares the policy with the reference)");
        return -1;
    }
    if (p->loss_type == GRPO_DR_GRPO && max_completion_length == 0) {
        PyErr_SetString(PyExc_ValueError, "max_completion_length is required by loss_type "
                        "'dr_grpo' (its normaliser is B * max_completion_length)");
        return -1;
    }
    return 0;
}

/* d[...] = TRL's GRPO metrics (None where TRL logs none); -1 with an exception. */
int set_grpo_metrics(PyObject *d, const grpo_metrics *m) {
    return set_metric(d, "kl", m->kl) < 0 ||
                   set_metric(d, "clip_ratio/low_mean", m->clip_low_mean) < 0 ||
                   set_metric(d, "clip_ratio/low_min", m->clip_low_min) < 0 ||
                   set_metric(d, "clip_ratio/high_mean", m->clip_high_mean) < 0 ||
                   set_metric(d, "clip_ratio/high_max", m->clip_high_max) < 0 ||
                   set_metric(d, "clip_ratio/region_mean", m->clip_region_mean) < 0 ||
                   set_metric(d, "cispo_clip_ratio", m->cispo_clip_ratio) < 0 ||
                   set_metric(d, "vespo/phi_seq_mean", m->vespo_phi_seq_mean) < 0
               ? -1
               : 0;
}

static PyObject *py_grpo_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"per_token_logps", "old_per_token_logps", "ref_per_token_logps",
                             "advantages", "completion_mask", "entropy_mask", "settings",
                             "max_completion_length", "num_items_in_batch",
                             "gradient_accumulation_steps", NULL};
    array_arg logps = {"per_token_logps"}, old = {"old_per_token_logps"},
              ref = {"ref_per_token_logps"}, adv = {"advantages"}, mask = {"completion_mask"},
              entropy_mask = {"entropy_mask"};
    PyObject *settings;
    real_arg items = {"num_items_in_batch", 0, INFINITY};
    int_arg max_len = {"max_completion_length", 0, INT32_MAX},
            accum = {"gradient_accumulation_steps", 1, INT32_MAX};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "O&O&O&O&O&O&O!$O&O&O&", kwlist, to_f32_matrix, &logps,
            to_f32_matrix_or_none, &old, to_f32_matrix_or_none, &ref, to_f32_vector, &adv,
            to_f32_matrix, &mask, to_f32_matrix_or_none, &entropy_mask, &PyDict_Type, &settings,
            to_int, &max_len, to_real, &items, to_int, &accum))
        return NULL;
    array_arg *all[6] = {&logps, &adv, &mask, &old, &ref, &entropy_mask};
    const value_rule rules[6] = {LOGPROB, FINITE, MASK, LOGPROB, LOGPROB, MASK};
    PyObject *result = NULL, *grad = NULL, *metrics = NULL;
    grpo_row_stats *rows = NULL;
    int B, T, status = CALIGN_OK;
    grpo_params p = {0};
    if (parse_grpo_settings(settings, &p) < 0 || batch_dims(&B, &T, &logps) < 0 ||
        check_operands(all, rules, 6, B) < 0 ||
        check_grpo_batch(&p, ref.array != NULL, max_len.value) < 0)
        goto done;
    if (!(rows = malloc(sizeof(grpo_row_stats) * B))) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(grad = new_f32(2, B, T))) goto done;
    grpo_metrics m;
    Py_BEGIN_ALLOW_THREADS
    status = grpo_loss(f32(grad), &m, ARG_DATA(const float, logps), f32_or_null(&old),
                       f32_or_null(&ref), ARG_DATA(const float, adv), ARG_DATA(const float, mask),
                       f32_or_null(&entropy_mask), B, T, (int)max_len.value, items.value,
                       (int)accum.value, &p, rows);
    Py_END_ALLOW_THREADS
    if (raise_status(status, "the GRPO loss or its gradient is not finite in float32 (a log-"
                     "ratio per_token_logps - old_per_token_logps too large?)") < 0)
        goto done;
    if (!(metrics = PyDict_New()) || set_grpo_metrics(metrics, &m) < 0) goto done;
    result = Py_BuildValue("(dOO)", m.loss, grad, metrics);
done:
    Py_XDECREF(grad);
    Py_XDECREF(metrics);
    free(rows);
    release(all, 6);
    return result;
}

static PyObject *py_rloo_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"per_token_logps", "old_logps", "advantages", "completion_mask",
                             "epsilon", "epsilon_high", NULL};
    array_arg logps = {"per_token_logps"}, old = {"old_logps"}, adv = {"advantages"},
              mask = {"completion_mask"};
    real_arg eps = {"epsilon", -INFINITY, INFINITY},
             eps_high = {"epsilon_high", -INFINITY, INFINITY};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&$O&O&", kwlist, to_f32_matrix,
                                     &logps, to_f32_vector_or_none, &old, to_f32_vector, &adv,
                                     to_f32_matrix, &mask, to_real, &eps, to_real, &eps_high))
        return NULL;
    array_arg *all[4] = {&logps, &adv, &mask, &old};
    const value_rule rules[4] = {LOGPROB, FINITE, MASK, LOGPROB};
    PyObject *result = NULL, *grad = NULL, *metrics = NULL;
    int B, T, status = CALIGN_OK;
    if (batch_dims(&B, &T, &logps) < 0 || check_operands(all, rules, 4, B) < 0) goto done;
    if (!(grad = new_f32(2, B, T))) goto done;
    rloo_metrics m;
    Py_BEGIN_ALLOW_THREADS
    status = rloo_loss(f32(grad), &m, ARG_DATA(const float, logps), f32_or_null(&old),
                       ARG_DATA(const float, adv), ARG_DATA(const float, mask), B, T, eps.value,
                       eps_high.value);
    Py_END_ALLOW_THREADS
    if (raise_status(status, "the RLOO loss or its gradient is not finite in float32 (a "
                     "sequence log-ratio too large?)") < 0)
        goto done;
    if (!(metrics = PyDict_New()) ||
        set_metric(metrics, "clip_ratio/low_mean", m.clip_low_mean) < 0 ||
        set_metric(metrics, "clip_ratio/low_min", m.clip_low_min) < 0 ||
        set_metric(metrics, "clip_ratio/high_mean", m.clip_high_mean) < 0 ||
        set_metric(metrics, "clip_ratio/high_max", m.clip_high_max) < 0 ||
        set_metric(metrics, "clip_ratio/region_mean", m.clip_region_mean) < 0)
        goto done;
    result = Py_BuildValue("(dOO)", m.loss, grad, metrics);
done:
    Py_XDECREF(grad);
    Py_XDECREF(metrics);
    release(all, 4);
    return result;
}

/* ---- PPO ----------------------------------------------------------------------------- */

static PyObject *py_ppo_shape_rewards(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"scores", "per_token_logps", "ref_per_token_logps",
                             "completion_mask", "score_index", "kl_coef", "kl_estimator", NULL};
    array_arg logps = {"per_token_logps"}, scores = {"scores"}, ref = {"ref_per_token_logps"},
              mask = {"completion_mask"}, index = {"score_index"};
    real_arg kl_coef = {"kl_coef", -INFINITY, INFINITY};
    PyObject *estimator_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&O&$O&O", kwlist, to_f32_vector,
                                     &scores, to_f32_matrix, &logps, to_f32_matrix, &ref,
                                     to_f32_matrix, &mask, to_int64_vector, &index, to_real,
                                     &kl_coef, &estimator_obj))
        return NULL;
    array_arg *all[4] = {&logps, &scores, &ref, &mask};
    const value_rule rules[4] = {LOGPROB, FINITE, LOGPROB, MASK};
    PyObject *result = NULL, *rewards = NULL, *kl = NULL;
    double *kl_sums = NULL;
    int B, T;
    int estimator = name_arg(estimator_obj, "kl_estimator", KL_ESTIMATOR_NAMES, N_KL_ESTIMATORS);
    if (estimator < 0 || batch_dims(&B, &T, &logps) < 0 || check_operands(all, rules, 4, B) < 0 ||
        check_rows(&index, B, "per_token_logps") < 0 ||
        narrow_to_int32(&index, 0, T, "a token position of per_token_logps") < 0)
        goto done;
    if (!(kl_sums = malloc(sizeof(double) * B))) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(rewards = new_f32(2, B, T))) goto done;
    Py_BEGIN_ALLOW_THREADS
    ppo_shape_rewards(f32(rewards), kl_sums, ARG_DATA(const float, scores),
                      ARG_DATA(const float, logps), ARG_DATA(const float, ref),
                      ARG_DATA(const float, mask), ARG_DATA(const int, index), B, T,
                      kl_coef.value, (kl_estimator)estimator);
    Py_END_ALLOW_THREADS
    if (!(kl = vector_copy(kl_sums, B, NPY_FLOAT64))) goto done;
    result = Py_BuildValue("(OO)", rewards, kl);
done:
    Py_XDECREF(rewards);
    Py_XDECREF(kl);
    free(kl_sums);
    arg_release(&index);
    release(all, 4);
    return result;
}

static PyObject *py_masked_whiten(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"values", "mask", "shift_mean", NULL};
    array_arg values = {"values"}, mask = {"mask"};
    int shift_mean = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$p", kwlist, to_f32_matrix, &values,
                                     to_f32_matrix, &mask, &shift_mean))
        return NULL;
    array_arg *all[2] = {&values, &mask};
    const value_rule rules[2] = {FINITE, MASK};
    PyObject *out = NULL;
    int B, T, status = CALIGN_OK;
    if (batch_dims(&B, &T, &values) < 0 || check_operands(all, rules, 2, B) < 0 ||
        !(out = new_f32(2, B, T)))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    status = masked_whiten(f32(out), ARG_DATA(const float, values), ARG_DATA(const float, mask),
                           (long)B * T, shift_mean);
    Py_END_ALLOW_THREADS
    if (raise_status(status, "mask must select at least two values to whiten (the variance "
                     "is unbiased)") < 0)
        Py_CLEAR(out);
done:
    release(all, 2);
    return out;
}

static PyObject *py_gae(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"rewards", "values", "mask", "gamma", "lam", NULL};
    array_arg rewards = {"rewards"}, values = {"values"}, mask = {"mask"};
    real_arg gamma = {"gamma", -INFINITY, INFINITY}, lam = {"lam", -INFINITY, INFINITY};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&$O&O&", kwlist, to_f32_matrix,
                                     &rewards, to_f32_matrix, &values, to_f32_matrix, &mask,
                                     to_real, &gamma, to_real, &lam))
        return NULL;
    array_arg *all[3] = {&rewards, &values, &mask};
    const value_rule rules[3] = {FINITE, FINITE, MASK};
    PyObject *result = NULL, *advantages = NULL, *returns = NULL;
    int B, T;
    if (batch_dims(&B, &T, &rewards) < 0 || check_operands(all, rules, 3, B) < 0 ||
        !(advantages = new_f32(2, B, T)) || !(returns = new_f32(2, B, T)))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    gae(f32(advantages), f32(returns), ARG_DATA(const float, rewards),
        ARG_DATA(const float, values), ARG_DATA(const float, mask), B, T, gamma.value, lam.value);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("(OO)", advantages, returns);
done:
    Py_XDECREF(advantages);
    Py_XDECREF(returns);
    release(all, 3);
    return result;
}

static PyObject *py_ppo_losses(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"per_token_logps", "old_per_token_logps", "values", "old_values",
                             "advantages", "returns", "mask", "value_mask", "cliprange",
                             "cliprange_value", "vf_coef", NULL};
    array_arg logps = {"per_token_logps"}, old = {"old_per_token_logps"}, values = {"values"},
              old_values = {"old_values"}, adv = {"advantages"}, returns = {"returns"},
              mask = {"mask"}, value_mask = {"value_mask"};
    real_arg clip = {"cliprange", -INFINITY, INFINITY},
             clip_v = {"cliprange_value", -INFINITY, INFINITY},
             vf_coef = {"vf_coef", -INFINITY, INFINITY};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&O&O&O&O&$O&O&O&", kwlist,
                                     to_f32_matrix, &logps, to_f32_matrix, &old, to_f32_matrix,
                                     &values, to_f32_matrix, &old_values, to_f32_matrix, &adv,
                                     to_f32_matrix, &returns, to_f32_matrix, &mask,
                                     to_f32_matrix, &value_mask, to_real, &clip, to_real,
                                     &clip_v, to_real, &vf_coef))
        return NULL;
    array_arg *all[8] = {&logps, &old, &values, &old_values, &adv, &returns, &mask, &value_mask};
    const value_rule rules[8] = {LOGPROB, LOGPROB, FINITE, FINITE, FINITE, FINITE, MASK, MASK};
    PyObject *result = NULL, *grad_logps = NULL, *grad_values = NULL, *metrics = NULL;
    int B, T, status = CALIGN_OK;
    if (batch_dims(&B, &T, &logps) < 0 || check_operands(all, rules, 8, B) < 0 ||
        !(grad_logps = new_f32(2, B, T)) || !(grad_values = new_f32(2, B, T)))
        goto done;
    ppo_metrics m;
    Py_BEGIN_ALLOW_THREADS
    status = ppo_losses(f32(grad_logps), f32(grad_values), &m, ARG_DATA(const float, logps),
                        ARG_DATA(const float, old), ARG_DATA(const float, values),
                        ARG_DATA(const float, old_values), ARG_DATA(const float, adv),
                        ARG_DATA(const float, returns), ARG_DATA(const float, mask),
                        ARG_DATA(const float, value_mask), B, T, clip.value, clip_v.value,
                        vf_coef.value);
    Py_END_ALLOW_THREADS
    if (status == CALIGN_EINVAL) {
        PyErr_SetString(PyExc_ValueError, "mask and value_mask must each select at least one "
                        "token (the losses are means over them)");
        goto done;
    }
    if (raise_status(status, "the PPO loss or its gradient is not finite in float32 (a log-"
                     "ratio per_token_logps - old_per_token_logps too large?)") < 0)
        goto done;
    if (!(metrics = PyDict_New()) || set_metric(metrics, "policy/approxkl_avg", m.approxkl) < 0 ||
        set_metric(metrics, "policy/clipfrac_avg", m.pg_clipfrac) < 0 ||
        set_metric(metrics, "loss/policy_avg", m.pg_loss) < 0 ||
        set_metric(metrics, "loss/value_avg", m.vf_loss) < 0 ||
        set_metric(metrics, "val/clipfrac_avg", m.vf_clipfrac) < 0 ||
        set_metric(metrics, "val/ratio", m.ratio_mean) < 0)
        goto done;
    result = Py_BuildValue("(dddOOO)", m.loss, m.pg_loss, m.vf_loss, grad_logps, grad_values,
                           metrics);
done:
    Py_XDECREF(grad_logps);
    Py_XDECREF(grad_values);
    Py_XDECREF(metrics);
    release(all, 8);
    return result;
}

static PyObject *py_token_constrained_loss(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"policy_logps", "ref_logps", "betas", "mask", "return_grad", NULL};
    array_arg logps = {"policy_logps"}, ref = {"ref_logps"}, betas = {"betas"}, mask = {"mask"};
    int return_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&|$p", kwlist, to_f32_matrix, &logps,
                                     to_f32_matrix, &ref, to_f32_matrix, &betas, to_f32_matrix,
                                     &mask, &return_grad))
        return NULL;
    array_arg *all[4] = {&logps, &ref, &betas, &mask};
    const value_rule rules[4] = {LOGPROB, LOGPROB, POSITIVE, MASK};
    PyObject *result = NULL, *losses = NULL, *grad = NULL;
    int B, T;
    if (batch_dims(&B, &T, &logps) < 0 || check_operands(all, rules, 4, B) < 0) goto done;
    npy_intp rows = B;
    if (!(losses = PyArray_ZEROS(1, &rows, NPY_FLOAT64, 0)) ||
        (return_grad && !(grad = new_f32(2, B, T))))
        goto done;
    double *out = (double *)PyArray_DATA((PyArrayObject *)losses);
    const float *lp = ARG_DATA(const float, logps), *rf = ARG_DATA(const float, ref),
                *bt = ARG_DATA(const float, betas), *mk = ARG_DATA(const float, mask);
    float *g = grad ? f32(grad) : NULL;
    Py_BEGIN_ALLOW_THREADS
    for (int b = 0; b < B; b++) {
        const long o = (long)b * T;
        out[b] = token_constrained_row(g ? g + o : NULL, lp + o, rf + o, bt + o, mk + o, T, 1.0);
    }
    Py_END_ALLOW_THREADS
    result = grad ? Py_BuildValue("(OO)", losses, grad) : Py_BuildValue("(OO)", losses, Py_None);
done:
    Py_XDECREF(losses);
    Py_XDECREF(grad);
    release(all, 4);
    return result;
}

int describe_rl_losses(PyObject *d) {
    return describe_names(d, "grpo_settings", GRPO_SETTING_KEYS,
                          (int)(sizeof GRPO_SETTING_KEYS / sizeof *GRPO_SETTING_KEYS) - 1) < 0 ||
                   describe_names(d, "grpo_loss_types", GRPO_LOSS_NAMES, GRPO_N_LOSS_TYPES) < 0 ||
                   describe_names(d, "importance_sampling_levels",
                                  IMPORTANCE_SAMPLING_LEVEL_NAMES,
                                  N_IMPORTANCE_SAMPLING_LEVELS) < 0 ||
                   describe_names(d, "scale_rewards_kinds", SCALE_REWARDS_NAMES,
                                  N_SCALE_REWARDS) < 0 ||
                   describe_names(d, "multi_objective_aggregations", REWARD_AGGREGATION_NAMES,
                                  N_REWARD_AGGREGATIONS) < 0 ||
                   describe_names(d, "kl_estimators", KL_ESTIMATOR_NAMES, N_KL_ESTIMATORS) < 0
               ? -1
               : 0;
}

PyMethodDef calign_rl_losses_methods[] = {
    KEYWORDS_METHOD("group_advantages", py_group_advantages,
                    "See calign.losses.group_advantages."),
    KEYWORDS_METHOD("rloo_advantages", py_rloo_advantages, "See calign.losses.rloo_advantages."),
    KEYWORDS_METHOD("grpo_loss", py_grpo_loss, "See calign.losses.grpo_loss."),
    KEYWORDS_METHOD("rloo_loss", py_rloo_loss, "See calign.losses.rloo_loss."),
    KEYWORDS_METHOD("ppo_shape_rewards", py_ppo_shape_rewards, "See calign.losses.shape_rewards."),
    KEYWORDS_METHOD("masked_whiten", py_masked_whiten, "See calign.losses.masked_whiten."),
    KEYWORDS_METHOD("gae", py_gae, "See calign.losses.gae."),
    KEYWORDS_METHOD("ppo_losses", py_ppo_losses, "See calign.losses.ppo_losses."),
    KEYWORDS_METHOD("token_constrained_loss", py_token_constrained_loss,
                    "See calign.losses.token_constrained_loss."),
    {NULL, NULL, 0, NULL},
};
