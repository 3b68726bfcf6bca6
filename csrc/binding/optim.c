/* Bindings of the optimizers (calign.optim). The buffers are float32 vectors
 * of equal length, updated in place. */
#include "binding/common.h"

#include "optim.h"

/* A writable float32 vector of length n (n < 0: any length, returned in *n). */
static PyArrayObject *buffer(PyObject *obj, const char *name, npy_intp *n) {
    PyArrayObject *arr = arg_f32_array(obj, name, 1);
    if (!arr) return NULL;
    if (!PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "%s must be writable", name);
        Py_DECREF(arr);
        return NULL;
    }
    if (*n < 0) {
        *n = PyArray_DIM(arr, 0);
    } else if (PyArray_DIM(arr, 0) != *n) {
        PyErr_Format(PyExc_ValueError, "%s has %zd floats, expected %zd", name,
                     (Py_ssize_t)PyArray_DIM(arr, 0), (Py_ssize_t)*n);
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *py_adamw_step(PyObject *self, PyObject *args) {
    PyObject *p_obj, *g_obj, *m_obj, *v_obj;
    adamw_settings s;
    if (!PyArg_ParseTuple(args, "OOOOlfffff", &p_obj, &g_obj, &m_obj, &v_obj, &s.step, &s.lr,
                          &s.beta1, &s.beta2, &s.eps, &s.weight_decay))
        return NULL;
    if (s.step < 1) {
        PyErr_SetString(PyExc_ValueError, "step must be >= 1");
        return NULL;
    }
    npy_intp n = -1;
    PyArrayObject *p = NULL, *g = NULL, *m = NULL, *v = NULL;
    PyObject *result = NULL;
    if ((p = buffer(p_obj, "params", &n)) && (g = buffer(g_obj, "grads", &n)) &&
        (m = buffer(m_obj, "exp_avg", &n)) && (v = buffer(v_obj, "exp_avg_sq", &n))) {
        Py_BEGIN_ALLOW_THREADS
        adamw_step(PyArray_DATA(p), PyArray_DATA(g), PyArray_DATA(m), PyArray_DATA(v), n, &s);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    Py_XDECREF(p);
    Py_XDECREF(g);
    Py_XDECREF(m);
    Py_XDECREF(v);
    return result;
}

static PyObject *py_sgd_step(PyObject *self, PyObject *args) {
    PyObject *p_obj, *g_obj, *b_obj;
    sgd_settings s;
    if (!PyArg_ParseTuple(args, "OOOffffpp", &p_obj, &g_obj, &b_obj, &s.lr, &s.momentum,
                          &s.dampening, &s.weight_decay, &s.nesterov, &s.first_step))
        return NULL;
    npy_intp n = -1;
    PyArrayObject *p = NULL, *g = NULL, *b = NULL;
    PyObject *result = NULL;
    if ((p = buffer(p_obj, "params", &n)) && (g = buffer(g_obj, "grads", &n)) &&
        (b_obj == Py_None || (b = buffer(b_obj, "momentum_buffer", &n)))) {
        if (s.momentum != 0.0f && !b) {
            PyErr_SetString(PyExc_ValueError, "momentum needs a momentum_buffer");
        } else {
            Py_BEGIN_ALLOW_THREADS
            sgd_step(PyArray_DATA(p), PyArray_DATA(g), b ? PyArray_DATA(b) : NULL, n, &s);
            Py_END_ALLOW_THREADS
            result = Py_NewRef(Py_None);
        }
    }
    Py_XDECREF(p);
    Py_XDECREF(g);
    Py_XDECREF(b);
    return result;
}

static PyObject *py_grad_norm(PyObject *self, PyObject *arg) {
    npy_intp n = -1;
    PyArrayObject *g = buffer(arg, "grads", &n);
    if (!g) return NULL;
    double norm;
    Py_BEGIN_ALLOW_THREADS
    norm = grad_global_norm(PyArray_DATA(g), n);
    Py_END_ALLOW_THREADS
    Py_DECREF(g);
    return PyFloat_FromDouble(norm);
}

static PyObject *py_scale(PyObject *self, PyObject *args) {
    PyObject *x_obj;
    float factor;
    if (!PyArg_ParseTuple(args, "Of", &x_obj, &factor)) return NULL;
    npy_intp n = -1;
    PyArrayObject *x = buffer(x_obj, "x", &n);
    if (!x) return NULL;
    Py_BEGIN_ALLOW_THREADS
    scale_in_place(PyArray_DATA(x), n, factor);
    Py_END_ALLOW_THREADS
    Py_DECREF(x);
    Py_RETURN_NONE;
}

PyMethodDef calign_optim_methods[] = {
    {"adamw_step", py_adamw_step, METH_VARARGS, "One AdamW update in place."},
    {"sgd_step", py_sgd_step, METH_VARARGS, "One SGD update in place."},
    {"grad_norm", py_grad_norm, METH_O, "Global L2 norm of a float32 vector."},
    {"scale_in_place", py_scale, METH_VARARGS, "x *= factor."},
    {NULL, NULL, 0, NULL},
};
