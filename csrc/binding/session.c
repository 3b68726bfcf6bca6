/* Bindings of decoding sessions (csrc/model/session.h; calign.decoding.Session
 * uses these). A session is a capsule holding the C session and a reference
 * to its model's capsule (the model outlives its sessions). Every call that
 * changes a session claims its model, as the model's own calls do: one call
 * at a time per model, a second thread gets RuntimeError. */
#include "binding/common.h"
#include "binding/model_handle.h"

#include <stdlib.h>

#include "core/status.h"
#include "model/session.h"

#define SESSION_CAPSULE "calign.session"

typedef struct {
    decode_session *s;
    PyObject *model_capsule;
} session_handle;

static void session_destructor(PyObject *capsule) {
    session_handle *h = PyCapsule_GetPointer(capsule, SESSION_CAPSULE);
    if (h) {
        session_free(h->s);
        Py_XDECREF(h->model_capsule);
        free(h);
    }
}

static session_handle *session_of(PyObject *capsule) {
    return PyCapsule_GetPointer(capsule, SESSION_CAPSULE);
}

/* session_create(model, n_slots, capacity) -> a session capsule. */
static PyObject *py_session_create(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "n_slots", "capacity", NULL};
    PyObject *capsule;
    int_arg n_slots = {"n_slots", 1, INT32_MAX}, capacity = {"capacity", 1, INT32_MAX};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&", kwlist, &capsule, to_int, &n_slots,
                                     to_int, &capacity))
        return NULL;
    model_handle *m = model_of(capsule);
    if (!m || refuse_frozen(m, "a decoding session") < 0) return NULL;
    session_handle *h = calloc(1, sizeof(session_handle));
    if (!h) return PyErr_NoMemory();
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    h->s = session_create(m->m, (int)n_slots.value, (int)capacity.value, &status, err);
    Py_END_ALLOW_THREADS
    if (!h->s) {
        free(h);
        raise_status(status, err);
        return NULL;
    }
    h->model_capsule = Py_NewRef(capsule);
    PyObject *out = PyCapsule_New(h, SESSION_CAPSULE, session_destructor);
    if (!out) {
        session_free(h->s);
        Py_DECREF(h->model_capsule);
        free(h);
    }
    return out;
}

/* session_append(session, model, params, input_ids, run_starts, slots, *, adapters=None,
 * all_logits=False, return_hidden=False) -> logits float32 [T or runs, V], or
 * (logits, hidden [T, d]) with return_hidden. */
static PyObject *py_session_append(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"session", "model", "params", "input_ids", "run_starts", "slots",
                             "adapters", "all_logits", "return_hidden", NULL};
    PyObject *session_capsule, *capsule;
    array_arg params = {"params"}, tokens = {"input_ids"}, starts = {"run_starts"},
              slots = {"slots"}, adapters = {"adapters"};
    int all_logits = 0, return_hidden = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO&O&O&O&|$O&pp", kwlist, &session_capsule,
                                     &capsule, to_f32_vector, &params, to_int64_vector, &tokens,
                                     to_int64_vector, &starts, to_int64_vector, &slots,
                                     to_f32_vector_or_none, &adapters, &all_logits,
                                     &return_hidden))
        return NULL;
    PyObject *logits = NULL, *hidden = NULL, *result = NULL;
    model_handle *h = NULL;
    session_handle *sh = session_of(session_capsule);
    if (!sh) goto done;
    if (capsule != sh->model_capsule) {
        PyErr_SetString(PyExc_ValueError, "model is not the model the session was made for");
        goto done;
    }
    if (!(h = claim_model(capsule)) || check_param_vector(&params, h->m) < 0 ||
        check_adapter_vector(&adapters, h->m) < 0)
        goto done;
    const model_config *c = model_get_config(h->m);
    const npy_intp T = ARG_LEN(tokens), n_runs = ARG_LEN(slots);
    if (T < 1 || T > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "input_ids must hold 1 to 2**31 - 1 tokens");
        goto done;
    }
    if (n_runs < 1 || check_rows(&starts, n_runs + 1, "slots + 1") < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "slots is empty");
        goto done;
    }
    if (narrow_to_int32_described(&tokens, 0, c->vocab, "token id", " (vocab_size)") < 0 ||
        narrow_to_int32(&starts, 0, T + 1, "run starts are token indices") < 0 ||
        narrow_to_int32(&slots, 0, INT32_MAX, "slots are >= 0") < 0)
        goto done;
    const int32_t *st = ARG_DATA(const int32_t, starts);
    if (st[0] != 0 || st[n_runs] != T) {
        PyErr_SetString(PyExc_ValueError, "run_starts must begin at 0 and end at the token "
                                          "count");
        goto done;
    }
    npy_intp hidden_dims[2] = {T, c->d_model}, logit_dims[2] = {all_logits ? T : n_runs,
                                                                 c->vocab};
    if (!(hidden = PyArray_ZEROS(2, hidden_dims, NPY_FLOAT32, 0)) ||
        !(logits = PyArray_ZEROS(2, logit_dims, NPY_FLOAT32, 0)))
        goto done;
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = session_append(sh->s, h->m, ARG_DATA(const float, params),
                            adapters.array ? ARG_DATA(const float, adapters) : NULL,
                            ARG_DATA(const int32_t, tokens), st, ARG_DATA(const int32_t, slots),
                            (int)n_runs, all_logits, PyArray_DATA((PyArrayObject *)hidden),
                            PyArray_DATA((PyArrayObject *)logits), err);
    Py_END_ALLOW_THREADS
    if (raise_status(status, err) < 0) goto done;
    result = return_hidden ? Py_BuildValue("(OO)", logits, hidden) : Py_NewRef(logits);
done:
    release_model(h);
    Py_XDECREF(logits);
    Py_XDECREF(hidden);
    arg_release(&params);
    arg_release(&tokens);
    arg_release(&starts);
    arg_release(&slots);
    arg_release(&adapters);
    return result;
}

/* The binding of a session operation on two slot numbers (truncate, copy):
 * kwlist names the session and the two ints; the model is claimed around the call. */
static PyObject *session_op_on_ints(PyObject *args, PyObject *kwargs, char **kwlist,
                                    int (*op)(decode_session *, int, int, char *)) {
    PyObject *session_capsule;
    int_arg first = {kwlist[1], INT32_MIN, INT32_MAX}, second = {kwlist[2], INT32_MIN, INT32_MAX};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO&O&", kwlist, &session_capsule, to_int,
                                     &first, to_int, &second))
        return NULL;
    session_handle *sh = session_of(session_capsule);
    if (!sh) return NULL;
    model_handle *h = claim_model(sh->model_capsule);
    if (!h) return NULL;
    char err[CALIGN_ERR_LEN] = "";
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = op(sh->s, (int)first.value, (int)second.value, err);
    Py_END_ALLOW_THREADS
    release_model(h);
    return raise_status(status, err) < 0 ? NULL : Py_NewRef(Py_None);
}

/* session_truncate(session, slot, length) -> None. */
static PyObject *py_session_truncate(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"session", "slot", "length", NULL};
    return session_op_on_ints(args, kwargs, kwlist, session_truncate);
}

/* session_copy(session, source, target) -> None. */
static PyObject *py_session_copy(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"session", "source", "target", NULL};
    return session_op_on_ints(args, kwargs, kwlist, session_copy);
}

/* session_lengths(session) -> int64 [n_slots]: the tokens each slot holds. */
static PyObject *py_session_lengths(PyObject *self, PyObject *session_capsule) {
    session_handle *sh = session_of(session_capsule);
    if (!sh) return NULL;
    npy_intp n = session_slots(sh->s);
    PyObject *out = PyArray_ZEROS(1, &n, NPY_INT64, 0);
    if (!out) return NULL;
    int64_t *data = PyArray_DATA((PyArrayObject *)out);
    for (npy_intp i = 0; i < n; i++) data[i] = session_length(sh->s, (int)i);
    return out;
}

/* session_info(session) -> (n_slots, capacity, bytes of its own memory). */
static PyObject *py_session_info(PyObject *self, PyObject *session_capsule) {
    session_handle *sh = session_of(session_capsule);
    if (!sh) return NULL;
    return Py_BuildValue("(iin)", session_slots(sh->s), session_capacity(sh->s),
                         (Py_ssize_t)session_bytes(sh->s));
}

PyMethodDef calign_session_methods[] = {
    KEYWORDS_METHOD("session_create", py_session_create,
                    "A decoding session: a KV cache of n_slots x capacity for a model."),
    KEYWORDS_METHOD("session_append", py_session_append,
                    "Appends tokens to slots of a session; their logits."),
    KEYWORDS_METHOD("session_truncate", py_session_truncate, "Rewinds a slot to a length."),
    KEYWORDS_METHOD("session_copy", py_session_copy, "Copies a slot's cache into another."),
    {"session_lengths", py_session_lengths, METH_O, "Tokens each slot of a session holds."},
    {"session_info", py_session_info, METH_O, "(n_slots, capacity, bytes) of a session."},
    {NULL, NULL, 0, NULL},
};
