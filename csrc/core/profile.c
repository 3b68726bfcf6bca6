#include "core/profile.h"

#include <omp.h>
#include <string.h>

static int g_enabled = 0;
static double g_seconds[PHASE_COUNT];

void profile_enable(int on) { g_enabled = on; }

void profile_read(double seconds[PHASE_COUNT], int reset) {
    memcpy(seconds, g_seconds, sizeof g_seconds);
    if (reset) memset(g_seconds, 0, sizeof g_seconds);
}

profile_mark profile_begin(void) {
    profile_mark mark = {0.0, 0.0};
    if (g_enabled && !omp_in_parallel()) {
        mark.start = omp_get_wtime();
        mark.matmul_before = g_seconds[PHASE_MATMUL];
    }
    return mark;
}

void profile_end(profile_phase phase, profile_mark mark) {
    if (!g_enabled || mark.start == 0.0 || omp_in_parallel()) return;
    double elapsed = omp_get_wtime() - mark.start;
    if (phase != PHASE_MATMUL) elapsed -= g_seconds[PHASE_MATMUL] - mark.matmul_before;
    g_seconds[phase] += elapsed;
}
