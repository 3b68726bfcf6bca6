#include "model/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/threads.h"
#include "layers/linear.h"

struct decode_session {
    const model *owner;
    int n_slots, capacity;
    int *length;        /* [n_slots] tokens each slot holds */
    float *k, *v;       /* [n_layer][n_slots][capacity][kv_dim], as kv_cache lays them out */
    float *last_hidden; /* [n_slots, d] the runs' last hidden states, for their logits */
    float *scores;      /* attention scratch: capacity floats per thread */
    int scores_threads;
    int32_t *positions, *branch; /* [n_slots * capacity] the packed batch of an append */
    size_t bytes;
};

static void *take(size_t bytes, size_t *total) {
    *total += bytes;
    return calloc(1, bytes ? bytes : 1);
}

decode_session *session_create(const model *m, int n_slots, int capacity, int *status, char *err) {
    const model_config *c = model_get_config(m);
    *status = CALIGN_EINVAL;
    if (n_slots < 1) {
        snprintf(err, CALIGN_ERR_LEN, "n_slots must be >= 1, got %d", n_slots);
        return NULL;
    }
    if (capacity < 1 || capacity > c->max_positions) {
        snprintf(err, CALIGN_ERR_LEN, "capacity must be in [1, %d] (the model's maximum "
                 "positions), got %d", c->max_positions, capacity);
        return NULL;
    }
    /* every cache index and batch row must fit the engine's long and int32 */
    const double cache_floats = (double)n_slots * capacity * c->n_kv_head * c->head_dim;
    if (cache_floats * c->n_layer > 1e15 || (double)n_slots * capacity > INT32_MAX) {
        snprintf(err, CALIGN_ERR_LEN, "a cache of %d slots x %d positions is too large",
                 n_slots, capacity);
        return NULL;
    }
    *status = CALIGN_ENOMEM;
    decode_session *s = calloc(1, sizeof(decode_session));
    if (!s) {
        snprintf(err, CALIGN_ERR_LEN, "out of memory for a session");
        return NULL;
    }
    const size_t layer_floats = (size_t)kv_cache_layer_floats(m, n_slots, capacity);
    const size_t slot_tokens = (size_t)n_slots * capacity;
    s->owner = m;
    s->n_slots = n_slots;
    s->capacity = capacity;
    s->length = take(sizeof(int) * n_slots, &s->bytes);
    s->k = take(sizeof(float) * layer_floats * c->n_layer, &s->bytes);
    s->v = take(sizeof(float) * layer_floats * c->n_layer, &s->bytes);
    s->last_hidden = take(sizeof(float) * n_slots * c->d_model, &s->bytes);
    s->positions = take(sizeof(int32_t) * slot_tokens, &s->bytes);
    s->branch = take(sizeof(int32_t) * slot_tokens, &s->bytes);
    if (!s->length || !s->k || !s->v || !s->last_hidden || !s->positions || !s->branch) {
        snprintf(err, CALIGN_ERR_LEN, "out of memory for a KV cache of %d slots x %d positions "
                 "(%.3g GB)", n_slots, capacity, s->bytes / 1e9);
        session_free(s);
        return NULL;
    }
    *status = CALIGN_OK;
    return s;
}

void session_free(decode_session *s) {
    if (!s) return;
    free(s->length);
    free(s->k);
    free(s->v);
    free(s->last_hidden);
    free(s->scores);
    free(s->positions);
    free(s->branch);
    free(s);
}

int session_slots(const decode_session *s) { return s->n_slots; }
int session_capacity(const decode_session *s) { return s->capacity; }
int session_length(const decode_session *s, int slot) { return s->length[slot]; }
size_t session_bytes(const decode_session *s) {
    return s->bytes + sizeof(float) * (size_t)s->capacity * s->scores_threads;
}

static int bad_slot(const decode_session *s, const char *what, int slot, char *err) {
    if (slot >= 0 && slot < s->n_slots) return 0;
    snprintf(err, CALIGN_ERR_LEN, "%s %d is outside [0, %d) (the session's slots)", what, slot,
             s->n_slots);
    return 1;
}

/* Checks the runs of an append before anything changes. */
static int check_runs(const decode_session *s, const int32_t *run_start, const int32_t *run_slot,
                      int n_runs, char *err) {
    if (n_runs < 1 || n_runs > s->n_slots) {
        snprintf(err, CALIGN_ERR_LEN, "an append takes 1 to %d runs (one per slot), got %d",
                 s->n_slots, n_runs);
        return CALIGN_EINVAL;
    }
    for (int r = 0; r < n_runs; r++) {
        const int slot = run_slot[r], n = run_start[r + 1] - run_start[r];
        if (bad_slot(s, "slot", slot, err)) return CALIGN_EINVAL;
        for (int q = 0; q < r; q++)
            if (run_slot[q] == slot) {
                snprintf(err, CALIGN_ERR_LEN, "slot %d is given twice in one append", slot);
                return CALIGN_EINVAL;
            }
        if (n < 1) {
            snprintf(err, CALIGN_ERR_LEN, "the tokens appended to slot %d are empty", slot);
            return CALIGN_EINVAL;
        }
        if ((long)s->length[slot] + n > s->capacity) {
            snprintf(err, CALIGN_ERR_LEN, "slot %d holds %d tokens: %d more exceed the "
                     "session's capacity %d", slot, s->length[slot], n, s->capacity);
            return CALIGN_EINVAL;
        }
    }
    return CALIGN_OK;
}

int session_append(decode_session *s, model *m, const float *params, const float *lora,
                   const int32_t *tokens, const int32_t *run_start, const int32_t *run_slot,
                   int n_runs, int all_logits, float *hidden_out, float *logits_out, char *err) {
    if (m != s->owner) {
        snprintf(err, CALIGN_ERR_LEN, "the session was made for another model");
        return CALIGN_EINVAL;
    }
    int status = check_runs(s, run_start, run_slot, n_runs, err);
    if (status != CALIGN_OK) return status;
    const model_config *c = model_get_config(m);
    const int threads = calign_num_threads();
    if (threads > s->scores_threads) {
        float *grown = realloc(s->scores, sizeof(float) * (size_t)s->capacity * threads);
        if (!grown) {
            snprintf(err, CALIGN_ERR_LEN, "out of memory for the attention scratch");
            return CALIGN_ENOMEM;
        }
        s->scores = grown;
        s->scores_threads = threads;
    }
    /* each token's position is its index in its slot's cache */
    const long T = run_start[n_runs];
    for (int r = 0; r < n_runs; r++)
        for (int t = run_start[r]; t < run_start[r + 1]; t++)
            s->positions[t] = s->length[run_slot[r]] + (t - run_start[r]);
    packed_batch batch = {tokens, s->positions, s->branch, run_start, T, n_runs};
    if (model_prepare(m, &batch, FORWARD_INFERENCE) < 0) {
        snprintf(err, CALIGN_ERR_LEN, "out of memory for the activations");
        return CALIGN_ENOMEM;
    }
    kv_cache cache = {s->k, s->v, s->n_slots, s->capacity, run_slot, s->scores,
                      s->scores_threads};
    model_forward_cached(m, hidden_out, params, lora, &batch, &cache);
    for (int r = 0; r < n_runs; r++) s->length[run_slot[r]] += run_start[r + 1] - run_start[r];

    const float *head = params + model_lm_head_offset(m);
    const int d = c->d_model;
    if (all_logits) {
        linear_forward(logits_out, c->vocab, hidden_out, head, NULL, (int)T, d, c->vocab,
                       WEIGHT_OUT_IN, false);
        return CALIGN_OK;
    }
    for (int r = 0; r < n_runs; r++)
        memcpy(s->last_hidden + (size_t)r * d, hidden_out + (size_t)(run_start[r + 1] - 1) * d,
               sizeof(float) * d);
    linear_forward(logits_out, c->vocab, s->last_hidden, head, NULL, n_runs, d, c->vocab,
                   WEIGHT_OUT_IN, false);
    return CALIGN_OK;
}

int session_truncate(decode_session *s, int slot, int length, char *err) {
    if (bad_slot(s, "slot", slot, err)) return CALIGN_EINVAL;
    if (length < 0 || length > s->length[slot]) {
        snprintf(err, CALIGN_ERR_LEN, "length must be in [0, %d] (what slot %d holds), got %d",
                 s->length[slot], slot, length);
        return CALIGN_EINVAL;
    }
    s->length[slot] = length;
    return CALIGN_OK;
}

int session_copy(decode_session *s, int from, int to, char *err) {
    if (bad_slot(s, "source slot", from, err) || bad_slot(s, "target slot", to, err))
        return CALIGN_EINVAL;
    if (from == to) return CALIGN_OK;
    const model_config *c = model_get_config(s->owner);
    const size_t kv_dim = (size_t)c->n_kv_head * c->head_dim;
    const size_t layer_floats = (size_t)kv_cache_layer_floats(s->owner, s->n_slots, s->capacity);
    const size_t slot_floats = (size_t)s->capacity * kv_dim, used = s->length[from] * kv_dim;
    for (int l = 0; l < c->n_layer; l++) {
        const size_t base = l * layer_floats;
        memcpy(s->k + base + to * slot_floats, s->k + base + from * slot_floats,
               sizeof(float) * used);
        memcpy(s->v + base + to * slot_floats, s->v + base + from * slot_floats,
               sizeof(float) * used);
    }
    s->length[to] = s->length[from];
    return CALIGN_OK;
}
