/* The thread policy of calign, in one place.
 *
 * calign runs ONE team of threads: OpenMP's. Every parallel loop asks for
 * calign_num_threads() threads explicitly (num_threads clause), so the setting
 * holds whichever Python thread calls in. OpenBLAS is pinned to a single
 * thread at start-up and large matrix products are split into per-thread
 * blocks inside an OpenMP region (see gemm.c). So the two thread pools never
 * run at once and never oversubscribe the cores.
 *
 * Default: the value of OMP_NUM_THREADS when it is set, else the number of
 * processors OpenMP sees. */
#ifndef CALIGN_THREADS_H
#define CALIGN_THREADS_H

void calign_threads_init(void);
int calign_num_threads(void);
/* n >= 1; returns the previous value. */
int calign_set_num_threads(int n);

/* The team for a loop whose per-thread scratch has room for scratch_threads
 * threads: the setting, never more than the scratch holds (the setting may
 * have been raised since the scratch was sized, even by another Python
 * thread while a kernel runs). */
static inline int calign_team(int scratch_threads) {
    int n = calign_num_threads();
    return n < scratch_threads ? n : scratch_threads;
}

#endif
