/* Shared by the binding files: the only C files that include Python.h.
 *
 * A binding function has NumPy's shape: parse (PyArg_ParseTupleAndKeywords,
 * keyword names matching the Python wrapper's), convert (the converters
 * below), call the C layer with the GIL released, return. Logic that is not
 * conversion belongs in the C layer the call goes to. */
#ifndef CALIGN_BINDING_COMMON_H
#define CALIGN_BINDING_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define PY_ARRAY_UNIQUE_SYMBOL calign_ARRAY_API
#ifndef CALIGN_BINDING_MAIN
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include <stdint.h>

#include "losses/losses.h"

/* ---- array arguments ---------------------------------------------------------
 * An array_arg carries the argument's name (set before parsing: every error
 * names it) and, once converted, a NEW reference to the array C reads.
 * The to_* functions are converters for the "O&" format unit: on failure they
 * raise naming the argument; if a later unit fails, Python calls them again
 * to release what they took (Py_CLEANUP_SUPPORTED). After a successful parse,
 * release each with arg_release (safe on an unconverted one).
 *
 *     array_arg hidden = {"hidden"};
 *     PyArg_ParseTupleAndKeywords(args, kw, "O&", kwlist, to_f32_matrix, &hidden);
 */
typedef struct {
    const char *name;
    PyArrayObject *array; /* NULL until converted, or when an _or_none got None */
} array_arg;

void arg_release(array_arg *a);

/* float32, C-contiguous, of the rank named, used IN PLACE (never copied: the
 * big operands must not be silently duplicated). _out also requires it to
 * be writable. */
int to_f32_vector(PyObject *obj, void *arg);
int to_f32_vector_out(PyObject *obj, void *arg);
int to_f32_vector_or_none(PyObject *obj, void *arg);     /* None: .array stays NULL */
int to_f32_vector_out_or_none(PyObject *obj, void *arg);
int to_f32_matrix(PyObject *obj, void *arg);
int to_f32_matrix_or_none(PyObject *obj, void *arg);     /* None: .array stays NULL */
int to_f32_matrix_out_or_none(PyObject *obj, void *arg);
/* float64, C-contiguous, rank 1, used in place: only read (_view; corpus-
 * sized posteriors) or also written (_out; tables C updates). */
int to_f64_vector_view(PyObject *obj, void *arg);
int to_f64_vector_out(PyObject *obj, void *arg);

/* Any real array (or sequence of numbers) as a contiguous float64 COPY, every
 * value finite. */
int to_f64_vector(PyObject *obj, void *arg);
int to_f64_vector_or_none(PyObject *obj, void *arg);
int to_f64_matrix(PyObject *obj, void *arg);

/* Any integer array (or sequence of ints) of rank 1 as a contiguous int64
 * COPY. Values are checked in their own type before the cast: a uint64 above
 * 2**63 - 1 or a Python int beyond 64 bits is refused naming its index,
 * never wrapped. An empty sequence is an empty vector. */
int to_int64_vector(PyObject *obj, void *arg);
int to_int64_vector_or_none(PyObject *obj, void *arg);

/* A rank-1 bool array, contiguous (a copy only when needed). */
int to_bool_vector(PyObject *obj, void *arg);

/* The one place an int64 vector is narrowed: every value must lie in
 * [low, high) -- else ValueError "<name>[i] holds <v>, outside [low, high)
 * (<what>)" with the value as given -- then the array is replaced by an
 * int32 copy. The _described form words the error itself:
 * "<name>[i] holds <noun> <v>, outside [low, high)<why>". */
int narrow_to_int32(array_arg *a, int64_t low, int64_t high, const char *what);
int narrow_to_int32_described(array_arg *a, int64_t low, int64_t high, const char *noun,
                              const char *why);

/* The length of axis `axis` of a converted array as a C int, else ValueError
 * "<name> has n <what>, more than a C int holds". */
int dim_as_int(int *out, const array_arg *a, int axis, const char *what);

/* A new rank-1 array of NumPy type `type` holding a copy of n values at data. */
PyObject *vector_copy(const void *data, npy_intp n, int type);

/* Length along axis 0, and the data, of a converted argument. */
#define ARG_LEN(a) (PyArray_DIM((a).array, 0))
#define ARG_DATA(type, a) ((type *)PyArray_DATA((a).array))

/* ValueError unless a has `expected` rows; expected_from names where that
 * number comes from ("input_ids", "pairs"). */
int check_rows(const array_arg *a, npy_intp expected, const char *expected_from);

/* ---- scalar arguments -------------------------------------------------------
 * int_arg: a Python or NumPy integer (never a bool) in [low, high], into a C
 * int; errors name the argument. Set name, low and high before parsing. */
typedef struct {
    const char *name;
    long long low, high;
    long long value;
} int_arg;

int to_int(PyObject *obj, void *arg);

/* real_arg: a Python or NumPy real (never a bool), finite, within [low, high]
 * (open_low/open_high exclude the bound; +-INFINITY: unbounded), into a
 * double; errors name the argument. */
typedef struct {
    const char *name;
    double low, high;
    int open_low, open_high;
    double value;
} real_arg;

int to_real(PyObject *obj, void *arg);
/* The same for a value C keeps as a float: it must also be finite in float32. */
int to_real32(PyObject *obj, void *arg);

/* A seed: a Python or NumPy integer (never a bool) in [0, 2**64 - 1], into
 * an unsigned long long. */
int to_seed(PyObject *obj, void *arg);

/* ---- names ---------------------------------------------------------------------
 * Enums cross the language line by name: the C tables beside each enum are the
 * one list. */

/* The index of `given` among names[0..n); -1 with ValueError "<arg> must be
 * one of [...], got '<given>'". */
int name_index(const char *given, const char *arg, const char *const *names, int n);

/* A tuple of the names, or NULL with an exception. */
PyObject *names_tuple(const char *const *names, int n);

/* d[key] = names_tuple(names, n); -1 with an exception. */
int describe_names(PyObject *d, const char *key, const char *const *names, int n);

/* ---- errors ------------------------------------------------------------------- */

/* Sets exception `type` with a message formatted by C's printf rules
 * (PyErr_Format knows no %g); returns NULL. */
PyObject *raise_printf(PyObject *type, const char *format, ...);

/* Raises ValueError (returns -1) unless temperature is finite and > 0, in
 * float32 too (the kernels divide float logits by it). */
int check_temperature(double temperature);

/* A C layer's status (0 ok, CALIGN_ENOMEM, CALIGN_EINVAL, CALIGN_ENONFINITE,
 * CALIGN_ECALLBACK, see core/status.h) with its message as the matching
 * Python exception (a failed callback's: the exception it set, else a
 * RuntimeError); returns -1 when it raised. */
int raise_status(int status, const char *message);

/* calign.losses' DPO settings (see losses.py, dpo_settings) into p; types
 * and loss_weights hold DPO_MAX_LOSS_TYPES entries. -1 with an exception. */
#define DPO_MAX_LOSS_TYPES (4 * DPO_N_LOSS_TYPES)
int parse_dpo_settings(PyObject *settings, dpo_params *p, int *types, double *loss_weights);

/* What the values of a float32 array must be (the RL losses' operands). */
typedef enum { FINITE, LOGPROB, MASK, FINITE_OR_NAN, POSITIVE } value_rule;
/* ValueError (-1) naming a's first entry that breaks the rule. */
int check_values(const array_arg *a, value_rule rule);

/* calign.losses' GRPO settings (see losses.py, grpo_settings) into p; -1 with
 * an exception. */
int parse_grpo_settings(PyObject *settings, grpo_params *p);
/* ValueError (-1) when beta != 0 without reference log-probs, or dr_grpo
 * without max_completion_length (0). */
int check_grpo_batch(const grpo_params *p, int has_ref, long long max_completion_length);
/* d[...] = TRL's GRPO metrics (None where TRL logs none); -1 with an exception. */
int set_grpo_metrics(PyObject *d, const grpo_metrics *m);

/* ---- the method tables of the binding files, joined in module.c --------------- */
/* A method-table entry taking keywords. */
#define KEYWORDS_METHOD(name, function, doc) \
    {name, (PyCFunction)(void (*)(void))(function), METH_VARARGS | METH_KEYWORDS, doc}
extern PyMethodDef calign_threads_methods[];
extern PyMethodDef calign_ops_methods[];
extern PyMethodDef calign_losses_methods[];
extern PyMethodDef calign_rl_losses_methods[];
extern PyMethodDef calign_wordalign_methods[];
extern PyMethodDef calign_model_methods[];
extern PyMethodDef calign_optim_methods[];
extern PyMethodDef calign_session_methods[];
extern PyMethodDef calign_textalign_methods[];

/* A binding file adds what it declares to the dict calign._C.describe()
 * returns: names of enums and settings, defined once in the C headers. */
int describe_losses(PyObject *d);
int describe_rl_losses(PyObject *d);
int describe_model(PyObject *d);
int describe_wordalign(PyObject *d);

#endif
