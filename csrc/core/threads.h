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

#endif
