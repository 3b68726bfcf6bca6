#include "model/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bf16.h"
#include "core/bump.h"
#include "core/gemm.h"
#include "core/status.h"
#include "core/threads.h"
#include "layers/activations.h"
#include "layers/attention.h"
#include "layers/embedding.h"
#include "layers/lora.h"
#include "layers/norms.h"
#include "layers/rope.h"

/* Activations of one layer, kept for the backward. What is cheap to redo is
 * not kept: the norms' outputs (recomputed from their input and statistics)
 * and the MLP activation (recomputed inside its own backward). */
typedef struct {
    float *n1_mean, *n1_rstd;       /* attention norm statistics */
    float *qkv;                      /* [T, qkv_dim]: q and k after q/k norm and RoPE, v */
    float *q_pre, *k_pre;            /* [T, nq*hd], [T, nkv*hd] q, k before q/k norm (Qwen3) */
    float *q_norm_rstd, *k_norm_rstd;
    float *lse;                      /* [nq][T] attention log-sum-exp per query row */
    float *att;                      /* [T, nq*hd] attention output (o_proj's input) */
    float *att_raw, *subln_rstd;     /* differential: attention before its subln, whose
                                        statistics per (token, head) */
    float *mid;                      /* [T, d] residual after attention */
    float *n2_mean, *n2_rstd;       /* MLP norm statistics */
    float *up;                       /* [T, up_dim] MLP input projection */
} layer_acts;

/* Scratch the forward passes through, shared by all layers (in the backward
 * `normed` takes the recomputed norm outputs). */
typedef struct {
    float *normed;              /* [T, d] a norm's output */
    float *act;                 /* [T, ff] the MLP activation */
    float *qk_normed;           /* [T, nq*hd + nkv*hd] q, k after q/k norm (Qwen3) */
    float *attention_scratch;   /* per thread, ATTENTION_SCRATCH_PER_THREAD(longest) */
    float *lora_xa, *lora_d_xa; /* [T, max r] each, when the model has adapters */
} forward_scratch;

/* Gradient scratch shared by all layers in the backward. */
typedef struct {
    float *d_resid, *d_norm, *d_up, *d_act, *d_att, *d_qkv, *d_q, *d_k, *d_q_pre, *d_k_pre;
    float *norm_scratch;
    float *d_att_raw;      /* differential: dL/d(attention before subln) */
    float *d_lambda_parts; /* differential: dL/dlambda per attention task */
    float *d_act_rows;     /* PolyNorm: dL/d[w0, w1, w2, b] per token */
} grad_scratch;

struct model {
    model_config cfg;
    param_offsets off;
    int qkv_dim, up_dim;
    float *inv_freq;
    /* arena */
    float *arena;
    size_t arena_floats;
    long arena_T, arena_longest;
    int arena_layers_kept, arena_train, arena_threads; /* what the arena has room for */
    long workspace_allocations; /* times the arena or the scratch was (re)allocated */
    float **resid;      /* n_layer + 1 residual streams (2 when not training) */
    layer_acts *acts;   /* n_layer (1 when not training) */
    float *final_mean, *final_rstd;
    forward_scratch f;
    grad_scratch g;
    long forward_T;     /* tokens of the last training forward, -1 if none */
    uint64_t forward_batch; /* batch_fingerprint of that forward's batch */
    int forward_checkpointed; /* that forward kept only the residual streams */
    void *workspace;    /* model_workspace */
    size_t workspace_bytes;
    /* LoRA adapters (model_set_adapters), sorted by layer and site;
     * lora_first[layer * LORA_N_SITES + site] is the first of a site's */
    lora_adapter *adapters;
    int n_adapters, lora_max_r, arena_lora_r;
    int *lora_first;
    long lora_floats;          /* the adapter vector's length */
    const float *forward_lora; /* the adapters of the last training forward (NULL: off) */
    float *control;            /* [n_layer, d] steering rows (model_set_control), or NULL */
    unsigned char *controlled; /* [n_layer] whether a block's row is not all zero */
    bool bf16_products;        /* model_set_bf16_products */
    const uint16_t *frozen_bf16; /* model_set_frozen_bf16, or NULL */
};

const char *const FORWARD_MODE_NAMES[FORWARD_N_MODES] = {
    [FORWARD_INFERENCE] = "inference",
    [FORWARD_TRAIN] = "train",
    [FORWARD_TRAIN_CHECKPOINTED] = "train_checkpointed",
};

/* ---- layout ------------------------------------------------------------ */

static long take_params(long *cursor, long n) {
    long at = *cursor;
    *cursor += n;
    return at;
}

static void plan_params(model *m) {
    const model_config *c = &m->cfg;
    const int d = c->d_model, hd = c->head_dim;
    long cur = 0;
    param_offsets *o = &m->off;
    o->wte = take_params(&cur, (long)c->vocab * d);
    o->wpe = c->learned_positions ? take_params(&cur, (long)c->max_positions * d) : -1;
    for (int l = 0; l < c->n_layer; l++) {
        layer_offsets *L = &o->layers[l];
        int layernorm = c->norm == NORM_LAYERNORM;
        L->attn_norm_w = take_params(&cur, d);
        L->attn_norm_b = layernorm ? take_params(&cur, d) : -1;
        L->qkv_w = take_params(&cur, (long)m->qkv_dim * d);
        L->qkv_b = c->qkv_bias ? take_params(&cur, m->qkv_dim) : -1;
        L->q_norm_w = c->qk_norm ? take_params(&cur, hd) : -1;
        L->k_norm_w = c->qk_norm ? take_params(&cur, hd) : -1;
        L->o_w = take_params(&cur, (long)d * c->n_head * hd);
        L->o_b = c->o_bias ? take_params(&cur, d) : -1;
        L->mlp_norm_w = take_params(&cur, d);
        L->mlp_norm_b = layernorm ? take_params(&cur, d) : -1;
        L->up_w = take_params(&cur, (long)m->up_dim * d);
        L->up_b = c->mlp_bias ? take_params(&cur, m->up_dim) : -1;
        L->down_w = take_params(&cur, (long)d * c->d_ff);
        L->down_b = c->mlp_bias ? take_params(&cur, d) : -1;
        L->act_wb = c->mlp == MLP_POLYNORM ? take_params(&cur, POLYNORM_N_PARAMS) : -1;
        int diff = c->attention == ATTENTION_DIFFERENTIAL;
        L->lambda_q1 = diff ? take_params(&cur, hd) : -1;
        L->lambda_k1 = diff ? take_params(&cur, hd) : -1;
        L->lambda_q2 = diff ? take_params(&cur, hd) : -1;
        L->lambda_k2 = diff ? take_params(&cur, hd) : -1;
        L->subln_w = diff ? take_params(&cur, 2L * hd) : -1;
    }
    o->final_norm_w = take_params(&cur, d);
    o->final_norm_b = c->norm == NORM_LAYERNORM ? take_params(&cur, d) : -1;
    o->lm_head = c->tied_embeddings ? o->wte : take_params(&cur, (long)c->vocab * d);
    o->n_params = cur;
}

model *model_create(const model_config *cfg, char *err) {
    const model_config *c = cfg;
    if (c->n_layer < 1 || c->d_model < 1 || c->n_head < 1 || c->n_kv_head < 1 ||
        c->head_dim < 1 || c->d_ff < 1 || c->vocab < 1 || c->max_positions < 1) {
        snprintf(err, 256, "model sizes must all be >= 1");
        return NULL;
    }
    if (c->n_head % c->n_kv_head != 0) {
        snprintf(err, 256, "num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)",
                 c->n_head, c->n_kv_head);
        return NULL;
    }
    if (c->attention == ATTENTION_DIFFERENTIAL && (c->n_head % 2 || c->n_kv_head % 2)) {
        snprintf(err, 256, "differential attention pairs heads: num_attention_heads (%d) and "
                 "num_key_value_heads (%d) must be even", c->n_head, c->n_kv_head);
        return NULL;
    }
    if (c->rope_theta > 0 && c->head_dim % 2 != 0) {
        snprintf(err, 256, "head_dim (%d) must be even for rotary embeddings", c->head_dim);
        return NULL;
    }
    /* the engine indexes a row of a projection with an int and a tensor with
     * a long: refuse sizes whose products would not fit either */
    const double d = c->d_model, hd = c->head_dim;
    const double qkv = ((double)c->n_head + 2.0 * c->n_kv_head) * hd;
    const double up = (c->mlp == MLP_GELU_TANH ? 1.0 : 2.0) * c->d_ff;
    if (qkv > INT32_MAX || up > INT32_MAX) {
        snprintf(err, 256, "the attention (%.0f) or MLP (%.0f) projection has more than "
                 "2**31 - 1 outputs", qkv, up);
        return NULL;
    }
    const double per_layer =
        (qkv + (double)c->n_head * hd + up + c->d_ff) * d + qkv + up + 6 * d + 6 * hd + 4;
    const double n_params = c->n_layer * per_layer + (2.0 * c->vocab + c->max_positions + 2) * d;
    if (n_params > 0x1p56) {
        snprintf(err, 256, "the model would have %.3g parameters, more than calign can address",
                 n_params);
        return NULL;
    }
    model *m = calloc(1, sizeof(model));
    if (!m) {
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    m->qkv_dim = (c->n_head + 2 * c->n_kv_head) * c->head_dim;
    m->up_dim = c->mlp == MLP_GELU_TANH ? c->d_ff : 2 * c->d_ff;
    m->off.layers = calloc(c->n_layer, sizeof(layer_offsets));
    m->inv_freq = calloc(c->head_dim / 2 + 1, sizeof(float));
    if (!m->off.layers || !m->inv_freq) {
        model_free(m);
        snprintf(err, 256, "out of memory");
        return NULL;
    }
    if (c->rope_theta > 0) rope_inv_freq(m->inv_freq, c->head_dim, c->rope_theta);
    plan_params(m);
    m->forward_T = -1;
    return m;
}

void model_free(model *m) {
    if (!m) return;
    free(m->off.layers);
    free(m->inv_freq);
    free(m->arena);
    free(m->resid);
    free(m->acts);
    free(m->workspace);
    free(m->adapters);
    free(m->lora_first);
    free(m->control);
    free(m->controlled);
    free(m);
}

void *model_workspace(model *m, size_t bytes) {
    if (bytes > m->workspace_bytes || !m->workspace) {
        free(m->workspace);
        size_t rounded = (bytes + 63) / 64 * 64;
        m->workspace = aligned_alloc(64, rounded ? rounded : 64);
        m->workspace_bytes = m->workspace ? rounded : 0;
        m->workspace_allocations += m->workspace != NULL;
    }
    return m->workspace;
}

const model_config *model_get_config(const model *m) { return &m->cfg; }
/* FNV-1a over a batch's tokens, positions, branches and sequence starts: the
 * backward must get the batch its forward saw, since the arena was carved
 * for that batch's shape. */
static uint64_t batch_fingerprint(const packed_batch *b) {
    uint64_t h = 14695981039346656037ULL;
    const int32_t *fields[3] = {b->tokens, b->positions, b->branch};
    for (int f = 0; f < 3; f++)
        for (long t = 0; t < b->T; t++) h = (h ^ (uint32_t)fields[f][t]) * 1099511628211ULL;
    for (int s = 0; s <= b->n_seq; s++) h = (h ^ (uint32_t)b->seq_start[s]) * 1099511628211ULL;
    return h;
}

int model_ready_for_backward(const model *m, const packed_batch *b, const float *lora) {
    return m->forward_T >= 0 && m->forward_T == b->T && m->forward_batch == batch_fingerprint(b) &&
           m->forward_lora == (m->n_adapters ? lora : NULL);
}
long model_param_count(const model *m) { return m->off.n_params; }
long model_lm_head_offset(const model *m) { return m->off.lm_head; }

static void add_entry(param_entry *e, int *n, int max, const char *role, int layer, long offset,
                      int ndim, long s0, long s1) {
    if (offset < 0) return;
    if (*n < max) e[*n] = (param_entry){role, layer, offset, ndim, {s0, s1}};
    (*n)++;
}

int model_param_entries(const model *m, param_entry *e, int max) {
    const model_config *c = &m->cfg;
    const param_offsets *o = &m->off;
    const long d = c->d_model, hd = c->head_dim, q_dim = (long)c->n_head * hd;
    const int in_out = c->layout == WEIGHT_IN_OUT;
    int n = 0;
    add_entry(e, &n, max, "wte", -1, o->wte, 2, c->vocab, d);
    add_entry(e, &n, max, "wpe", -1, o->wpe, 2, c->max_positions, d);
    for (int l = 0; l < c->n_layer; l++) {
        const layer_offsets *L = &o->layers[l];
        add_entry(e, &n, max, "attn_norm_w", l, L->attn_norm_w, 1, d, 0);
        add_entry(e, &n, max, "attn_norm_b", l, L->attn_norm_b, 1, d, 0);
        add_entry(e, &n, max, "qkv_w", l, L->qkv_w, 2, in_out ? d : m->qkv_dim,
                  in_out ? m->qkv_dim : d);
        add_entry(e, &n, max, "qkv_b", l, L->qkv_b, 1, m->qkv_dim, 0);
        add_entry(e, &n, max, "q_norm_w", l, L->q_norm_w, 1, hd, 0);
        add_entry(e, &n, max, "k_norm_w", l, L->k_norm_w, 1, hd, 0);
        add_entry(e, &n, max, "o_w", l, L->o_w, 2, in_out ? q_dim : d, in_out ? d : q_dim);
        add_entry(e, &n, max, "o_b", l, L->o_b, 1, d, 0);
        add_entry(e, &n, max, "mlp_norm_w", l, L->mlp_norm_w, 1, d, 0);
        add_entry(e, &n, max, "mlp_norm_b", l, L->mlp_norm_b, 1, d, 0);
        add_entry(e, &n, max, "up_w", l, L->up_w, 2, in_out ? d : m->up_dim,
                  in_out ? m->up_dim : d);
        add_entry(e, &n, max, "up_b", l, L->up_b, 1, m->up_dim, 0);
        add_entry(e, &n, max, "down_w", l, L->down_w, 2, in_out ? c->d_ff : d,
                  in_out ? d : c->d_ff);
        add_entry(e, &n, max, "down_b", l, L->down_b, 1, d, 0);
        add_entry(e, &n, max, "act_w", l, L->act_wb, 1, POLYNORM_N_PARAMS - 1, 0);
        add_entry(e, &n, max, "act_b", l, L->act_wb < 0 ? -1 : L->act_wb + 3, 1, 1, 0);
        add_entry(e, &n, max, "lambda_q1", l, L->lambda_q1, 1, hd, 0);
        add_entry(e, &n, max, "lambda_k1", l, L->lambda_k1, 1, hd, 0);
        add_entry(e, &n, max, "lambda_q2", l, L->lambda_q2, 1, hd, 0);
        add_entry(e, &n, max, "lambda_k2", l, L->lambda_k2, 1, hd, 0);
        add_entry(e, &n, max, "subln_w", l, L->subln_w, 1, 2 * hd, 0);
    }
    add_entry(e, &n, max, "final_norm_w", -1, o->final_norm_w, 1, d, 0);
    add_entry(e, &n, max, "final_norm_b", -1, o->final_norm_b, 1, d, 0);
    if (!c->tied_embeddings) add_entry(e, &n, max, "lm_head", -1, o->lm_head, 2, c->vocab, d);
    return n;
}

/* ---- arena ------------------------------------------------------------- */

static float *take(bump *b, size_t n_floats) { return bump_take(b, n_floats * sizeof(float)); }

/* Floats of attention scratch per thread for sequences of up to `longest`. */
static long attention_scratch_per_thread(const model *m, long longest) {
    return m->cfg.attention == ATTENTION_DIFFERENTIAL ? DIFF_ATTENTION_SCRATCH_PER_THREAD(longest)
                                                      : ATTENTION_SCRATCH_PER_THREAD(longest);
}

/* Training keeps every residual stream, and every layer's activations
 * unless checkpointed; inference reuses two streams and one layer's buffers. */
static int layers_kept(const model *m, forward_mode mode) {
    return mode == FORWARD_TRAIN ? m->cfg.n_layer : 1;
}

static void plan_arena(model *m, bump *b, long T, long longest, int n_acts, int train) {
    const model_config *c = &m->cfg;
    const long d = c->d_model, hd = c->head_dim, nq = c->n_head, nkv = c->n_kv_head;
    const int diff = c->attention == ATTENTION_DIFFERENTIAL;
    int n_resid = train ? c->n_layer + 1 : 2;
    for (int r = 0; r < n_resid; r++) m->resid[r] = take(b, T * d);
    for (int l = 0; l < n_acts; l++) {
        layer_acts *a = &m->acts[l];
        a->n1_mean = take(b, T);
        a->n1_rstd = take(b, T);
        a->qkv = take(b, T * m->qkv_dim);
        a->q_pre = c->qk_norm ? take(b, T * nq * hd) : NULL;
        a->k_pre = c->qk_norm ? take(b, T * nkv * hd) : NULL;
        a->q_norm_rstd = c->qk_norm ? take(b, T * nq) : NULL;
        a->k_norm_rstd = c->qk_norm ? take(b, T * nkv) : NULL;
        a->lse = take(b, T * nq);
        a->att = take(b, T * nq * hd);
        a->att_raw = diff ? take(b, T * nq * hd) : NULL;
        a->subln_rstd = diff ? take(b, T * nq / 2) : NULL;
        a->mid = take(b, T * d);
        a->n2_mean = take(b, T);
        a->n2_rstd = take(b, T);
        a->up = take(b, T * m->up_dim);
    }
    m->final_mean = take(b, T);
    m->final_rstd = take(b, T);
    forward_scratch *f = &m->f;
    f->normed = take(b, T * d);
    f->act = take(b, T * c->d_ff);
    f->qk_normed = c->qk_norm ? take(b, T * (nq + nkv) * hd) : NULL;
    f->attention_scratch = take(b, m->arena_threads * attention_scratch_per_thread(m, longest));
    f->lora_xa = m->arena_lora_r ? take(b, T * m->arena_lora_r) : NULL;
    f->lora_d_xa = m->arena_lora_r && train ? take(b, T * m->arena_lora_r) : NULL;
    grad_scratch *g = &m->g;
    memset(g, 0, sizeof *g);
    if (!train) return;
    long widest = d > c->d_ff ? d : c->d_ff;
    widest = widest > 2 * hd ? widest : 2 * hd; /* the subln's rows */
    g->d_resid = take(b, T * d);
    g->d_norm = take(b, T * d);
    g->d_up = take(b, T * m->up_dim);
    g->d_act = take(b, T * c->d_ff);
    g->d_att = take(b, T * nq * hd);
    g->d_qkv = take(b, T * m->qkv_dim);
    /* without q/k norm the attention backward writes straight into d_qkv */
    g->d_q = c->qk_norm ? take(b, T * nq * hd) : NULL;
    g->d_k = c->qk_norm ? take(b, T * nkv * hd) : NULL;
    g->d_q_pre = c->qk_norm ? take(b, T * nq * hd) : NULL;
    g->d_k_pre = c->qk_norm ? take(b, T * nkv * hd) : NULL;
    g->norm_scratch = take(b, NORM_SCRATCH_FLOATS(m->arena_threads, widest));
    g->d_att_raw = diff ? take(b, T * nq * hd) : NULL;
    g->d_lambda_parts = diff ? take(b, T * (nkv / 2)) : NULL; /* n_seq <= T */
    g->d_act_rows = c->mlp == MLP_POLYNORM ? take(b, T * POLYNORM_N_PARAMS) : NULL;
}

int model_prepare(model *m, const packed_batch *b, forward_mode mode) {
    const model_config *c = &m->cfg;
    long longest = 0;
    for (int s = 0; s < b->n_seq; s++) {
        long L = b->seq_start[s + 1] - b->seq_start[s];
        longest = L > longest ? L : longest;
    }
    int threads = calign_num_threads(), train = mode != FORWARD_INFERENCE;
    int n_acts = layers_kept(m, mode);
    int fits = m->arena && b->T <= m->arena_T && longest <= m->arena_longest &&
               n_acts <= m->arena_layers_kept && (m->arena_train || !train) &&
               threads <= m->arena_threads && m->lora_max_r <= m->arena_lora_r;
    m->forward_T = -1;
    if (!fits) {
        free(m->arena);
        free(m->resid);
        free(m->acts);
        m->arena = NULL;
        int keep_train = train || m->arena_train;
        int keep_acts = n_acts > m->arena_layers_kept ? n_acts : m->arena_layers_kept;
        long T = b->T > m->arena_T ? b->T : m->arena_T;
        long lmax = longest > m->arena_longest ? longest : m->arena_longest;
        m->arena_threads = threads > m->arena_threads ? threads : m->arena_threads;
        m->arena_lora_r = m->lora_max_r > m->arena_lora_r ? m->lora_max_r : m->arena_lora_r;
        m->resid = calloc(c->n_layer + 1, sizeof(float *));
        m->acts = calloc(c->n_layer, sizeof(layer_acts));
        if (!m->resid || !m->acts) return -1;
        bump counter = {NULL, 0};
        plan_arena(m, &counter, T, lmax, keep_acts, keep_train);
        size_t bytes = (counter.used + 63) / 64 * 64;
        m->arena = aligned_alloc(64, bytes);
        if (!m->arena) return -1;
        m->workspace_allocations++;
        m->arena_floats = bytes / sizeof(float);
        m->arena_T = T;
        m->arena_longest = lmax;
        m->arena_layers_kept = keep_acts;
        m->arena_train = keep_train;
    }
    bump carve = {(char *)m->arena, 0};
    plan_arena(m, &carve, b->T, longest, n_acts, train);
    return 0;
}

size_t model_arena_bytes(const model *m) { return m->arena ? m->arena_floats * sizeof(float) : 0; }
long model_workspace_allocations(const model *m) { return m->workspace_allocations; }

/* ---- Motif's layer variants -------------------------------------------- */

/* Differential attention's lambda_init for a 0-based layer index, as Motif's
 * modeling code computes it: 0.8 - 0.6 exp(-0.3 (layer_idx - 1)) (the
 * paper's 0.8 - 0.6 exp(-0.3 (l - 1)) is over 1-based l; Motif passes the
 * 0-based index, and its checkpoints were trained with that). */
static float lambda_init(int layer) { return (float)(0.8 - 0.6 * exp(-0.3 * (layer - 1))); }

static double dot_f64(const float *a, const float *b, int n) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)a[i] * b[i];
    return sum;
}

/* lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init;
 * e[0], e[1] get the two exponentials (for the backward). */
static float diff_lambda(const model *m, const float *params, const layer_offsets *L, int layer,
                         float e[2]) {
    const int hd = m->cfg.head_dim;
    e[0] = expf((float)dot_f64(params + L->lambda_q1, params + L->lambda_k1, hd));
    e[1] = expf((float)dot_f64(params + L->lambda_q2, params + L->lambda_k2, hd));
    return e[0] - e[1] + lambda_init(layer);
}

static void scale_into(float *x, long n, float factor) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i++) x[i] *= factor;
}

/* att = RMSNorm over each head's 2 hd outputs (weight subln) * (1 - lambda_init) */
static void subln_forward(const model *m, layer_acts *a, const float *params,
                          const layer_offsets *L, long T, int layer) {
    const model_config *c = &m->cfg;
    const long rows = T * (c->n_head / 2), q_dim = (long)c->n_head * c->head_dim;
    rmsnorm_forward(a->att, a->subln_rstd, a->att_raw, params + L->subln_w, rows,
                    2 * c->head_dim, c->attn_norm_eps);
    scale_into(a->att, T * q_dim, 1.0f - lambda_init(layer));
}

/* The MLP's activation of a layer: act [T, ff] from up [T, up_dim]. */
static void mlp_activation(const model *m, float *act, const float *up, const float *params,
                           const layer_offsets *L, long T) {
    const model_config *c = &m->cfg;
    if (c->mlp == MLP_SWIGLU)
        swiglu_forward(act, up, T, c->d_ff);
    else if (c->mlp == MLP_POLYNORM)
        polynorm_forward(act, up, params + L->act_wb, T, c->d_ff);
    else
        gelu_tanh_forward(act, up, T * c->d_ff);
}

/* ---- forward ----------------------------------------------------------- */

static void copy_columns(float *dst, int ld_dst, const float *src, int ld_src, long T, int n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++) memcpy(dst + t * ld_dst, src + t * ld_src, sizeof(float) * n);
}

static void add_into(float *dst, const float *src, long n) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long i = 0; i < n; i++) dst[i] += src[i];
}

static void norm_forward(const model *m, float *out, float *mean, float *rstd, const float *inp,
                         const float *params, long w, long bias, long T) {
    const model_config *c = &m->cfg;
    if (c->norm == NORM_LAYERNORM)
        layernorm_forward(out, mean, rstd, inp, params + w, params + bias, T, c->d_model,
                          c->norm_eps);
    else
        rmsnorm_forward(out, rstd, inp, params + w, T, c->d_model, c->norm_eps);
}

static const float *param_or_null(const float *params, long offset) {
    return offset >= 0 ? params + offset : NULL;
}

static attention_shape attention_shape_of(const model *m, const packed_batch *b) {
    const model_config *c = &m->cfg;
    long longest = 0;
    for (int s = 0; s < b->n_seq; s++) {
        long L = b->seq_start[s + 1] - b->seq_start[s];
        longest = L > longest ? L : longest;
    }
    return (attention_shape){b->seq_start,
                             b->branch,
                             b->n_seq,
                             b->T,
                             c->n_head,
                             c->n_kv_head,
                             c->head_dim,
                             m->f.attention_scratch,
                             attention_scratch_per_thread(m, longest),
                             m->arena_threads,
                             m->bf16_products};
}

/* Writes k and v of the batch's tokens (rows of stride ld) into the cache at
 * their positions. */
static void cache_store(kv_cache *cache, long layer_floats, const float *k, const float *v,
                        int ld, const packed_batch *b, int kv_dim) {
    for (int s = 0; s < b->n_seq; s++) {
        long slot_base = (long)cache->run_slot[s] * cache->capacity * kv_dim;
        for (long t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) {
            long at = slot_base + (long)b->positions[t] * kv_dim;
            memcpy(cache->k + layer_floats + at, k + t * ld, sizeof(float) * kv_dim);
            memcpy(cache->v + layer_floats + at, v + t * ld, sizeof(float) * kv_dim);
        }
    }
}

long kv_cache_layer_floats(const model *m, int n_slots, int capacity) {
    return (long)n_slots * capacity * m->cfg.n_kv_head * m->cfg.head_dim;
}

/* Qwen3's q/k norm: RMSNorm over each head's head_dim, before RoPE. The raw
 * q, k are kept (q_pre, k_pre) for the backward; the normed ones replace
 * them in qkv. */
static void qk_norm_forward(model *m, layer_acts *a, const float *params, const layer_offsets *L,
                            long T) {
    const model_config *c = &m->cfg;
    const int hd = c->head_dim, nq = c->n_head, nkv = c->n_kv_head;
    const int q_dim = nq * hd, kv_dim = nkv * hd;
    float *q_normed = m->f.qk_normed, *k_normed = q_normed + T * q_dim;
    copy_columns(a->q_pre, q_dim, a->qkv, m->qkv_dim, T, q_dim);
    copy_columns(a->k_pre, kv_dim, a->qkv + q_dim, m->qkv_dim, T, kv_dim);
    rmsnorm_forward(q_normed, a->q_norm_rstd, a->q_pre, params + L->q_norm_w, T * nq, hd,
                    c->norm_eps);
    rmsnorm_forward(k_normed, a->k_norm_rstd, a->k_pre, params + L->k_norm_w, T * nkv, hd,
                    c->norm_eps);
    copy_columns(a->qkv, m->qkv_dim, q_normed, q_dim, T, q_dim);
    copy_columns(a->qkv + q_dim, m->qkv_dim, k_normed, kv_dim, T, kv_dim);
}

/* ---- LoRA adapters ----------------------------------------------------- */

/* The output width and input width of a layer's projection. */
static void site_dims(const model *m, lora_site site, int *out_dim, int *in_dim) {
    const model_config *c = &m->cfg;
    const int d = c->d_model, q_dim = c->n_head * c->head_dim;
    const int outs[LORA_N_SITES] = {m->qkv_dim, d, m->up_dim, d};
    const int ins[LORA_N_SITES] = {d, q_dim, d, c->d_ff};
    *out_dim = outs[site];
    *in_dim = ins[site];
}

static int adapter_order(const void *pa, const void *pb) {
    const lora_adapter *a = pa, *b = pb;
    if (a->layer != b->layer) return a->layer < b->layer ? -1 : 1;
    if (a->site != b->site) return a->site < b->site ? -1 : 1;
    return a->out_offset < b->out_offset ? -1 : a->out_offset > b->out_offset;
}

int model_set_adapters(model *m, const lora_adapter *adapters, int n, long n_floats, char *err) {
    long end = 0;
    int max_r = 0;
    for (int i = 0; i < n; i++) {
        const lora_adapter *ad = &adapters[i];
        int out_dim, in_dim;
        if (ad->layer < 0 || ad->layer >= m->cfg.n_layer || ad->site < 0 ||
            ad->site >= LORA_N_SITES) {
            snprintf(err, 256, "adapter %d: no layer %d or site %d", i, ad->layer, (int)ad->site);
            return -1;
        }
        site_dims(m, ad->site, &out_dim, &in_dim);
        if (ad->r < 1 || ad->in_dim != in_dim || ad->out_offset < 0 || ad->out_dim < 1 ||
            ad->out_offset > out_dim - ad->out_dim || ad->a_offset < 0 || ad->b_offset < 0 ||
            !isfinite(ad->scale)) {
            snprintf(err, 256, "adapter %d (layer %d, %s): r %d, columns [%d, %d) of %d, "
                     "input %d of %d do not fit the projection", i, ad->layer,
                     LORA_SITE_NAMES[ad->site], ad->r, ad->out_offset,
                     ad->out_offset + ad->out_dim, out_dim, ad->in_dim, in_dim);
            return -1;
        }
        long a_end = ad->a_offset + (long)ad->r * ad->in_dim;
        long b_end = ad->b_offset + (long)ad->out_dim * ad->r;
        end = a_end > end ? a_end : end;
        end = b_end > end ? b_end : end;
        max_r = ad->r > max_r ? ad->r : max_r;
    }
    if (end > n_floats) {
        snprintf(err, 256, "the adapters need %ld floats but the adapter vector has %ld", end,
                 n_floats);
        return -1;
    }
    lora_adapter *sorted = malloc(sizeof(lora_adapter) * (n > 0 ? n : 1));
    int *first = malloc(sizeof(int) * ((long)m->cfg.n_layer * LORA_N_SITES + 1));
    if (!sorted || !first) {
        free(sorted);
        free(first);
        snprintf(err, 256, "out of memory");
        return -2;
    }
    memcpy(sorted, adapters, sizeof(lora_adapter) * n);
    qsort(sorted, n, sizeof(lora_adapter), adapter_order);
    for (int k = 0, i = 0; k <= m->cfg.n_layer * LORA_N_SITES; k++) {
        while (i < n && sorted[i].layer * LORA_N_SITES + (int)sorted[i].site < k) i++;
        first[k] = i;
    }
    free(m->adapters);
    free(m->lora_first);
    m->adapters = sorted;
    m->lora_first = first;
    m->n_adapters = n;
    m->lora_max_r = max_r;
    m->lora_floats = n_floats;
    m->forward_T = -1; /* a backward must follow a forward with these adapters */
    return 0;
}

long model_adapter_floats(const model *m) { return m->n_adapters ? m->lora_floats : 0; }

/* The adapters of one projection of one layer, as [*first, *last). */
static void site_adapters(const model *m, int layer, lora_site site, int *first, int *last) {
    const int k = layer * LORA_N_SITES + site;
    *first = m->n_adapters ? m->lora_first[k] : 0;
    *last = m->n_adapters ? m->lora_first[k + 1] : 0;
}

/* y += the adapters' updates on this projection (lora NULL: adapters off). */
static void lora_site_forward(model *m, float *y, int ld_y, const float *x, const float *lora,
                              long T, int layer, lora_site site, bool bf16) {
    if (!lora) return;
    int first, last;
    site_adapters(m, layer, site, &first, &last);
    for (int i = first; i < last; i++)
        lora_forward(y, ld_y, m->f.lora_xa, x, lora, T, &m->adapters[i], bf16);
}

static void lora_site_backward(model *m, float *d_x, float *lora_grads, const float *dy,
                               int ld_dy, const float *x, const float *lora, long T, int layer,
                               lora_site site) {
    if (!lora) return;
    int first, last;
    site_adapters(m, layer, site, &first, &last);
    for (int i = first; i < last; i++)
        lora_backward(d_x, lora_grads, m->f.lora_xa, m->f.lora_d_xa, dy, ld_dy, x, lora, T,
                      &m->adapters[i], m->bf16_products);
}

/* out = in W (+ bias) of the block weight at params offset w: the cache's
 * bfloat16 copy when generation asked for one, a frozen model's bfloat16
 * weights, else params' float32 (with bfloat16-rounded operands when bf16). */
static void block_linear(const model *m, float *out, int ld_out, const float *in,
                         const float *params, long w, long bias, long T, int n_in, int n_out,
                         const kv_cache *cache, bool bf16) {
    if (!cache && m->frozen_bf16) {
        gemm_model_bf16_weights((int)T, n_out, n_in, in, n_in, m->frozen_bf16 + w, n_in, out,
                                ld_out);
        add_bias_rows(out, ld_out, param_or_null(params, bias), (int)T, n_out);
        return;
    }
    if (!cache || !cache->bf16) {
        linear_forward(out, ld_out, in, params + w, param_or_null(params, bias), (int)T, n_in,
                       n_out, m->cfg.layout, bf16);
        return;
    }
    gemm_f32_bf16((int)T, n_out, n_in, in, n_in, cache->bf16 + w, n_in, out, ld_out,
                  cache->bf16_scratch, cache->bf16_scratch_threads);
    add_bias_rows(out, ld_out, param_or_null(params, bias), (int)T, n_out);
}

/* One transformer block. q and k are turned in place inside qkv, so
 * attention reads q, k, v from it with the row stride qkv_dim. With a cache
 * (generation), k and v go into it and attention reads it; otherwise
 * attention runs over the packed batch. With x_out NULL (the backward of a
 * checkpointed forward) it stops once the activations the backward reads
 * are in `a`. */
static void layer_forward(model *m, layer_acts *a, float *x_out, const float *x,
                          const float *params, const float *lora, const layer_offsets *L,
                          const packed_batch *b, kv_cache *cache, int layer) {
    const model_config *c = &m->cfg;
    const long T = b->T;
    const int d = c->d_model, hd = c->head_dim, nq = c->n_head, nkv = c->n_kv_head;
    const int q_dim = nq * hd, kv_dim = nkv * hd, ld = m->qkv_dim;
    float *normed = m->f.normed, *act = m->f.act;
    /* bf16 products are a setting of the packed forward; generation's
     * products follow its weight_dtype */
    const bool bf16 = m->bf16_products && !cache;

    norm_forward(m, normed, a->n1_mean, a->n1_rstd, x, params, L->attn_norm_w, L->attn_norm_b, T);
    block_linear(m, a->qkv, ld, normed, params, L->qkv_w, L->qkv_b, T, d, ld, cache, bf16);
    lora_site_forward(m, a->qkv, ld, normed, lora, T, layer, LORA_QKV, bf16);
    if (c->qk_norm) qk_norm_forward(m, a, params, L, T);
    float *q = a->qkv, *k = a->qkv + q_dim, *v = a->qkv + q_dim + kv_dim;
    if (c->rope_theta > 0) {
        rope_apply(q, ld, b->positions, T, nq, hd, m->inv_freq, +1);
        rope_apply(k, ld, b->positions, T, nkv, hd, m->inv_freq, +1);
    }
    const int diff = c->attention == ATTENTION_DIFFERENTIAL;
    float e[2], lambda = diff ? diff_lambda(m, params, L, layer, e) : 0.0f;
    float *att = diff ? a->att_raw : a->att; /* differential: its subln follows */
    if (cache) {
        long layer_floats = (long)layer * kv_cache_layer_floats(m, cache->n_slots, cache->capacity);
        cache_store(cache, layer_floats, k, v, ld, b, kv_dim);
        if (diff)
            diff_attention_cached_forward(att, q_dim, q, ld, cache->k + layer_floats,
                                          cache->v + layer_floats, cache->capacity,
                                          cache->run_slot, b->seq_start, b->positions, b->n_seq,
                                          nq, nkv, hd, lambda, cache->scores,
                                          cache->scores_threads);
        else
            attention_cached_forward(att, q_dim, q, ld, cache->k + layer_floats,
                                     cache->v + layer_floats, cache->capacity, cache->run_slot,
                                     b->seq_start, b->positions, b->n_seq, nq, nkv, hd,
                                     cache->scores, cache->scores_threads);
    } else {
        attention_shape shape = attention_shape_of(m, b);
        if (diff)
            diff_attention_forward(att, q_dim, a->lse, q, ld, k, ld, v, ld, lambda, &shape);
        else
            attention_forward(att, q_dim, a->lse, q, ld, k, ld, v, ld, &shape);
    }
    if (diff) subln_forward(m, a, params, L, T, layer);
    block_linear(m, a->mid, d, a->att, params, L->o_w, L->o_b, T, q_dim, d, cache, bf16);
    lora_site_forward(m, a->mid, d, a->att, lora, T, layer, LORA_O, bf16);
    add_into(a->mid, x, T * d);

    norm_forward(m, normed, a->n2_mean, a->n2_rstd, a->mid, params, L->mlp_norm_w,
                 L->mlp_norm_b, T);
    block_linear(m, a->up, m->up_dim, normed, params, L->up_w, L->up_b, T, d, m->up_dim, cache,
                 bf16);
    lora_site_forward(m, a->up, m->up_dim, normed, lora, T, layer, LORA_UP, bf16);
    if (!x_out) return;
    mlp_activation(m, act, a->up, params, L, T);
    block_linear(m, x_out, d, act, params, L->down_w, L->down_b, T, c->d_ff, d, cache, bf16);
    lora_site_forward(m, x_out, d, act, lora, T, layer, LORA_DOWN, bf16);
    add_into(x_out, a->mid, T * d);
}

void model_set_bf16_products(model *m, bool on) { m->bf16_products = on || m->frozen_bf16; }
bool model_bf16_products(const model *m) { return m->bf16_products; }

void model_set_frozen_bf16(model *m, const uint16_t *weights) {
    m->frozen_bf16 = weights;
    if (weights) m->bf16_products = true;
}
bool model_frozen_bf16(const model *m) { return m->frozen_bf16 != NULL; }

int model_set_control(model *m, const float *control) {
    const long n = (long)m->cfg.n_layer * m->cfg.d_model;
    free(m->control);
    free(m->controlled);
    m->control = NULL;
    m->controlled = NULL;
    if (!control) return 0;
    m->control = malloc(sizeof(float) * n);
    m->controlled = calloc(m->cfg.n_layer, 1);
    if (!m->control || !m->controlled) {
        free(m->control);
        free(m->controlled);
        m->control = NULL;
        m->controlled = NULL;
        return -2;
    }
    memcpy(m->control, control, sizeof(float) * n);
    for (long i = 0; i < n; i++)
        if (control[i] != 0.0f) m->controlled[i / m->cfg.d_model] = 1;
    return 0;
}

/* x[t] += row for every token t of the batch. */
static void add_to_every_row(float *x, const float *row, long T, int d) {
#pragma omp parallel for num_threads(calign_num_threads()) schedule(static)
    for (long t = 0; t < T; t++)
        for (int i = 0; i < d; i++) x[t * d + i] += row[i];
}

/* Which blocks' outputs an inference forward copies out (model_forward_layers). */
typedef struct {
    const int *layers;
    int n;
    float *out;
} layer_capture;

/* The blocks; returns the residual stream after the last block run. */
static const float *run_blocks(model *m, const float *params, const float *lora,
                               const packed_batch *b, forward_mode mode, kv_cache *cache,
                               const layer_capture *capture) {
    const model_config *c = &m->cfg;
    const int train = mode != FORWARD_INFERENCE, every_layer = mode == FORWARD_TRAIN;
    const long T = b->T, d = c->d_model;
    embedding_forward(m->resid[0], b->tokens, b->positions, params + m->off.wte,
                      param_or_null(params, m->off.wpe), T, c->d_model);
    int captured = 0;
    for (int l = 0; l < c->n_layer; l++) {
        layer_acts *a = &m->acts[every_layer ? l : 0];
        float *x = m->resid[train ? l : l % 2];
        float *x_out = m->resid[train ? l + 1 : (l + 1) % 2];
        layer_forward(m, a, x_out, x, params, lora, &m->off.layers[l], b, cache, l);
        if (m->controlled && m->controlled[l]) add_to_every_row(x_out, m->control + l * d, T, d);
        if (capture && capture->layers[captured] == l) {
            memcpy(capture->out + captured * T * d, x_out, sizeof(float) * T * d);
            if (++captured == capture->n) return x_out;
        }
    }
    return m->resid[train ? c->n_layer : c->n_layer % 2];
}

void model_forward_layers(model *m, float *out, const float *params, const float *lora,
                          const packed_batch *b, const int *layers, int n) {
    layer_capture capture = {layers, n, out};
    run_blocks(m, params, m->n_adapters ? lora : NULL, b, FORWARD_INFERENCE, NULL, &capture);
}

static void forward(model *m, float *hidden_out, const float *params, const float *lora,
                    const packed_batch *b, forward_mode mode, kv_cache *cache) {
    const param_offsets *o = &m->off;
    const int train = mode != FORWARD_INFERENCE;
    const float *last = run_blocks(m, params, lora, b, mode, cache, NULL);
    norm_forward(m, hidden_out, m->final_mean, m->final_rstd, last, params, o->final_norm_w,
                 o->final_norm_b, b->T);
    m->forward_T = train ? b->T : -1;
    m->forward_batch = train ? batch_fingerprint(b) : 0;
    m->forward_checkpointed = mode == FORWARD_TRAIN_CHECKPOINTED;
    m->forward_lora = train ? lora : NULL;
}

void model_forward(model *m, float *hidden_out, const float *params, const float *lora,
                   const packed_batch *b, forward_mode mode) {
    forward(m, hidden_out, params, m->n_adapters ? lora : NULL, b, mode, NULL);
}

void model_forward_cached(model *m, float *hidden_out, const float *params, const float *lora,
                          const packed_batch *b, kv_cache *cache) {
    forward(m, hidden_out, params, m->n_adapters ? lora : NULL, b, FORWARD_INFERENCE, cache);
}

/* ---- bfloat16 weights for generation ----------------------------------- */

static void bf16_matrix(const model *m, const float *params, uint16_t *out, long w, int n_in,
                        int n_out) {
    if (m->cfg.layout == WEIGHT_IN_OUT) /* stored [in, out]: the copy is [out, in] */
        bf16_from_f32_transposed(out + w, params + w, n_in, n_out);
    else
        bf16_from_f32(out + w, params + w, (long)n_out * n_in);
}

void model_bf16_block_weights(const model *m, const float *params, uint16_t *out) {
    const model_config *c = &m->cfg;
    const int q_dim = c->n_head * c->head_dim;
    for (int l = 0; l < c->n_layer; l++) {
        const layer_offsets *L = &m->off.layers[l];
        bf16_matrix(m, params, out, L->qkv_w, c->d_model, m->qkv_dim);
        bf16_matrix(m, params, out, L->o_w, q_dim, c->d_model);
        bf16_matrix(m, params, out, L->up_w, c->d_model, m->up_dim);
        bf16_matrix(m, params, out, L->down_w, c->d_ff, c->d_model);
    }
}

void model_bf16_weights(const model *m, const float *params, uint16_t *out) {
    const model_config *c = &m->cfg;
    model_bf16_block_weights(m, params, out);
    /* the lm_head is [V, d] in every family (tied: the embedding) */
    bf16_from_f32(out + m->off.lm_head, params + m->off.lm_head, (long)c->vocab * c->d_model);
}

long model_bf16_scratch_floats(const model *m, int threads) {
    const model_config *c = &m->cfg;
    int widest = c->d_model;
    if (c->d_ff > widest) widest = c->d_ff;
    if (c->n_head * c->head_dim > widest) widest = c->n_head * c->head_dim;
    return bf16_scratch_floats(widest, threads);
}

/* ---- backward ---------------------------------------------------------- */

/* A tensor's gradient inside grads; NULL for an absent tensor or a frozen
 * base (grads NULL: only the adapters train). */
static float *grad_or_null(float *grads, long offset) {
    return grads && offset >= 0 ? grads + offset : NULL;
}

/* d_inp += norm backward of d_out */
static void norm_backward(model *m, float *d_inp, float *grads, const float *d_out,
                          const float *inp, const float *params, long w, long bias,
                          const float *mean, const float *rstd, long T) {
    const model_config *c = &m->cfg;
    if (c->norm == NORM_LAYERNORM)
        layernorm_backward(d_inp, grad_or_null(grads, w), grad_or_null(grads, bias), d_out, inp,
                           params + w, mean, rstd, T, c->d_model, m->g.norm_scratch,
                           m->arena_threads);
    else
        rmsnorm_backward(d_inp, grad_or_null(grads, w), d_out, inp, params + w, rstd, T,
                         c->d_model, 0, m->g.norm_scratch, m->arena_threads);
}

/* The norm's forward output again, from its input and kept statistics. */
static void norm_recompute(const model *m, float *out, const float *inp, const float *params,
                           long w, long bias, const float *mean, const float *rstd, long T) {
    const model_config *c = &m->cfg;
    if (c->norm == NORM_LAYERNORM)
        layernorm_recompute(out, inp, params + w, params + bias, mean, rstd, T, c->d_model);
    else
        rmsnorm_recompute(out, inp, params + w, rstd, T, c->d_model);
}

/* The input gradient of a linear, and its weight (and bias) gradient unless
 * the base is frozen. */
static void linear_backward_unless_frozen(float *d_in, float *grads, long w, long bias,
                                          const float *d_out, int ld_d_out, const float *in,
                                          const float *params, int T, int n_in, int n_out,
                                          weight_layout layout, bool bf16) {
    linear_backward_input(d_in, d_out, ld_d_out, params + w, T, n_in, n_out, layout, false, bf16);
    if (grads)
        linear_backward_weight(grads + w, grad_or_null(grads, bias), d_out, ld_d_out, in, T, n_in,
                               n_out, layout, bf16);
}

/* Backward of Qwen3's q/k norm: d_q, d_k (after the norm) -> their columns
 * of d_qkv. */
static void qk_norm_backward(model *m, float *grads, const float *params, const layer_acts *a,
                             const layer_offsets *L, long T) {
    const model_config *c = &m->cfg;
    const grad_scratch *g = &m->g;
    const int hd = c->head_dim, nq = c->n_head, nkv = c->n_kv_head;
    const int q_dim = nq * hd, kv_dim = nkv * hd;
    rmsnorm_backward(g->d_q_pre, grad_or_null(grads, L->q_norm_w), g->d_q, a->q_pre,
                     params + L->q_norm_w, a->q_norm_rstd, T * nq, hd, 1, g->norm_scratch,
                     m->arena_threads);
    rmsnorm_backward(g->d_k_pre, grad_or_null(grads, L->k_norm_w), g->d_k, a->k_pre,
                     params + L->k_norm_w, a->k_norm_rstd, T * nkv, hd, 1, g->norm_scratch,
                     m->arena_threads);
    copy_columns(g->d_qkv, m->qkv_dim, g->d_q_pre, q_dim, T, q_dim);
    copy_columns(g->d_qkv + q_dim, m->qkv_dim, g->d_k_pre, kv_dim, T, kv_dim);
}

/* The MLP activation's backward: g->d_act (dL/dact on entry, act on exit)
 * -> g->d_up, and PolyNorm's parameter gradients unless the base is frozen. */
static void mlp_activation_backward(model *m, float *grads, const float *params,
                                    const layer_acts *a, const layer_offsets *L, long T) {
    const model_config *c = &m->cfg;
    const grad_scratch *g = &m->g;
    if (c->mlp == MLP_SWIGLU) {
        swiglu_backward(g->d_up, g->d_act, a->up, T, c->d_ff);
    } else if (c->mlp == MLP_POLYNORM) {
        polynorm_backward(g->d_up, g->d_act, a->up, params + L->act_wb, T, c->d_ff,
                          g->d_act_rows);
        if (!grads) return;
        for (int p = 0; p < POLYNORM_N_PARAMS; p++) { /* in token order: thread-independent */
            double sum = 0.0;
            for (long t = 0; t < T; t++) sum += g->d_act_rows[t * POLYNORM_N_PARAMS + p];
            grads[L->act_wb + p] += (float)sum;
        }
    } else {
        gelu_tanh_backward(g->d_up, g->d_act, a->up, T * c->d_ff);
    }
}

/* Differential attention's backward from g->d_att (dL/d of the subln's
 * output): the subln's, then the attention's into d_q, d_k and d_qkv's v
 * columns, then lambda's parameters unless the base is frozen. */
static void diff_attention_backward_layer(model *m, float *grads, const float *params,
                                          const layer_acts *a, const layer_offsets *L,
                                          const packed_batch *b, int layer, float *d_q,
                                          int ld_dq, float *d_k, int ld_dk) {
    const model_config *c = &m->cfg;
    const grad_scratch *g = &m->g;
    const long T = b->T;
    const int hd = c->head_dim, q_dim = c->n_head * hd, kv_dim = c->n_kv_head * hd;
    const int ld = m->qkv_dim;
    scale_into(g->d_att, T * q_dim, 1.0f - lambda_init(layer));
    rmsnorm_backward(g->d_att_raw, grad_or_null(grads, L->subln_w), g->d_att, a->att_raw,
                     params + L->subln_w, a->subln_rstd, T * (c->n_head / 2), 2 * hd, 1,
                     g->norm_scratch, m->arena_threads);
    attention_shape shape = attention_shape_of(m, b);
    float e[2], lambda = diff_lambda(m, params, L, layer, e);
    const float *q = a->qkv, *k = a->qkv + q_dim, *v = a->qkv + q_dim + kv_dim;
    diff_attention_backward(d_q, ld_dq, d_k, ld_dk, g->d_qkv + q_dim + kv_dim, ld, g->d_att_raw,
                            q_dim, a->lse, q, ld, k, ld, v, ld, lambda, g->d_lambda_parts, &shape);
    if (!grads) return;
    double d_lambda = 0.0; /* in task order: thread-independent */
    for (long t = 0; t < (long)b->n_seq * (c->n_kv_head / 2); t++) d_lambda += g->d_lambda_parts[t];
    /* d exp(q1 . k1) / d q1 = exp(q1 . k1) k1, and so on; the second term enters negated */
    const float d1 = (float)d_lambda * e[0], d2 = -(float)d_lambda * e[1];
    for (int i = 0; i < hd; i++) {
        grads[L->lambda_q1 + i] += d1 * params[L->lambda_k1 + i];
        grads[L->lambda_k1 + i] += d1 * params[L->lambda_q1 + i];
        grads[L->lambda_q2 + i] += d2 * params[L->lambda_k2 + i];
        grads[L->lambda_k2 + i] += d2 * params[L->lambda_q2 + i];
    }
}

/* On entry g->d_resid holds dL/d(layer output); on exit dL/d(layer input).
 * grads NULL: the base is frozen (no weight gradients); lora_grads gets the
 * adapters' gradients when lora is not NULL. */
static void layer_backward(model *m, float *grads, float *lora_grads, const float *params,
                           const float *lora, const layer_acts *a, const float *x,
                           const layer_offsets *L, const packed_batch *b, int layer) {
    const model_config *c = &m->cfg;
    const grad_scratch *g = &m->g;
    const long T = b->T;
    const int d = c->d_model, hd = c->head_dim, nq = c->n_head, nkv = c->n_kv_head;
    const int q_dim = nq * hd, kv_dim = nkv * hd, ld = m->qkv_dim;
    float *normed = m->f.normed;
    int first, last;
    site_adapters(m, layer, LORA_DOWN, &first, &last);
    const int down_adapted = lora && last > first;

    /* x_out = mid + down(act(up(norm2(mid)))): d_resid flows to mid as is.
     * The activation's backward leaves act(up) in d_act for down's weights;
     * down's adapters read act before that, so it is computed again here. */
    linear_backward_input(g->d_act, g->d_resid, d, params + L->down_w, (int)T, c->d_ff, d,
                          c->layout, false, m->bf16_products);
    if (down_adapted) {
        mlp_activation(m, m->f.act, a->up, params, L, T);
        lora_site_backward(m, g->d_act, lora_grads, g->d_resid, d, m->f.act, lora, T, layer,
                           LORA_DOWN);
    }
    mlp_activation_backward(m, grads, params, a, L, T);
    if (grads)
        linear_backward_weight(grads + L->down_w, grad_or_null(grads, L->down_b), g->d_resid, d,
                               g->d_act, (int)T, c->d_ff, d, c->layout, m->bf16_products);
    norm_recompute(m, normed, a->mid, params, L->mlp_norm_w, L->mlp_norm_b, a->n2_mean,
                   a->n2_rstd, T);
    linear_backward_unless_frozen(g->d_norm, grads, L->up_w, L->up_b, g->d_up, m->up_dim, normed,
                                  params, (int)T, d, m->up_dim, c->layout, m->bf16_products);
    lora_site_backward(m, g->d_norm, lora_grads, g->d_up, m->up_dim, normed, lora, T, layer,
                       LORA_UP);
    norm_backward(m, g->d_resid, grads, g->d_norm, a->mid, params, L->mlp_norm_w, L->mlp_norm_b,
                  a->n2_mean, a->n2_rstd, T);

    /* mid = x + o(attention(q, k, v)): d_resid flows to x as is */
    linear_backward_unless_frozen(g->d_att, grads, L->o_w, L->o_b, g->d_resid, d, a->att, params,
                                  (int)T, q_dim, d, c->layout, m->bf16_products);
    lora_site_backward(m, g->d_att, lora_grads, g->d_resid, d, a->att, lora, T, layer, LORA_O);
    attention_shape shape = attention_shape_of(m, b);
    const float *q = a->qkv, *k = a->qkv + q_dim, *v = a->qkv + q_dim + kv_dim;
    /* with q/k norm, d_q and d_k go through its backward first */
    float *d_q = c->qk_norm ? g->d_q : g->d_qkv, *d_k = c->qk_norm ? g->d_k : g->d_qkv + q_dim;
    int ld_dq = c->qk_norm ? q_dim : ld, ld_dk = c->qk_norm ? kv_dim : ld;
    if (c->attention == ATTENTION_DIFFERENTIAL)
        diff_attention_backward_layer(m, grads, params, a, L, b, layer, d_q, ld_dq, d_k, ld_dk);
    else
        attention_backward(d_q, ld_dq, d_k, ld_dk, g->d_qkv + q_dim + kv_dim, ld, g->d_att,
                           q_dim, a->lse, q, ld, k, ld, v, ld, &shape);
    if (c->rope_theta > 0) {
        rope_apply(d_q, ld_dq, b->positions, T, nq, hd, m->inv_freq, -1);
        rope_apply(d_k, ld_dk, b->positions, T, nkv, hd, m->inv_freq, -1);
    }
    if (c->qk_norm) qk_norm_backward(m, grads, params, a, L, T);
    norm_recompute(m, normed, x, params, L->attn_norm_w, L->attn_norm_b, a->n1_mean, a->n1_rstd,
                   T);
    linear_backward_unless_frozen(g->d_norm, grads, L->qkv_w, L->qkv_b, g->d_qkv, ld, normed,
                                  params, (int)T, d, ld, c->layout, m->bf16_products);
    lora_site_backward(m, g->d_norm, lora_grads, g->d_qkv, ld, normed, lora, T, layer, LORA_QKV);
    norm_backward(m, g->d_resid, grads, g->d_norm, x, params, L->attn_norm_w, L->attn_norm_b,
                  a->n1_mean, a->n1_rstd, T);
}

void model_backward(model *m, float *grads, float *lora_grads, const float *params,
                    const float *lora, float *d_hidden, const packed_batch *b) {
    const model_config *c = &m->cfg;
    const param_offsets *o = &m->off;
    const long T = b->T;
    lora = m->n_adapters ? lora : NULL;
    memset(m->g.d_resid, 0, sizeof(float) * T * c->d_model);
    norm_backward(m, m->g.d_resid, grads, d_hidden, m->resid[c->n_layer], params,
                  o->final_norm_w, o->final_norm_b, m->final_mean, m->final_rstd, T);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        layer_acts *a = &m->acts[m->forward_checkpointed ? 0 : l];
        if (m->forward_checkpointed) /* this layer's activations again, from its input */
            layer_forward(m, a, NULL, m->resid[l], params, lora, &o->layers[l], b, NULL, l);
        layer_backward(m, grads, lora_grads, params, lora, a, m->resid[l], &o->layers[l], b, l);
    }
    if (grads)
        embedding_backward(grads + o->wte, grad_or_null(grads, o->wpe), m->g.d_resid, b->tokens,
                           b->positions, T, c->d_model);
    m->forward_T = -1;
}
