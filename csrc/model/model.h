/* A decoder-only transformer (GPT-2, Llama, Qwen2, Qwen3, Motif families), fp32.
 *
 * All parameters sit in one float buffer owned by the caller (NumPy), the
 * gradients in a second buffer of the same layout; this file only knows the
 * offsets. Activations for the backward sit in one arena sized from the
 * batch (grown only when a larger batch arrives, never inside a step).
 *
 * A batch is packed: T tokens with their positions, the start of each
 * sequence and a branch id per token (see layers/attention.h). */
#ifndef CALIGN_MODEL_H
#define CALIGN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "layers/linear.h"
#include "layers/lora.h"

typedef enum { NORM_LAYERNORM, NORM_RMSNORM } norm_kind;
/* MLP_SWIGLU and MLP_POLYNORM are gated: up_w holds [gate; up] rows */
typedef enum { MLP_GELU_TANH, MLP_SWIGLU, MLP_POLYNORM } mlp_kind;
/* ATTENTION_DIFFERENTIAL: Motif's differential attention (layers/attention.h)
 * with its per-layer lambda and per-head RMSNorm ("subln") */
typedef enum { ATTENTION_STANDARD, ATTENTION_DIFFERENTIAL } attention_kind;

typedef struct {
    int n_layer, d_model, n_head, n_kv_head, head_dim, d_ff, vocab, max_positions;
    norm_kind norm;
    mlp_kind mlp;
    attention_kind attention;
    weight_layout layout;  /* WEIGHT_IN_OUT for GPT-2's Conv1D */
    int learned_positions; /* GPT-2's wpe */
    double rope_theta;     /* 0: no rotary embedding */
    int qkv_bias, o_bias, mlp_bias, qk_norm, tied_embeddings;
    float norm_eps;
    float attn_norm_eps; /* the differential attention's subln epsilon */
} model_config;

/* Offsets (in floats) of each tensor in the parameter buffer; -1 if absent. */
typedef struct {
    long attn_norm_w, attn_norm_b, qkv_w, qkv_b, q_norm_w, k_norm_w, o_w, o_b;
    long mlp_norm_w, mlp_norm_b, up_w, up_b, down_w, down_b;
    long act_wb;            /* PolyNorm's [w0, w1, w2, b] */
    long lambda_q1, lambda_k1, lambda_q2, lambda_k2, subln_w; /* differential attention */
} layer_offsets;

typedef struct {
    long wte, wpe, final_norm_w, final_norm_b, lm_head;
    layer_offsets *layers;
    long n_params;
} param_offsets;

/* One tensor of the layout, for the Python side to name. */
typedef struct {
    const char *role; /* e.g. "qkv_w"; the Python side maps roles to HF names */
    int layer;        /* -1 for tensors outside the layers */
    long offset;
    int ndim;
    long shape[2];
} param_entry;

typedef struct model model;

/* NULL with a message in err (size 256) when the config is inconsistent. */
model *model_create(const model_config *cfg, char *err);
void model_free(model *m);
const model_config *model_get_config(const model *m);
long model_param_count(const model *m);
/* Writes up to max entries, returns how many there are. */
int model_param_entries(const model *m, param_entry *entries, int max);
/* The lm_head weight [V, d] inside a parameter (or gradient) buffer. */
long model_lm_head_offset(const model *m);

typedef struct {
    const int32_t *tokens, *positions, *branch; /* [T] */
    const int32_t *seq_start;                   /* [n_seq + 1] */
    long T;
    int n_seq;
} packed_batch;

/* What a forward pass keeps for model_backward. */
typedef enum {
    FORWARD_INFERENCE,          /* nothing: one layer's buffers, reused */
    FORWARD_TRAIN,              /* every layer's activations */
    FORWARD_TRAIN_CHECKPOINTED, /* only the residual stream entering each layer;
                                   the backward runs each layer's forward again
                                   (activation checkpointing) */
    FORWARD_N_MODES
} forward_mode;
extern const char *const FORWARD_MODE_NAMES[FORWARD_N_MODES];

/* Sizes the arena for this batch and mode. Returns 0, or -1 when memory
 * could not be had. Call before forward. */
int model_prepare(model *m, const packed_batch *b, forward_mode mode);

/* LoRA adapters (layers/lora.h) on the model's projections, their A and B
 * in an adapter vector of n_floats floats the caller owns and passes to each
 * call; replaces any earlier set (n 0: none). Returns 0, -1 with a message in
 * err (256 bytes) when an adapter does not fit the model, -2 out of memory. */
int model_set_adapters(model *m, const lora_adapter *adapters, int n, long n_floats, char *err);
/* The adapter vector's length (0 without adapters). */
long model_adapter_floats(const model *m);

/* Writes the final normed hidden states [T, d] into hidden_out. A training
 * mode keeps in the arena what model_backward needs. lora: the adapter
 * vector, or NULL to run the base model alone (adapters off). */
void model_forward(model *m, float *hidden_out, const float *params, const float *lora,
                   const packed_batch *b, forward_mode mode);

/* Steering (repeng's control vectors, Zou et al. 2023): control [n_layer, d]
 * is added to every position of the residual stream after each decoder
 * block whose row is not all zero, in every forward (training, inference,
 * cached); the backward needs nothing more (an added constant). The rows are
 * copied; NULL removes the control. Returns 0, or -2 out of memory. */
int model_set_control(model *m, const float *control);

/* Whether the packed forward and backward (training, scoring, log-probs and
 * logits) multiply bfloat16-rounded operands with float32 accumulation
 * (gemm_model): bf16=True's mixed precision. Off at creation; generation's
 * products follow its weight_dtype instead. */
void model_set_bf16_products(model *m, bool on);
bool model_bf16_products(const model *m);

/* A frozen model (a reference) whose block matrices are read from
 * `weights` (model_bf16_block_weights' layout; the model keeps the pointer,
 * the caller the memory) instead of params, which then need not hold them:
 * its packed inference forwards run bfloat16 products (turned on for good).
 * NULL: params again. Training forwards, backward and generation of such a
 * model are refused by the binding. */
void model_set_frozen_bf16(model *m, const uint16_t *weights);
bool model_frozen_bf16(const model *m);

/* An inference forward that writes the residual stream after each decoder
 * block layers[0..n) (ascending, distinct, in [0, n_layer)) into
 * out[i * T * d ...], the control included, and stops after the last of
 * them (no final norm). Needs model_prepare(FORWARD_INFERENCE) first. */
void model_forward_layers(model *m, float *out, const float *params, const float *lora,
                          const packed_batch *b, const int *layers, int n);

/* Bytes of the activation arena as now sized. */
size_t model_arena_bytes(const model *m);

/* How many times the arena or the workspace has been (re)allocated: both
 * grow to the largest call seen, then a call of no larger shape allocates
 * neither. */
long model_workspace_allocations(const model *m);

/* Given d_hidden [T, d] (gradient of the loss at the final normed hidden
 * states), ADDS the parameter gradients into grads, and the adapters'
 * gradients into lora_grads when lora is not NULL. grads NULL: the base is
 * frozen, and none of its weight gradients is computed (LoRA). Needs the
 * previous model_forward in a training mode on the same batch with the same
 * params and adapters. d_hidden is used as scratch. */
void model_backward(model *m, float *grads, float *lora_grads, const float *params,
                    const float *lora, float *d_hidden, const packed_batch *b);

/* A KV cache for generation: for each layer, k and v of n_slots sequences
 * of up to capacity positions, [n_layer][n_slots][capacity][n_kv_head * head_dim]. */
typedef struct {
    float *k, *v;
    int n_slots, capacity;
    const int32_t *run_slot; /* [n_seq] cache slot of each run of the batch */
    float *scores;           /* scratch: capacity floats per thread */
    int scores_threads;      /* threads scores has room for */
    /* NULL, or the matrix weights as bfloat16 (model_bf16_weights), which the
     * blocks' linear layers then read instead of params'; bf16_scratch holds
     * model_bf16_scratch_floats floats */
    const uint16_t *bf16;
    float *bf16_scratch;
    int bf16_scratch_threads; /* threads bf16_scratch has panels for */
} kv_cache;

/* out (model_param_count entries) := the matrix weights of params (the
 * blocks' linear layers and the lm_head) rounded to bfloat16, each at its
 * offset in params and stored [out, in] (GPT-2's Conv1D weights transposed);
 * the other entries are left as they are. */
void model_bf16_weights(const model *m, const float *params, uint16_t *out);
/* The same for the blocks' linear layers only (what model_set_frozen_bf16 reads). */
void model_bf16_block_weights(const model *m, const float *params, uint16_t *out);
/* Scratch floats a forward with bfloat16 weights needs on `threads` threads. */
long model_bf16_scratch_floats(const model *m, int threads);

/* Forward of new tokens appended to the cache: run s of the batch continues
 * slot run_slot[s], each token at cache index = its position. Writes the
 * final hidden states; needs model_prepare(FORWARD_INFERENCE) first. */
void model_forward_cached(model *m, float *hidden_out, const float *params, const float *lora,
                          const packed_batch *b, kv_cache *cache);

/* Floats one layer of a cache holds (k or v). */
long kv_cache_layer_floats(const model *m, int n_slots, int capacity);

/* A workspace of at least `bytes` owned by the model, kept between calls
 * and grown when a call needs more (counted by model_workspace_allocations);
 * the scoring and generation calls carve their buffers from it (core/bump.h).
 * Its contents do not survive the next call. NULL when memory could not be had. */
void *model_workspace(model *m, size_t bytes);

/* Whether model_backward may run for batch b with adapters lora (a training
 * forward of the same batch with the same adapters came last). */
int model_ready_for_backward(const model *m, const packed_batch *b, const float *lora);

#endif
