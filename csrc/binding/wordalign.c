/* Bindings of the word-alignment kernels (calign.wordalign). */
#include "binding/common.h"

PyMethodDef calign_wordalign_methods[] = {
    {NULL, NULL, 0, NULL},
};
