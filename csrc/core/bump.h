/* A bump allocator over one buffer. With base == NULL it only counts: a
 * caller sizes a workspace by carving it once without memory, gets `used`
 * bytes, then carves the same pieces again from them. Every piece starts on
 * a 64-byte boundary (a cache line; what the SIMD loops want). */
#ifndef CALIGN_BUMP_H
#define CALIGN_BUMP_H

#include <stddef.h>

typedef struct {
    char *base;
    size_t used;
} bump;

static inline void *bump_take(bump *b, size_t bytes) {
    size_t at = (b->used + 63) & ~(size_t)63;
    b->used = at + bytes;
    return b->base ? b->base + at : NULL;
}

#endif
