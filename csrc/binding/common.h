/* Shared by the binding files: the only C files that include Python.h.
 * They parse and check arguments, view NumPy arrays as raw pointers, release
 * the GIL around the C kernels and turn their status codes into exceptions. */
#ifndef CALIGN_BINDING_COMMON_H
#define CALIGN_BINDING_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL calign_ARRAY_API
#ifndef CALIGN_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "losses/losses.h"

/* Each returns a NEW reference, or NULL with an exception that names `name`. */

/* A float32, C-contiguous array of rank ndim, used in place (never copied:
 * the big operands must not be silently duplicated). */
PyArrayObject *arg_f32_array(PyObject *obj, const char *name, int ndim);
/* Any integer array of rank 1, as a contiguous int64 copy. */
PyArrayObject *arg_int64_vector(PyObject *obj, const char *name);
/* The same as int32 (values checked to fit). */
PyArrayObject *arg_int32_vector(PyObject *obj, const char *name);
/* Any real floating array (or sequence of floats) of rank 1 as a contiguous
 * float64 copy; with finite=1 NaN and infinity are rejected. */
PyArrayObject *arg_f64_vector(PyObject *obj, const char *name, int finite);
/* The same for rank 2. */
PyArrayObject *arg_f64_matrix(PyObject *obj, const char *name, int finite);

/* Sets exception `type` with a message formatted by C's printf rules
 * (PyErr_Format knows no %g); returns NULL. */
PyObject *raise_printf(PyObject *type, const char *format, ...);

/* Raises ValueError (returns -1) unless temperature is finite and > 0. */
int check_temperature(double temperature);

/* Raises ValueError unless the array has `expected` elements along axis 0. */
int check_length(PyArrayObject *arr, const char *name, npy_intp expected,
                 const char *expected_from);

/* calign.losses' DPO settings tuple (see losses.py, _dpo_settings) into p;
 * types and loss_weights hold DPO_MAX_LOSS_TYPES entries. -1 with an exception. */
#define DPO_MAX_LOSS_TYPES (4 * DPO_N_LOSS_TYPES)
int parse_dpo_settings(PyObject *settings, dpo_params *p, int *types, double *loss_weights);

/* The method tables of the binding files, joined in module.c. */
extern PyMethodDef calign_threads_methods[];
extern PyMethodDef calign_ops_methods[];
extern PyMethodDef calign_losses_methods[];
extern PyMethodDef calign_wordalign_methods[];
extern PyMethodDef calign_model_methods[];
extern PyMethodDef calign_optim_methods[];

#endif
