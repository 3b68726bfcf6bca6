/* calign._C: module definition, thread setting and build information. */
#define CALIGN_BINDING_MAIN
#include "binding/common.h"

#include <omp.h>
#include <stdlib.h>

#include "core/gemm.h"
#include "core/onednn.h"
#include "core/profile.h"
#include "core/simd.h"
#include "core/threads.h"

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused) {
    return PyLong_FromLong(calign_num_threads());
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"n", NULL};
    int_arg n = {"n", 1, 4096};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&", kwlist, to_int, &n)) return NULL;
    return PyLong_FromLong(calign_set_num_threads((int)n.value));
}

static PyObject *py_build_info(PyObject *self, PyObject *unused) {
#if defined(CALIGN_BLAS_SCIPY_OPENBLAS)
    const char *source = "scipy-openblas32 (bundled)";
#else
    const char *source = "system OpenBLAS";
#endif
    const int clones = CALIGN_HAS_SIMD_CLONES;
    /* what the CPU offers the run-time dispatch (the bfloat16 products a later
     * bf16=True path needs: AVX512-BF16 or AMX); empty off x86-64 */
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    PyObject *features = Py_BuildValue(
        "{s:N,s:N,s:N,s:N,s:N}", "avx2", PyBool_FromLong(__builtin_cpu_supports("avx2")),
        "fma", PyBool_FromLong(__builtin_cpu_supports("fma")),
        "avx512f", PyBool_FromLong(__builtin_cpu_supports("avx512f")),
        "avx512bf16", PyBool_FromLong(__builtin_cpu_supports("avx512bf16")),
        "amx_bf16", PyBool_FromLong(__builtin_cpu_supports("amx-bf16")));
#else
    PyObject *features = PyDict_New();
#endif
    if (!features) return NULL;
    return Py_BuildValue("{s:s,s:s,s:s,s:i,s:i,s:N,s:O,s:z}", "blas", source, "blas_config",
                         blas_config(), "blas_core", blas_core_name(), "openmp", _OPENMP, "cores",
                         omp_get_num_procs(), "cpu_features", features, "simd_clones",
                         clones ? Py_True : Py_False, "onednn", onednn_version());
}

/* sgemm_gflops(M, N, K, repeats, trans_b=True, bf16=False): the rate of calign's matrix
 * product on this machine with the current threads (with bf16, gemm_model's bfloat16
 * products on the current backend), for benchmarks to quote achieved FLOP/s against. */
static PyObject *py_sgemm_gflops(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"M", "N", "K", "repeats", "trans_b", "bf16", NULL};
    int_arg M_ = {"M", 1, 1 << 16}, N_ = {"N", 1, 1 << 16}, K_ = {"K", 1, 1 << 16},
            repeats_ = {"repeats", 1, 1 << 20};
    int trans_b = 1, bf16 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O&O&O&|pp", kwlist, to_int, &M_, to_int, &N_,
                                     to_int, &K_, to_int, &repeats_, &trans_b, &bf16))
        return NULL;
    const int M = (int)M_.value, N = (int)N_.value, K = (int)K_.value, repeats = (int)repeats_.value;
    float *a = calloc((size_t)M * K, sizeof(float)), *b = calloc((size_t)K * N, sizeof(float)),
          *c = calloc((size_t)M * N, sizeof(float));
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return PyErr_NoMemory();
    }
    for (long i = 0; i < (long)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)K * N; i++) b[i] = (float)(i % 5) * 0.1f;
    double seconds;
    Py_BEGIN_ALLOW_THREADS
    int ldb = trans_b ? K : N; /* B is [N, K] or [K, N] */
    gemm_model(bf16, false, trans_b, M, N, K, 1.0f, a, K, b, ldb, 0.0f, c, N); /* warm-up */
    double start = omp_get_wtime();
    for (int r = 0; r < repeats; r++)
        gemm_model(bf16, false, trans_b, M, N, K, 1.0f, a, K, b, ldb, 0.0f, c, N);
    seconds = omp_get_wtime() - start;
    Py_END_ALLOW_THREADS
    free(a);
    free(b);
    free(c);
    return PyFloat_FromDouble(2.0 * M * N * K * repeats / seconds / 1e9);
}

/* load_onednn(path) -> None, or why oneDNN could not be loaded from path
 * (only the first call loads; later ones repeat its outcome). */
static PyObject *py_load_onednn(PyObject *self, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    /* the GIL stays held: it serialises the one load (a dlopen, ~20 ms) */
    const char *failure = onednn_load(path);
    if (failure) return PyUnicode_FromString(failure);
    Py_RETURN_NONE;
}

/* set_bf16_units(on) -> whether the bfloat16 products now run as asked
 * (gemm.h, gemm_set_bf16_units). */
static PyObject *py_set_bf16_units(PyObject *self, PyObject *args) {
    int on;
    if (!PyArg_ParseTuple(args, "p", &on)) return NULL;
    return PyBool_FromLong(gemm_set_bf16_units(on));
}

static PyObject *py_bf16_units(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(gemm_bf16_units());
}

/* bf16_units_counts() -> (done, refused): bf16 products sent to the units since
 * start, and those oneDNN refused (in part), finished emulated. */
static PyObject *py_bf16_units_counts(PyObject *self, PyObject *unused) {
    long done, refused;
    gemm_bf16_units_counts(&done, &refused);
    return Py_BuildValue("(ll)", done, refused);
}

/* profile(enable=None, reset=False) -> {phase: seconds}; enable switches the
 * per-phase clocks on or off (see core/profile.h). */
static PyObject *py_profile(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"enable", "reset", NULL};
    PyObject *enable = Py_None;
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|Op", kwlist, &enable, &reset)) return NULL;
    if (enable != Py_None) profile_enable(PyObject_IsTrue(enable));
    double s[PHASE_COUNT];
    profile_read(s, reset);
    return Py_BuildValue("{s:d,s:d,s:d,s:d}", "matmul", s[PHASE_MATMUL], "attention",
                         s[PHASE_ATTENTION], "logprob", s[PHASE_LOGPROB], "optimizer",
                         s[PHASE_OPTIMIZER]);
}

/* describe() -> {name: value}: the names of enums and settings the C side
 * defines once (loss types, forward modes, the engine config's fields, ...);
 * the Python side builds its tuples from these. */
static PyObject *py_describe(PyObject *self, PyObject *unused) {
    PyObject *d = PyDict_New();
    if (d && (describe_losses(d) < 0 || describe_rl_losses(d) < 0 || describe_model(d) < 0 ||
              describe_wordalign(d) < 0))
        Py_CLEAR(d);
    return d;
}

PyMethodDef calign_threads_methods[] = {
    KEYWORDS_METHOD("profile", py_profile,
                    "Per-phase seconds of calign's kernels (enable=True to start counting)."),
    KEYWORDS_METHOD("sgemm_gflops", py_sgemm_gflops, "GFLOP/s of calign's sgemm, measured now."),
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Threads calign's kernels use."},
    KEYWORDS_METHOD("set_num_threads", py_set_num_threads,
                    "Set the threads calign's kernels use; returns the previous value."),
    {"build_info", py_build_info, METH_NOARGS, "BLAS library, its kernel, OpenMP version, cores."},
    {"load_onednn", py_load_onednn, METH_VARARGS,
     "Load oneDNN from a path: None, or why it could not be loaded."},
    {"set_bf16_units", py_set_bf16_units, METH_VARARGS,
     "Run bfloat16 products on the CPU's bfloat16 units (True) or emulated (False)."},
    {"bf16_units", py_bf16_units, METH_NOARGS,
     "Whether bfloat16 products run on the CPU's bfloat16 units."},
    {"bf16_units_counts", py_bf16_units_counts, METH_NOARGS,
     "(done, refused): bfloat16 products sent to the units since start."},
    {"describe", py_describe, METH_NOARGS,
     "Names the C side defines once: loss types, modes, "
     "engine config fields."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef *const method_tables[] = {
    calign_threads_methods, calign_ops_methods, calign_losses_methods,
    calign_rl_losses_methods, calign_wordalign_methods, calign_model_methods, calign_optim_methods,
    calign_session_methods,
    calign_textalign_methods,
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
