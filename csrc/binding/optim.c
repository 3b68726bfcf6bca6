/* Bindings of the optimizers (calign.optim). The buffers are writable
 * float32 vectors of equal length, updated in place. */
#include "binding/common.h"

#include <math.h>

#include "optim.h"

/* Every converted buffer has the length of the first. */
static int same_lengths(array_arg *const *buffers, int n) {
    for (int i = 1; i < n; i++)
        if (buffers[i]->array && check_rows(buffers[i], ARG_LEN(*buffers[0]), buffers[0]->name) < 0)
            return -1;
    return 0;
}

static PyObject *py_adamw_step(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"params", "grads", "exp_avg", "exp_avg_sq", "step", "lr", "beta1",
                             "beta2", "eps", "weight_decay", NULL};
    array_arg p = {"params"}, g = {"grads"}, m = {"exp_avg"}, v = {"exp_avg_sq"};
    int_arg step = {"step", 1, INT64_MAX};
    real_arg lr = {"lr", 0, INFINITY}, beta1 = {"beta1", 0, 1, 0, 1},
             beta2 = {"beta2", 0, 1, 0, 1}, eps = {"eps", 0, INFINITY, 1},
             weight_decay = {"weight_decay", 0, INFINITY};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&$O&O&O&O&O&O&", kwlist,
                                     to_f32_vector_out, &p, to_f32_vector_out, &g,
                                     to_f32_vector_out, &m, to_f32_vector_out, &v, to_int, &step,
                                     to_real32, &lr, to_real32, &beta1, to_real32, &beta2,
                                     to_real32, &eps, to_real32, &weight_decay))
        return NULL;
    adamw_settings s = {(float)lr.value, (float)beta1.value, (float)beta2.value,
                        (float)eps.value, (float)weight_decay.value, (long)step.value};
    PyObject *result = NULL;
    array_arg *buffers[] = {&p, &g, &m, &v};
    if (same_lengths(buffers, 4) == 0) {
        Py_BEGIN_ALLOW_THREADS
        adamw_step(ARG_DATA(float, p), ARG_DATA(const float, g), ARG_DATA(float, m),
                   ARG_DATA(float, v), ARG_LEN(p), &s);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    for (int i = 0; i < 4; i++) arg_release(buffers[i]);
    return result;
}

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"params", "grads", "momentum_buffer", "lr", "momentum", "dampening",
                             "weight_decay", "nesterov", "first_step", NULL};
    array_arg p = {"params"}, g = {"grads"}, b = {"momentum_buffer"};
    real_arg lr = {"lr", 0, INFINITY}, momentum = {"momentum", 0, INFINITY},
             dampening = {"dampening", 0, INFINITY}, weight_decay = {"weight_decay", 0, INFINITY};
    int nesterov, first_step;
    PyObject *b_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O$O&O&O&O&pp", kwlist, to_f32_vector_out,
                                     &p, to_f32_vector_out, &g, &b_obj, to_real32, &lr,
                                     to_real32, &momentum, to_real32, &dampening, to_real32,
                                     &weight_decay, &nesterov, &first_step))
        return NULL;
    sgd_settings s = {(float)lr.value, (float)momentum.value, (float)dampening.value,
                      (float)weight_decay.value, nesterov, first_step};
    PyObject *result = NULL;
    array_arg *buffers[] = {&p, &g, &b};
    if (b_obj != Py_None && !to_f32_vector_out(b_obj, &b)) goto done;
    if (s.momentum != 0.0f && !b.array) {
        PyErr_SetString(PyExc_ValueError, "momentum needs a momentum_buffer");
        goto done;
    }
    if (same_lengths(buffers, 3) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
    sgd_step(ARG_DATA(float, p), ARG_DATA(const float, g), b.array ? ARG_DATA(float, b) : NULL,
             ARG_LEN(p), &s);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < 3; i++) arg_release(buffers[i]);
    return result;
}

static PyObject *py_grad_norm(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"grads", NULL};
    array_arg g = {"grads"};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&", kwlist, to_f32_vector, &g)) return NULL;
    double norm;
    Py_BEGIN_ALLOW_THREADS
    norm = grad_global_norm(ARG_DATA(const float, g), ARG_LEN(g));
    Py_END_ALLOW_THREADS
    arg_release(&g);
    return PyFloat_FromDouble(norm);
}

static PyObject *py_scale(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"x", "factor", NULL};
    array_arg x = {"x"};
    real_arg factor = {"factor", -INFINITY, INFINITY};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&", kwlist, to_f32_vector_out, &x,
                                     to_real32, &factor))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    scale_in_place(ARG_DATA(float, x), ARG_LEN(x), (float)factor.value);
    Py_END_ALLOW_THREADS
    arg_release(&x);
    Py_RETURN_NONE;
}

static PyObject *py_ema_update(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"ema", "params", "decay", NULL};
    array_arg ema = {"ema"}, params = {"params"};
    real_arg decay = {"decay", 0, 1};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&$O&", kwlist, to_f32_vector_out, &ema,
                                     to_f32_vector, &params, to_real32, &decay))
        return NULL;
    PyObject *result = NULL;
    array_arg *buffers[] = {&ema, &params};
    if (same_lengths(buffers, 2) == 0) {
        Py_BEGIN_ALLOW_THREADS
        ema_update(ARG_DATA(float, ema), ARG_DATA(const float, params), ARG_LEN(ema),
                   (float)decay.value);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    arg_release(&ema);
    arg_release(&params);
    return result;
}

PyMethodDef calign_optim_methods[] = {
    KEYWORDS_METHOD("adamw_step", py_adamw_step, "One AdamW update in place."),
    KEYWORDS_METHOD("sgd_step", py_sgd_step, "One SGD update in place."),
    KEYWORDS_METHOD("grad_norm", py_grad_norm, "Global L2 norm of a float32 vector."),
    KEYWORDS_METHOD("scale_in_place", py_scale, "x *= factor."),
    KEYWORDS_METHOD("ema_update", py_ema_update, "ema += (1 - decay) (params - ema)."),
    {NULL, NULL, 0, NULL},
};
