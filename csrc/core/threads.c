#include "core/threads.h"

#include <omp.h>

#include "core/gemm.h"

static int g_num_threads = 1;

void calign_threads_init(void) {
    /* omp_get_max_threads honours OMP_NUM_THREADS; without it, it is the
     * number of processors available to this process. */
    g_num_threads = omp_get_max_threads();
    if (g_num_threads < 1) g_num_threads = 1;
    blas_pin_single_thread();
}

int calign_num_threads(void) { return g_num_threads; }

int calign_set_num_threads(int n) {
    int previous = g_num_threads;
    g_num_threads = n < 1 ? 1 : n;
    return previous;
}
