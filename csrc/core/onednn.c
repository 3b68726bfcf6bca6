/* oneDNN's matmul primitive for bfloat16 products (onednn.h).
 *
 * Only the handful of oneDNN's C functions used here are declared, with the
 * types and enum values of its stable 3.x ABI (include/oneapi/dnnl/dnnl.h,
 * dnnl_types.h, dnnl_common_types.h of oneDNN 3.2); no oneDNN header is
 * needed at build time. */
#include "core/onednn.h"

#include <dlfcn.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "core/threads.h"

/* ---- the slice of oneDNN's C ABI in use -------------------------------- */
typedef int dnnl_status;       /* dnnl_success == 0 */
typedef void *dnnl_handle;     /* engine, stream, memory (desc), primitive (desc), attr, post-ops */
typedef int64_t dnnl_dims[12]; /* DNNL_MAX_NDIMS */
typedef struct {
    int arg;
    dnnl_handle memory;
} dnnl_exec_arg;
typedef struct {
    int major, minor, patch;
    const char *hash;
    unsigned cpu_runtime, gpu_runtime;
} dnnl_version_info;

enum {
    DNNL_CPU_ENGINE = 1,          /* dnnl_cpu */
    DNNL_STREAM_IN_ORDER = 1,     /* dnnl_stream_default_flags */
    DNNL_BF16 = 2,                /* dnnl_bf16 */
    DNNL_F32 = 3,                 /* dnnl_f32 */
    DNNL_ELTWISE_LINEAR = 0x26,   /* dnnl_eltwise_linear: alpha x + beta */
    DNNL_QUERY_IMPL_INFO_STR = 8, /* dnnl_query_impl_info_str */
    DNNL_ARG_SRC = 1,
    DNNL_ARG_DST = 17,
    DNNL_ARG_WEIGHTS = 33,
};

static struct {
    bool loaded;
    const char *failure;
    char version_text[32];
    dnnl_handle engine;
    dnnl_status (*engine_create)(dnnl_handle *, int, size_t);
    dnnl_status (*stream_create)(dnnl_handle *, dnnl_handle, unsigned);
    dnnl_status (*stream_destroy)(dnnl_handle);
    dnnl_status (*md_create_with_strides)(dnnl_handle *, int, const dnnl_dims, int,
                                          const dnnl_dims);
    dnnl_status (*md_destroy)(dnnl_handle);
    dnnl_status (*memory_create)(dnnl_handle *, dnnl_handle, dnnl_handle, void *);
    dnnl_status (*memory_destroy)(dnnl_handle);
    dnnl_status (*attr_create)(dnnl_handle *);
    dnnl_status (*attr_destroy)(dnnl_handle);
    dnnl_status (*attr_set_post_ops)(dnnl_handle, dnnl_handle);
    dnnl_status (*post_ops_create)(dnnl_handle *);
    dnnl_status (*post_ops_destroy)(dnnl_handle);
    dnnl_status (*post_ops_append_sum)(dnnl_handle, float, int32_t, int);
    dnnl_status (*post_ops_append_eltwise)(dnnl_handle, int, float, float);
    dnnl_status (*matmul_pd_create)(dnnl_handle *, dnnl_handle, dnnl_handle, dnnl_handle,
                                    dnnl_handle, dnnl_handle, dnnl_handle);
    dnnl_status (*pd_destroy)(dnnl_handle);
    dnnl_status (*pd_query)(dnnl_handle, int, int, void *);
    dnnl_status (*primitive_create)(dnnl_handle *, dnnl_handle);
    dnnl_status (*primitive_destroy)(dnnl_handle);
    dnnl_status (*primitive_execute)(dnnl_handle, dnnl_handle, int, const dnnl_exec_arg *);
    dnnl_status (*stream_wait)(dnnl_handle);
    const dnnl_version_info *(*version)(void);
} dnnl;

bool cpu_has_bf16_units(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
    return false;
#endif
}

const char *onednn_load(const char *path) {
    static bool tried;
    if (tried) return dnnl.failure;
    tried = true;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        static char why[256];
        snprintf(why, sizeof why, "%s", dlerror());
        return dnnl.failure = why;
    }
    /* every symbol, or none: a library missing one is not used at all */
#define BIND(field, name)                                                                          \
    if (!(*(void **)&dnnl.field = dlsym(lib, name))) {                                             \
        dlclose(lib);                                                                              \
        return dnnl.failure = "missing " name;                                                     \
    }
    BIND(engine_create, "dnnl_engine_create")
    BIND(stream_create, "dnnl_stream_create")
    BIND(stream_destroy, "dnnl_stream_destroy")
    BIND(md_create_with_strides, "dnnl_memory_desc_create_with_strides")
    BIND(md_destroy, "dnnl_memory_desc_destroy")
    BIND(memory_create, "dnnl_memory_create")
    BIND(memory_destroy, "dnnl_memory_destroy")
    BIND(attr_create, "dnnl_primitive_attr_create")
    BIND(attr_destroy, "dnnl_primitive_attr_destroy")
    BIND(attr_set_post_ops, "dnnl_primitive_attr_set_post_ops")
    BIND(post_ops_create, "dnnl_post_ops_create")
    BIND(post_ops_destroy, "dnnl_post_ops_destroy")
    BIND(post_ops_append_sum, "dnnl_post_ops_append_sum")
    BIND(post_ops_append_eltwise, "dnnl_post_ops_append_eltwise")
    BIND(matmul_pd_create, "dnnl_matmul_primitive_desc_create")
    BIND(pd_destroy, "dnnl_primitive_desc_destroy")
    BIND(pd_query, "dnnl_primitive_desc_query")
    BIND(primitive_create, "dnnl_primitive_create")
    BIND(primitive_destroy, "dnnl_primitive_destroy")
    BIND(primitive_execute, "dnnl_primitive_execute")
    BIND(stream_wait, "dnnl_stream_wait")
    BIND(version, "dnnl_version")
#undef BIND
    const dnnl_version_info *v = dnnl.version();
    if (v->major != 3 || dnnl.engine_create(&dnnl.engine, DNNL_CPU_ENGINE, 0)) {
        dlclose(lib);
        return dnnl.failure = v->major != 3 ? "not oneDNN 3.x" : "no CPU engine";
    }
    snprintf(dnnl.version_text, sizeof dnnl.version_text, "%d.%d.%d", v->major, v->minor, v->patch);
    dnnl.loaded = true;
    return NULL;
}

const char *onednn_version(void) { return dnnl.loaded ? dnnl.version_text : NULL; }

/* A row-major rows x cols matrix with row stride ld, read transposed when
 * `trans` (stored [cols, rows]). */
static dnnl_handle matrix_desc(int rows, int cols, int ld, bool trans, int type) {
    dnnl_dims dims = {rows, cols}, strides = {trans ? 1 : ld, trans ? ld : 1};
    dnnl_handle md = NULL;
    return dnnl.md_create_with_strides(&md, 2, dims, type, strides) ? NULL : md;
}

bool onednn_gemm_bf16(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                      const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *C,
                      int ldc) {
    if (!dnnl.loaded) return false;
    /* oneDNN's OpenMP loops take the calling thread's team size */
    omp_set_num_threads(omp_in_parallel() ? 1 : calign_num_threads());
    bool done = false;
    dnnl_handle a_md = matrix_desc(M, K, lda, trans_a, DNNL_BF16);
    dnnl_handle b_md = matrix_desc(K, N, ldb, trans_b, DNNL_BF16);
    dnnl_handle c_md = matrix_desc(M, N, ldc, false, DNNL_F32);
    dnnl_handle attr = NULL, post_ops = NULL, pd = NULL, prim = NULL, stream = NULL;
    dnnl_handle a_mem = NULL, b_mem = NULL, c_mem = NULL;
    if (!a_md || !b_md || !c_md || dnnl.attr_create(&attr) || dnnl.post_ops_create(&post_ops))
        goto out;
    /* C = alpha * acc, then + beta * (C before): oneDNN applies post-ops in order */
    if (alpha != 1.0f && dnnl.post_ops_append_eltwise(post_ops, DNNL_ELTWISE_LINEAR, alpha, 0.0f))
        goto out;
    if (beta != 0.0f && dnnl.post_ops_append_sum(post_ops, beta, 0, DNNL_F32)) goto out;
    if (dnnl.attr_set_post_ops(attr, post_ops)) goto out;
    /* oneDNN caches the primitive of a shape it has seen: measured 1.5 us a call to get it */
    if (dnnl.matmul_pd_create(&pd, dnnl.engine, a_md, b_md, NULL, c_md, attr)) goto out;
    /* oneDNN falls back to its scalar reference code for layouts its kernels
     * do not take (seen: a transposed A with a sum post-op into a strided C);
     * that runs at well under 1 GFLOP/s, so such a product is left to the caller */
    const char *impl = NULL;
    if (dnnl.pd_query(pd, DNNL_QUERY_IMPL_INFO_STR, 0, &impl) || !impl || !strncmp(impl, "ref", 3))
        goto out;
    if (dnnl.primitive_create(&prim, pd)) goto out;
    if (dnnl.memory_create(&a_mem, a_md, dnnl.engine, (void *)A) ||
        dnnl.memory_create(&b_mem, b_md, dnnl.engine, (void *)B) ||
        dnnl.memory_create(&c_mem, c_md, dnnl.engine, C) ||
        dnnl.stream_create(&stream, dnnl.engine, DNNL_STREAM_IN_ORDER))
        goto out;
    const dnnl_exec_arg args[3] = {
        {DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}};
    /* The CPU matmul's failures are its argument and scratch-memory checks,
     * made before it writes C, so a false return leaves C as it was. On a CPU
     * stream the product is computed inside execute: wait has nothing left. */
    done = !dnnl.primitive_execute(prim, stream, 3, args);
    if (done) dnnl.stream_wait(stream);
out:
    if (stream) dnnl.stream_destroy(stream);
    if (c_mem) dnnl.memory_destroy(c_mem);
    if (b_mem) dnnl.memory_destroy(b_mem);
    if (a_mem) dnnl.memory_destroy(a_mem);
    if (prim) dnnl.primitive_destroy(prim);
    if (pd) dnnl.pd_destroy(pd);
    if (post_ops) dnnl.post_ops_destroy(post_ops);
    if (attr) dnnl.attr_destroy(attr);
    if (c_md) dnnl.md_destroy(c_md);
    if (b_md) dnnl.md_destroy(b_md);
    if (a_md) dnnl.md_destroy(a_md);
    return done;
}
