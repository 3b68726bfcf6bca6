/* Optional wall-clock accounting of where a step's time goes, for the
 * benchmarks' per-phase profile. Off by default (each probe is then one
 * branch). Every phase but matmul excludes the top-level matrix products made
 * inside it, which count as matmul; only calls made outside OpenMP parallel
 * regions are timed (attention's per-head products count as attention). */
#ifndef CALIGN_PROFILE_H
#define CALIGN_PROFILE_H

typedef enum {
    PHASE_MATMUL,    /* top-level sgemm calls: linear layers, lm_head */
    PHASE_ATTENTION, /* attention forward and backward */
    PHASE_LOGPROB,   /* the fused log-prob kernel besides its products */
    PHASE_OPTIMIZER, /* AdamW/SGD updates, gradient norm, clipping */
    PHASE_COUNT
} profile_phase;

typedef struct {
    double start, matmul_before;
} profile_mark;

void profile_enable(int on);
/* Seconds per phase since the last reset. */
void profile_read(double seconds[PHASE_COUNT], int reset);

profile_mark profile_begin(void);
void profile_end(profile_phase phase, profile_mark mark);

#endif
