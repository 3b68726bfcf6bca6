#include "binding/common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

static const char *dtype_name(PyArrayObject *arr) {
    return PyArray_DESCR(arr)->typeobj->tp_name;
}

PyArrayObject *arg_f32_array(PyObject *obj, const char *name, int ndim) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of float32, not %.200s",
                     name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError,
                     "%s must have dtype float32, not %s (convert it once with "
                     ".astype(numpy.float32); calign does not copy large operands silently)",
                     name, dtype_name(arr));
        return NULL;
    }
    if (PyArray_NDIM(arr) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got shape with %d dimensions",
                     name, ndim, PyArray_NDIM(arr));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be C-contiguous (use numpy.ascontiguousarray)", name);
        return NULL;
    }
    Py_INCREF(arr);
    return arr;
}

static PyArrayObject *int_vector(PyObject *obj, const char *name, int npy_type) {
    PyArrayObject *probe = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!probe) {
        PyErr_Format(PyExc_TypeError, "%s must be an array of integers", name);
        return NULL;
    }
    if (!PyArray_ISINTEGER(probe) && !(PyArray_NDIM(probe) == 1 && PyArray_SIZE(probe) == 0)) {
        PyErr_Format(PyExc_TypeError, "%s must have an integer dtype, not %s", name,
                     dtype_name(probe));
        Py_DECREF(probe);
        return NULL;
    }
    if (PyArray_NDIM(probe) != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be 1-dimensional, got %d dimensions", name,
                     PyArray_NDIM(probe));
        Py_DECREF(probe);
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROMANY(
        (PyObject *)probe, npy_type, 1, 1, NPY_ARRAY_CARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(probe);
    return out;
}

PyArrayObject *arg_int64_vector(PyObject *obj, const char *name) {
    return int_vector(obj, name, NPY_INT64);
}

PyArrayObject *arg_int32_vector(PyObject *obj, const char *name) {
    PyArrayObject *wide = int_vector(obj, name, NPY_INT64);
    if (!wide) return NULL;
    const int64_t *x = (const int64_t *)PyArray_DATA(wide);
    for (npy_intp i = 0; i < PyArray_SIZE(wide); i++) {
        if (x[i] < INT32_MIN || x[i] > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] = %lld does not fit in 32 bits", name,
                         (Py_ssize_t)i, (long long)x[i]);
            Py_DECREF(wide);
            return NULL;
        }
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROMANY((PyObject *)wide, NPY_INT32, 1, 1,
                                                          NPY_ARRAY_CARRAY | NPY_ARRAY_FORCECAST);
    Py_DECREF(wide);
    return out;
}

static PyArrayObject *f64_array(PyObject *obj, const char *name, int ndim, int finite) {
    PyArrayObject *probe = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!probe) {
        PyErr_Format(PyExc_TypeError, "%s must be an array of floats", name);
        return NULL;
    }
    int empty = PyArray_SIZE(probe) == 0;
    if (!PyArray_ISFLOAT(probe) && !empty) {
        PyErr_Format(PyExc_TypeError, "%s must have a floating-point dtype, not %s", name,
                     dtype_name(probe));
        Py_DECREF(probe);
        return NULL;
    }
    if (PyArray_NDIM(probe) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d dimensions", name,
                     ndim, PyArray_NDIM(probe));
        Py_DECREF(probe);
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROMANY(
        (PyObject *)probe, NPY_FLOAT64, ndim, ndim,
        NPY_ARRAY_CARRAY | NPY_ARRAY_ENSURECOPY | NPY_ARRAY_FORCECAST);
    Py_DECREF(probe);
    if (!out || !finite) return out;
    const double *x = (const double *)PyArray_DATA(out);
    for (npy_intp i = 0; i < PyArray_SIZE(out); i++) {
        if (!isfinite(x[i])) {
            PyErr_Format(PyExc_ValueError, "%s contains NaN or infinity (at flat index %zd)",
                         name, (Py_ssize_t)i);
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

PyArrayObject *arg_f64_vector(PyObject *obj, const char *name, int finite) {
    return f64_array(obj, name, 1, finite);
}

PyArrayObject *arg_f64_matrix(PyObject *obj, const char *name, int finite) {
    return f64_array(obj, name, 2, finite);
}

int check_length(PyArrayObject *arr, const char *name, npy_intp expected,
                 const char *expected_from) {
    if (PyArray_DIM(arr, 0) != expected) {
        PyErr_Format(PyExc_ValueError, "%s has length %zd but %s has length %zd", name,
                     (Py_ssize_t)PyArray_DIM(arr, 0), expected_from, (Py_ssize_t)expected);
        return -1;
    }
    return 0;
}

PyObject *raise_printf(PyObject *type, const char *format, ...) {
    char message[512];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    PyErr_SetString(type, message);
    return NULL;
}

int check_temperature(double temperature) {
    if (temperature > 0.0 && isfinite(temperature)) return 0;
    raise_printf(PyExc_ValueError, "temperature must be a finite number > 0, got %g", temperature);
    return -1;
}
