/* Argument converters of the binding (see common.h). */
#include "binding/common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/status.h"

static const char *dtype_name(PyArrayObject *arr) {
    return PyArray_DESCR(arr)->typeobj->tp_name;
}

void arg_release(array_arg *a) { Py_CLEAR(a->array); }

/* The common prologue of a converter: the cleanup call, and None for the
 * _or_none variants. Returns 1 when the converter is done (result in *ret). */
static int converter_prologue(PyObject *obj, array_arg *a, int none_ok, int *ret) {
    if (!obj) { /* parsing failed later: release */
        arg_release(a);
        *ret = 0;
        return 1;
    }
    if (none_ok && obj == Py_None) {
        a->array = NULL;
        *ret = Py_CLEANUP_SUPPORTED;
        return 1;
    }
    return 0;
}

/* ---- float32 operands, in place ------------------------------------------------ */

static int f32_in_place(PyObject *obj, array_arg *a, int ndim, int writable) {
    int ret;
    if (converter_prologue(obj, a, 0, &ret)) return ret;
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray of float32, not %.200s",
                     a->name, Py_TYPE(obj)->tp_name);
        return 0;
    }
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (PyArray_TYPE(arr) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError,
                     "%s must have dtype float32, not %s (convert it once with "
                     ".astype(numpy.float32); calign does not copy large operands silently)",
                     a->name, dtype_name(arr));
        return 0;
    }
    if (PyArray_NDIM(arr) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got shape with %d dimensions",
                     a->name, ndim, PyArray_NDIM(arr));
        return 0;
    }
    if (!PyArray_IS_C_CONTIGUOUS(arr)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be C-contiguous (use numpy.ascontiguousarray)", a->name);
        return 0;
    }
    if (writable && !PyArray_ISWRITEABLE(arr)) {
        PyErr_Format(PyExc_ValueError, "%s must be writable", a->name);
        return 0;
    }
    a->array = (PyArrayObject *)Py_NewRef(obj);
    return Py_CLEANUP_SUPPORTED;
}

int to_f32_vector(PyObject *obj, void *arg) { return f32_in_place(obj, arg, 1, 0); }
int to_f32_vector_out(PyObject *obj, void *arg) { return f32_in_place(obj, arg, 1, 1); }

int to_f32_vector_or_none(PyObject *obj, void *arg) {
    if (obj == Py_None) return Py_CLEANUP_SUPPORTED;
    return to_f32_vector(obj, arg);
}

int to_f32_vector_out_or_none(PyObject *obj, void *arg) {
    if (obj == Py_None) return Py_CLEANUP_SUPPORTED;
    return to_f32_vector_out(obj, arg);
}
int to_f32_matrix(PyObject *obj, void *arg) { return f32_in_place(obj, arg, 2, 0); }

int to_f32_matrix_out_or_none(PyObject *obj, void *arg) {
    if (obj == Py_None) return Py_CLEANUP_SUPPORTED;
    return f32_in_place(obj, arg, 2, 1);
}

int to_f32_matrix_or_none(PyObject *obj, void *arg) {
    if (obj == Py_None) return Py_CLEANUP_SUPPORTED;
    return to_f32_matrix(obj, arg);
}

static int f64_vector_in_place(PyObject *obj, array_arg *a, int writable) {
    int ret;
    if (converter_prologue(obj, a, 0, &ret)) return ret;
    PyArrayObject *arr = (PyArrayObject *)obj;
    if (!PyArray_Check(obj) || PyArray_TYPE(arr) != NPY_FLOAT64 || PyArray_NDIM(arr) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(arr) || (writable && !PyArray_ISWRITEABLE(arr))) {
        PyErr_Format(PyExc_TypeError, "%s must be a %scontiguous float64 vector", a->name,
                     writable ? "writable, " : "");
        return 0;
    }
    a->array = (PyArrayObject *)Py_NewRef(obj);
    return Py_CLEANUP_SUPPORTED;
}

int to_f64_vector_view(PyObject *obj, void *arg) { return f64_vector_in_place(obj, arg, 0); }
int to_f64_vector_out(PyObject *obj, void *arg) { return f64_vector_in_place(obj, arg, 1); }

/* ---- float64 copies ------------------------------------------------------------- */

static int f64_copy(PyObject *obj, array_arg *a, int ndim, int none_ok) {
    int ret;
    if (converter_prologue(obj, a, none_ok, &ret)) return ret;
    PyArrayObject *probe = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!probe) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be an array of floats", a->name);
        return 0;
    }
    int empty = PyArray_SIZE(probe) == 0;
    if (!PyArray_ISFLOAT(probe) && !empty) {
        PyErr_Format(PyExc_TypeError, "%s must have a floating-point dtype, not %s", a->name,
                     dtype_name(probe));
        Py_DECREF(probe);
        return 0;
    }
    if (PyArray_NDIM(probe) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-dimensional, got %d dimensions", a->name,
                     ndim, PyArray_NDIM(probe));
        Py_DECREF(probe);
        return 0;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_FROMANY(
        (PyObject *)probe, NPY_FLOAT64, ndim, ndim,
        NPY_ARRAY_CARRAY | NPY_ARRAY_ENSURECOPY | NPY_ARRAY_FORCECAST);
    Py_DECREF(probe);
    if (!out) return 0;
    const double *x = (const double *)PyArray_DATA(out);
    for (npy_intp i = 0; i < PyArray_SIZE(out); i++) {
        if (!isfinite(x[i])) {
            PyErr_Format(PyExc_ValueError, "%s contains NaN or infinity (at flat index %zd)",
                         a->name, (Py_ssize_t)i);
            Py_DECREF(out);
            return 0;
        }
    }
    a->array = out;
    return Py_CLEANUP_SUPPORTED;
}

int to_f64_vector(PyObject *obj, void *arg) { return f64_copy(obj, arg, 1, 0); }
int to_f64_vector_or_none(PyObject *obj, void *arg) { return f64_copy(obj, arg, 1, 1); }
int to_f64_matrix(PyObject *obj, void *arg) { return f64_copy(obj, arg, 2, 0); }

/* ---- integer copies --------------------------------------------------------------- */

/* A sequence NumPy could not type as integers (Python ints beyond 64 bits
 * give an object array, a mix beyond int64 a float one): each element must
 * be an integer that fits int64, else the error names it. */
static PyArrayObject *int64_from_elements(PyObject *obj, const char *name) {
    PyArrayObject *objects = (PyArrayObject *)PyArray_FROMANY(obj, NPY_OBJECT, 1, 1, 0);
    if (!objects) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a 1-dimensional array of integers", name);
        return NULL;
    }
    npy_intp n = PyArray_DIM(objects, 0);
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT64);
    if (!out) {
        Py_DECREF(objects);
        return NULL;
    }
    int64_t *x = PyArray_DATA(out);
    for (npy_intp i = 0; i < n; i++) {
        PyObject *item = *(PyObject **)PyArray_GETPTR1(objects, i);
        if (PyBool_Check(item) || !PyIndex_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s must hold integers, but %s[%zd] is %R", name, name,
                         (Py_ssize_t)i, item);
            goto fail;
        }
        PyObject *as_int = PyNumber_Index(item);
        if (!as_int) goto fail;
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(as_int, &overflow);
        if (overflow) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] = %S does not fit in 64 bits", name,
                         (Py_ssize_t)i, as_int);
            Py_DECREF(as_int);
            goto fail;
        }
        Py_DECREF(as_int);
        if (v == -1 && PyErr_Occurred()) goto fail;
        x[i] = v;
    }
    Py_DECREF(objects);
    return out;
fail:
    Py_DECREF(objects);
    Py_DECREF(out);
    return NULL;
}

static int int64_copy(PyObject *obj, array_arg *a, int none_ok) {
    int ret;
    if (converter_prologue(obj, a, none_ok, &ret)) return ret;
    PyArrayObject *probe = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!probe) {
        PyErr_Clear();
        if (!(a->array = int64_from_elements(obj, a->name))) return 0;
        return Py_CLEANUP_SUPPORTED;
    }
    if (PyArray_NDIM(probe) != 1) {
        PyErr_Format(PyExc_ValueError, "%s must be 1-dimensional, got %d dimensions", a->name,
                     PyArray_NDIM(probe));
        Py_DECREF(probe);
        return 0;
    }
    if (PyArray_SIZE(probe) == 0) {
        Py_DECREF(probe);
        npy_intp zero = 0;
        a->array = (PyArrayObject *)PyArray_SimpleNew(1, &zero, NPY_INT64);
        return a->array ? Py_CLEANUP_SUPPORTED : 0;
    }
    if (!PyArray_ISINTEGER(probe)) {
        int from_sequence = !PyArray_Check(obj) &&
                            (PyArray_TYPE(probe) == NPY_OBJECT || PyArray_ISFLOAT(probe));
        if (from_sequence) { /* Python ints NumPy could not type: name the bad one */
            Py_DECREF(probe);
            if (!(a->array = int64_from_elements(obj, a->name))) return 0;
            return Py_CLEANUP_SUPPORTED;
        }
        PyErr_Format(PyExc_TypeError, "%s must have an integer dtype, not %s", a->name,
                     dtype_name(probe));
        Py_DECREF(probe);
        return 0;
    }
    if (PyArray_TYPE(probe) == NPY_UINT64 || PyArray_TYPE(probe) == NPY_ULONGLONG) {
        /* the cast to int64 would wrap values >= 2**63: check them first */
        PyArrayObject *u = (PyArrayObject *)PyArray_FROMANY((PyObject *)probe, NPY_UINT64, 1, 1,
                                                           NPY_ARRAY_CARRAY);
        Py_DECREF(probe);
        if (!u) return 0;
        const uint64_t *x = PyArray_DATA(u);
        for (npy_intp i = 0; i < PyArray_DIM(u, 0); i++) {
            if (x[i] > (uint64_t)INT64_MAX) {
                PyErr_Format(PyExc_ValueError, "%s[%zd] = %llu does not fit in 64 signed bits",
                             a->name, (Py_ssize_t)i, (unsigned long long)x[i]);
                Py_DECREF(u);
                return 0;
            }
        }
        probe = u;
    }
    a->array = (PyArrayObject *)PyArray_FROMANY((PyObject *)probe, NPY_INT64, 1, 1,
                                                NPY_ARRAY_CARRAY | NPY_ARRAY_ENSURECOPY |
                                                    NPY_ARRAY_FORCECAST);
    Py_DECREF(probe);
    return a->array ? Py_CLEANUP_SUPPORTED : 0;
}

int to_int64_vector(PyObject *obj, void *arg) { return int64_copy(obj, arg, 0); }
int to_int64_vector_or_none(PyObject *obj, void *arg) { return int64_copy(obj, arg, 1); }

int narrow_to_int32_described(array_arg *a, int64_t low, int64_t high, const char *noun,
                              const char *why) {
    const int64_t *x = ARG_DATA(const int64_t, *a);
    for (npy_intp i = 0; i < ARG_LEN(*a); i++) {
        if (x[i] < low || x[i] >= high) {
            PyErr_Format(PyExc_ValueError, "%s[%zd] holds %s%s%lld, outside [%lld, %lld)%s",
                         a->name, (Py_ssize_t)i, noun, *noun ? " " : "", (long long)x[i],
                         (long long)low, (long long)high, why);
            return -1;
        }
    }
    if (low < INT32_MIN || high - 1 > INT32_MAX) { /* a caller's bug, not the user's */
        PyErr_Format(PyExc_SystemError, "narrow_to_int32(%s): bounds beyond int32", a->name);
        return -1;
    }
    PyArrayObject *narrow = (PyArrayObject *)PyArray_FROMANY(
        (PyObject *)a->array, NPY_INT32, 1, 1, NPY_ARRAY_CARRAY | NPY_ARRAY_FORCECAST);
    if (!narrow) return -1;
    Py_SETREF(a->array, narrow);
    return 0;
}

int narrow_to_int32(array_arg *a, int64_t low, int64_t high, const char *what) {
    char why[200];
    snprintf(why, sizeof why, " (%s)", what);
    return narrow_to_int32_described(a, low, high, "", why);
}

int to_bool_vector(PyObject *obj, void *arg) {
    array_arg *a = arg;
    int ret;
    if (converter_prologue(obj, a, 0, &ret)) return ret;
    PyArrayObject *probe = (PyArrayObject *)PyArray_FROMANY(obj, NPY_NOTYPE, 0, 0, 0);
    if (!probe || PyArray_TYPE(probe) != NPY_BOOL || PyArray_NDIM(probe) != 1) {
        Py_XDECREF(probe);
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a 1-dimensional array of bools", a->name);
        return 0;
    }
    a->array = (PyArrayObject *)PyArray_FROMANY((PyObject *)probe, NPY_BOOL, 1, 1,
                                                NPY_ARRAY_CARRAY);
    Py_DECREF(probe);
    return a->array ? Py_CLEANUP_SUPPORTED : 0;
}

int dim_as_int(int *out, const array_arg *a, int axis, const char *what) {
    npy_intp n = PyArray_DIM(a->array, axis);
    if (n > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s has %zd %s, more than a C int holds (%d)", a->name,
                     (Py_ssize_t)n, what, INT_MAX);
        return -1;
    }
    *out = (int)n;
    return 0;
}

PyObject *vector_copy(const void *data, npy_intp n, int type) {
    PyObject *out = PyArray_SimpleNew(1, &n, type);
    if (out) memcpy(PyArray_DATA((PyArrayObject *)out), data, PyArray_NBYTES((PyArrayObject *)out));
    return out;
}

int check_rows(const array_arg *a, npy_intp expected, const char *expected_from) {
    if (ARG_LEN(*a) != expected) {
        PyErr_Format(PyExc_ValueError, "%s has length %zd but %s has length %zd", a->name,
                     (Py_ssize_t)ARG_LEN(*a), expected_from, (Py_ssize_t)expected);
        return -1;
    }
    return 0;
}

/* ---- scalars ---------------------------------------------------------------------- */

int to_int(PyObject *obj, void *arg) {
    int_arg *a = arg;
    if (!obj) return 0;
    if (PyBool_Check(obj) || !PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an integer, not %.200s", a->name,
                     Py_TYPE(obj)->tp_name);
        return 0;
    }
    PyObject *as_int = PyNumber_Index(obj);
    if (!as_int) return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(as_int, &overflow);
    if ((v == -1 && PyErr_Occurred()) || overflow || v < a->low || v > a->high) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be an integer in [%lld, %lld], got %S", a->name,
                     a->low, a->high, as_int);
        Py_DECREF(as_int);
        return 0;
    }
    Py_DECREF(as_int);
    a->value = v;
    return 1;
}

int to_real(PyObject *obj, void *arg) {
    real_arg *a = arg;
    if (!obj) return 0;
    if (PyBool_Check(obj) || PyArray_IsScalar(obj, Bool) || PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a real number, not %.200s", a->name,
                     Py_TYPE(obj)->tp_name);
        return 0;
    }
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        int overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
        PyErr_Clear();
        if (!overflow) {
            PyErr_Format(PyExc_TypeError, "%s must be a real number, not %.200s", a->name,
                         Py_TYPE(obj)->tp_name);
            return 0;
        }
        v = INFINITY; /* an integer beyond a double's range: not finite */
    }
    if (isfinite(v) && (a->open_low ? v > a->low : v >= a->low) &&
        (a->open_high ? v < a->high : v <= a->high)) {
        a->value = v;
        return 1;
    }
    char bounds[96] = "";
    if (isfinite(a->low) && isfinite(a->high))
        snprintf(bounds, sizeof bounds, " in %c%g, %g%c", a->open_low ? '(' : '[', a->low,
                 a->high, a->open_high ? ')' : ']');
    else if (isfinite(a->low))
        snprintf(bounds, sizeof bounds, " %s %g", a->open_low ? ">" : ">=", a->low);
    else if (isfinite(a->high))
        snprintf(bounds, sizeof bounds, " %s %g", a->open_high ? "<" : "<=", a->high);
    raise_printf(PyExc_ValueError, "%s must be a finite number%s, got %g", a->name, bounds, v);
    return 0;
}

int to_real32(PyObject *obj, void *arg) {
    real_arg *a = arg;
    if (!to_real(obj, arg)) return 0;
    if (isfinite((float)a->value) && ((float)a->value != 0.0f || a->value == 0.0)) return 1;
    raise_printf(PyExc_ValueError, "%s = %g does not fit float32 (C computes with it as a float)",
                 a->name, a->value);
    return 0;
}

int to_seed(PyObject *obj, void *arg) {
    unsigned long long *seed = arg;
    if (!obj) return 0;
    PyObject *as_int = PyBool_Check(obj) || !PyIndex_Check(obj) ? NULL : PyNumber_Index(obj);
    if (as_int) {
        *seed = PyLong_AsUnsignedLongLong(as_int);
        Py_DECREF(as_int);
        if (!PyErr_Occurred()) return 1;
    }
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "seed must be an integer in [0, 2**64 - 1], got %R", obj);
    return 0;
}

/* ---- names ------------------------------------------------------------------------ */

int name_index(const char *given, const char *arg, const char *const *names, int n) {
    for (int i = 0; given && i < n; i++)
        if (strcmp(given, names[i]) == 0) return i;
    PyObject *choices = PyList_New(n);
    for (int i = 0; choices && i < n; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) Py_CLEAR(choices);
        else PyList_SET_ITEM(choices, i, s);
    }
    if (choices)
        PyErr_Format(PyExc_ValueError, "%s must be one of %R, got '%s'", arg, choices,
                     given ? given : "(not a string)");
    Py_XDECREF(choices);
    return -1;
}

PyObject *names_tuple(const char *const *names, int n) {
    PyObject *tuple = PyTuple_New(n);
    for (int i = 0; tuple && i < n; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (!name) Py_CLEAR(tuple);
        else PyTuple_SET_ITEM(tuple, i, name);
    }
    return tuple;
}

int describe_names(PyObject *d, const char *key, const char *const *names, int n) {
    PyObject *tuple = names_tuple(names, n);
    int status = tuple ? PyDict_SetItemString(d, key, tuple) : -1;
    Py_XDECREF(tuple);
    return status;
}

/* ---- errors ----------------------------------------------------------------------- */

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
    if (temperature > 0.0 && isfinite((float)temperature) && (float)temperature > 0.0f) return 0;
    raise_printf(PyExc_ValueError, "temperature must be a finite number > 0, got %g", temperature);
    return -1;
}

int raise_status(int status, const char *message) {
    switch (status) {
    case CALIGN_OK:
        return 0;
    case CALIGN_ENOMEM:
        if (message && *message)
            PyErr_SetString(PyExc_MemoryError, message);
        else
            PyErr_NoMemory();
        return -1;
    case CALIGN_ENONFINITE:
        PyErr_SetString(PyExc_FloatingPointError, message && *message ? message :
                        "a value became NaN or infinite");
        return -1;
    case CALIGN_ECALLBACK:
        if (PyErr_Occurred()) return -1; /* the callback's own exception says why */
        PyErr_SetString(PyExc_RuntimeError, message && *message ? message : "a callback failed");
        return -1;
    default:
        PyErr_SetString(PyExc_ValueError, message && *message ? message : "invalid input");
        return -1;
    }
}
