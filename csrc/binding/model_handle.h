/* The engine model behind a calign.Model's capsule, for the binding files
 * that run it (model.c defines these; session.c runs decoding sessions on
 * the same model). One call at a time per model: a call claims the model
 * first (check and claim are one step, under the GIL) and releases it on
 * every way out. */
#ifndef CALIGN_BINDING_MODEL_HANDLE_H
#define CALIGN_BINDING_MODEL_HANDLE_H

#include "binding/common.h"
#include "model/model.h"

typedef struct {
    model *m;
    int busy;
    PyObject *frozen; /* the array model_set_frozen_bf16 reads, kept alive (or NULL) */
} model_handle;

/* The model of a capsule, without claiming it (for what only reads its
 * immutable configuration and layout); NULL with an exception. */
model_handle *model_of(PyObject *capsule);
/* The model, claimed for this call; NULL with RuntimeError when a call on
 * another thread holds it. */
model_handle *claim_model(PyObject *capsule);
void release_model(model_handle *h); /* NULL: nothing */

/* -1 with ValueError when the model holds frozen bfloat16 weights (a
 * reference): `what` (a training forward, the backward, generation) needs
 * the float32 weights it does not keep. */
int refuse_frozen(const model_handle *h, const char *what);

/* params or grads: a float32 vector of exactly the model's parameter count. */
int check_param_vector(const array_arg *a, const model *m);
/* adapters or adapter_grads: None, or a float32 vector of the model's
 * adapter vector length. */
int check_adapter_vector(const array_arg *a, const model *m);

#endif
