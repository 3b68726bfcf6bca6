/* calign._C: module definition, thread setting and build information. */
#define CALIGN_BINDING_MAIN
#include "binding/common.h"

#include <omp.h>

#include "core/gemm.h"
#include "core/threads.h"

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(calign_num_threads());
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "n must be an integer");
        return NULL;
    }
    if (n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "n must be between 1 and 4096, got %ld", n);
        return NULL;
    }
    return PyLong_FromLong(calign_set_num_threads((int)n));
}

static PyObject *py_build_info(PyObject *self, PyObject *unused) {
#if defined(CALIGN_BLAS_SCIPY_OPENBLAS)
    const char *source = "scipy-openblas32 (bundled)";
#else
    const char *source = "system OpenBLAS";
#endif
    return Py_BuildValue("{s:s,s:s,s:s,s:i,s:i}", "blas", source, "blas_config", blas_config(),
                         "blas_core", blas_core_name(), "openmp", _OPENMP, "cores",
                         omp_get_num_procs());
}

PyMethodDef calign_threads_methods[] = {
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads calign's kernels use."},
    {"set_num_threads", py_set_num_threads, METH_O,
     "Set the threads calign's kernels use; returns the previous value."},
    {"build_info", py_build_info, METH_NOARGS, "BLAS library, its kernel, OpenMP version, cores."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *const method_tables[] = {
    calign_threads_methods, calign_ops_methods, calign_losses_methods,
    calign_wordalign_methods, calign_model_methods, calign_optim_methods,
};

static struct PyModuleDef calign_module = {
    PyModuleDef_HEAD_INIT, "calign._C", "calign's C core.", -1, NULL,
};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    calign_threads_init();
    PyObject *m = PyModule_Create(&calign_module);
    if (!m) return NULL;
    for (size_t t = 0; t < sizeof method_tables / sizeof method_tables[0]; t++) {
        if (PyModule_AddFunctions(m, method_tables[t]) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
