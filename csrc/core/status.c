#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

int calign_fail(char *err, int status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(err, CALIGN_ERR_LEN, format, args);
    va_end(args);
    return status;
}
