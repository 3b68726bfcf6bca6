/* Bindings of the loss library (calign.losses). */
#include "binding/common.h"

PyMethodDef calign_losses_methods[] = {
    {NULL, NULL, 0, NULL},
};
