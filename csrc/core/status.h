/* Status codes of the C layers. A function that can fail returns one of
 * these and, where it has more to say, writes a message into a caller's
 * buffer of CALIGN_ERR_LEN bytes; the binding turns them into exceptions
 * (MemoryError, ValueError, FloatingPointError; a failed callback's own). */
#ifndef CALIGN_STATUS_H
#define CALIGN_STATUS_H

enum {
    CALIGN_OK = 0,
    CALIGN_ENOMEM = -1,     /* memory could not be had */
    CALIGN_EINVAL = -2,     /* an input the caller should have refused */
    CALIGN_ENONFINITE = -3, /* a value became NaN or infinite */
    CALIGN_ECALLBACK = -4,  /* a function the caller supplied failed (the binding's have set
                               a Python exception) */
};

#define CALIGN_ERR_LEN 256

/* Writes a message (printf rules) into err (CALIGN_ERR_LEN bytes); returns status. */
int calign_fail(char *err, int status, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

#endif
