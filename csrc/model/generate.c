#include "model/generate.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bf16.h"
#include "core/bump.h"
#include "core/simd.h"
#include "core/status.h"
#include "core/threads.h"

/* splitmix64 (Steele et al. 2014): a small, seedable generator; each returned
 * sequence has its own stream, so samples do not depend on batching. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *state) { return (splitmix64(state) >> 11) * 0x1.0p-53; }

typedef struct {
    float value;
    int index;
} scored_token;

/* A float's bits as an unsigned key whose order is the float order (IEEE 754:
 * flip all bits of negatives, the sign bit of the rest); -0 counts as +0. */
static uint32_t ordered_key(float x) {
    union { float f; uint32_t u; } bits = {x + 0.0f};
    return bits.u & 0x80000000u ? ~bits.u : bits.u | 0x80000000u;
}

/* Sorts work[0..n) by value descending, ties by index ascending (the input is
 * in index order and the sort is stable): three passes of an 11-bit LSD radix
 * sort of the complemented keys. buffer: n scored_tokens. */
static void sort_descending(scored_token *work, int n, scored_token *buffer) {
    int count[2048];
    scored_token *from = work, *to = buffer;
    for (int shift = 0; shift < 33; shift += 11) {
        memset(count, 0, sizeof(count));
        for (int i = 0; i < n; i++) count[(~ordered_key(from[i].value) >> shift) & 2047]++;
        for (int b = 0, sum = 0; b < 2048; b++) {
            int c = count[b];
            count[b] = sum;
            sum += c;
        }
        for (int i = 0; i < n; i++) to[count[(~ordered_key(from[i].value) >> shift) & 2047]++] = from[i];
        scored_token *t = from;
        from = to;
        to = t;
    }
    if (from != work) memcpy(work, from, sizeof(scored_token) * n);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* argmax of x[0..n) leaving out the index `banned` (-1: none; n > 1 otherwise). */
static int argmax_except(const float *x, int n, int banned) {
    int best = banned == 0 ? 1 : 0;
    for (int i = best + 1; i < n; i++)
        if (i != banned && x[i] > x[best]) best = i;
    return best;
}

/* The k-th largest of x[0..n) (1 <= k <= n), by quickselect on scratch (n floats). */
static float kth_largest(const float *x, int n, int k, float *scratch) {
    memcpy(scratch, x, sizeof(float) * n);
    int lo = 0, hi = n - 1, target = k - 1; /* position in descending order */
    while (lo < hi) {
        float pivot = scratch[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (scratch[i] > pivot) i++;
            while (scratch[j] < pivot) j--;
            if (i <= j) {
                float t = scratch[i];
                scratch[i++] = scratch[j];
                scratch[j--] = t;
            }
        }
        if (target <= j) hi = j;
        else if (target >= i) lo = i;
        else break; /* scratch[j+1 .. i-1] all equal the pivot */
    }
    return scratch[target];
}

enum { NON_FINITE_LOGITS = -1, TEMPERATURE_OVERFLOW = -2, RESET_BIAS_OVERFLOW = -3 };

/* Whether x[0..n) holds no NaN or infinity: x * 0 is NaN exactly for those,
 * and the sum vectorises. */
CALIGN_SIMD_CLONES
static int all_finite(const float *x, int n) {
    float zero = 0.0f;
#pragma omp simd reduction(+ : zero)
    for (int i = 0; i < n; i++) zero += x[i] * 0.0f;
    return zero == 0.0f;
}

/* weight[v] = exp(scaled[v] - top) <= 1, vectorised (about 2 ulp). */
CALIGN_SIMD_CLONES
static void unnormalised_probabilities(float *weight, const float *scaled, float top, int V) {
    for (int v = 0; v < V; v++) weight[v] = exp_nonpositive(scaled[v] - top);
}

/* transformers' sampling pipeline: logits / temperature, keep the top_k
 * largest (ties with the k-th kept), keep the smallest top set whose
 * probability reaches top_p, then draw from the renormalised rest.
 *
 * Only tokens that can survive the filters are sorted: with top_k, those at
 * or above the k-th largest value; with top_p alone, a token of probability
 * p_i ranked below the first stays only if the mass of it and everything
 * ranked below it, at most V p_i, exceeds 1 - top_p, so tokens with
 * V p_i <= 1 - top_p never do (the test below keeps a margin: extra
 * candidates change nothing). With no filter nothing is sorted and the draw
 * walks the tokens in index order.
 * banned (-1: none) is a token that cannot be drawn (probability 0; V > 1).
 * Scratch of the calling thread: work, 2V scored_tokens; buffer, 3V floats.
 * Returns NON_FINITE_LOGITS when a logit is NaN or infinite, TEMPERATURE_OVERFLOW
 * when logits / temperature overflow float. */
static int sample_token(const float *logits, int V, const generate_settings *s, int banned,
                        uint64_t *rng, scored_token *work, float *buffer) {
    if (!all_finite(logits, V)) return NON_FINITE_LOGITS;
    if (!s->do_sample) return argmax_except(logits, V, banned);
    const int top_k = s->top_k > 0 && s->top_k < V ? s->top_k : 0;
    const int nucleus = s->top_p < 1.0f;
    float *scaled = buffer, *weight = buffer + V, *select = buffer + 2 * V;
    for (int v = 0; v < V; v++) scaled[v] = logits[v] / s->temperature;
    if (banned >= 0) scaled[banned] = -INFINITY; /* its weight below is 0 */
    const float top = scaled[argmax(scaled, V)];
    if (!isfinite(top)) return TEMPERATURE_OVERFLOW;
    unnormalised_probabilities(weight, scaled, top, V);
    double total = 0.0;
    for (int v = 0; v < V; v++) total += weight[v];
    if (!top_k && !nucleus) {
        double u = uniform01(rng) * total, cum = 0.0;
        for (int v = 0; v < V; v++) {
            cum += weight[v];
            if (u < cum) return v;
        }
        return argmax(scaled, V);
    }
    int n = 0;
    if (top_k) {
        float kth = kth_largest(scaled, V, top_k, select);
        total = 0.0;
        for (int v = 0; v < V; v++) {
            if (scaled[v] < kth || v == banned) continue;
            work[n++] = (scored_token){scaled[v], v};
            total += weight[v];
        }
    } else {
        const double floor_mass = 0.999 * (1.0 - s->top_p) / V * total;
        for (int v = 0; v < V; v++)
            if (scaled[v] == top || weight[v] > floor_mass)
                work[n++] = (scored_token){scaled[v], v};
    }
    sort_descending(work, n, work + V);
    int kept = n;
    if (nucleus) {
        /* a token stays while the mass of it and everything below it exceeds 1 - top_p */
        double tail = 1.0;
        int r = 0;
        for (; r < n; r++) {
            if (tail <= 1.0 - s->top_p && r > 0) break;
            tail -= weight[work[r].index] / total;
        }
        kept = r;
        total = 0.0;
        for (r = 0; r < kept; r++) total += weight[work[r].index];
    }
    double u = uniform01(rng) * total, cum = 0.0;
    for (int r = 0; r < kept; r++) {
        cum += weight[work[r].index];
        if (u < cum) return work[r].index;
    }
    return work[kept - 1].index;
}

/* log softmax(logits / temperature)[token] over the whole vocabulary (no
 * filter, no penalty): the token's log-prob as a training forward at that
 * temperature scores it. scratch: 2V floats. */
static float token_logprob(const float *logits, int V, float temperature, int token,
                           float *scratch) {
    float *scaled = scratch, *weight = scratch + V;
    for (int v = 0; v < V; v++) scaled[v] = logits[v] / temperature;
    const float top = scaled[argmax(scaled, V)];
    unnormalised_probabilities(weight, scaled, top, V);
    double total = 0.0;
    for (int v = 0; v < V; v++) total += weight[v];
    return (float)((double)scaled[token] - top - log(total));
}

/* The tokens a sequence holds so far, one bit each, for the repetition penalty. */
static long seen_words(int V) { return (V + 63) / 64; }

static void mark_seen(uint64_t *seen, int token) { seen[token / 64] |= 1ULL << (token % 64); }

/* transformers' RepetitionPenaltyLogitsProcessor: every token the sequence
 * holds has its logit divided by the penalty if positive, else multiplied. */
static void penalise_repetitions(float *logits, const uint64_t *seen, int V, float penalty) {
    for (long w = 0; w < seen_words(V); w++) {
        for (uint64_t bits = seen[w]; bits; bits &= bits - 1) {
            int v = (int)(w * 64 + __builtin_ctzll(bits));
            logits[v] = logits[v] > 0 ? logits[v] / penalty : logits[v] * penalty;
        }
    }
}

static int is_eos(int token, const generate_settings *s) {
    for (int e = 0; e < s->n_eos; e++)
        if (token == s->eos_token_ids[e]) return 1;
    return 0;
}

/* Every buffer of one model_generate call, carved from the model's workspace:
 * the KV cache, the hidden states and logits, each thread's sampling
 * scratch (3V for sample_token, V for a row's penalised copy), the tokens
 * each sequence holds (with a repetition penalty), the drawn tokens'
 * log-probs of a step, and the packed batch of each step. */
typedef struct {
    float *k, *v, *scores, *hidden, *last_hidden, *logits, *sample_buffer, *step_logprobs;
    scored_token *work;
    int32_t *next_token, *tokens, *positions, *branch, *starts, *run_slot, *active,
        *next_position, *resets, *discarded;
    uint64_t *rng, *seen;
    uint16_t *bf16;     /* the bfloat16 matrix weights, or NULL */
    float *bf16_scratch;
} generate_buffers;

static void plan_generate_buffers(generate_buffers *g, bump *b, const model *m, int n_slots,
                                  int capacity, long T_max, int threads, int penalised,
                                  int bf16) {
    const model_config *c = model_get_config(m);
    const size_t V = c->vocab, d = c->d_model, slots = n_slots, T = T_max;
    const size_t layer_floats = kv_cache_layer_floats(m, n_slots, capacity);
    g->k = bump_take(b, sizeof(float) * layer_floats * c->n_layer);
    g->v = bump_take(b, sizeof(float) * layer_floats * c->n_layer);
    g->scores = bump_take(b, sizeof(float) * (size_t)capacity * threads);
    g->hidden = bump_take(b, sizeof(float) * T * d);
    g->last_hidden = bump_take(b, sizeof(float) * slots * d);
    g->logits = bump_take(b, sizeof(float) * slots * V);
    g->work = bump_take(b, sizeof(scored_token) * 2 * V * threads);
    g->sample_buffer = bump_take(b, sizeof(float) * 4 * V * threads);
    g->step_logprobs = bump_take(b, sizeof(float) * slots);
    g->next_token = bump_take(b, sizeof(int32_t) * slots);
    g->tokens = bump_take(b, sizeof(int32_t) * T);
    g->positions = bump_take(b, sizeof(int32_t) * T);
    g->branch = bump_take(b, sizeof(int32_t) * T);
    g->starts = bump_take(b, sizeof(int32_t) * (T + 1));
    g->run_slot = bump_take(b, sizeof(int32_t) * T);
    g->active = bump_take(b, sizeof(int32_t) * slots);
    g->next_position = bump_take(b, sizeof(int32_t) * slots);
    g->resets = bump_take(b, sizeof(int32_t) * slots);
    g->discarded = bump_take(b, sizeof(int32_t) * slots);
    g->rng = bump_take(b, sizeof(uint64_t) * slots);
    g->seen = penalised ? bump_take(b, sizeof(uint64_t) * slots * seen_words(c->vocab)) : NULL;
    g->bf16 = bf16 ? bump_take(b, sizeof(uint16_t) * model_param_count(m)) : NULL;
    g->bf16_scratch = bf16 ? bump_take(b, sizeof(float) * model_bf16_scratch_floats(m, threads))
                           : NULL;
}

int model_generate(model *m, const float *params, const float *lora, const int32_t *prompt_tokens,
                   const int32_t *prompt_start, int n_prompts, const generate_settings *s,
                   int32_t *out_tokens, int32_t *out_lengths, float *out_logprobs,
                   int32_t *out_discarded, char *err) {
    const model_config *c = model_get_config(m);
    const int R = s->num_return_sequences, n_slots = n_prompts * R, V = c->vocab, d = c->d_model;
    const int resettable = s->has_reset_token;
    if (resettable && (s->reset_token_id < 0 || s->reset_token_id >= V || V < 2 ||
                       s->max_resets < 0 || !isfinite(s->reset_logit_bias))) {
        snprintf(err, CALIGN_ERR_LEN, "reset token %d with max_resets %d and logit bias %g: the "
                 "id must lie in [0, %d) of a vocabulary of at least 2 tokens, max_resets must "
                 "be >= 0 and the bias finite", s->reset_token_id, s->max_resets,
                 (double)s->reset_logit_bias, V);
        return CALIGN_EINVAL;
    }
    int longest_prompt = 0;
    for (int i = 0; i < n_prompts; i++) {
        int L = prompt_start[i + 1] - prompt_start[i];
        longest_prompt = L > longest_prompt ? L : longest_prompt;
    }
    const int capacity = longest_prompt + s->max_new_tokens;
    const long T_prefill = prompt_start[n_prompts];
    const long T_max = T_prefill > n_slots ? T_prefill : n_slots;
    const int threads = calign_num_threads();
    const long layer_floats = kv_cache_layer_floats(m, n_slots, capacity);

    const int penalised = s->repetition_penalty != 1.0f;
    generate_buffers g;
    bump b = {NULL, 0};
    plan_generate_buffers(&g, &b, m, n_slots, capacity, T_max, threads, penalised,
                          s->bf16_weights);
    if (!(b.base = model_workspace(m, b.used))) {
        snprintf(err, CALIGN_ERR_LEN, "out of memory for the KV cache (%d sequences x %d "
                 "positions: %.3g GB)", n_slots, capacity, b.used / 1e9);
        return CALIGN_ENOMEM;
    }
    b.used = 0;
    plan_generate_buffers(&g, &b, m, n_slots, capacity, T_max, threads, penalised,
                          s->bf16_weights);
    if (g.bf16) model_bf16_weights(m, params, g.bf16);
    float *k = g.k, *v = g.v, *hidden = g.hidden, *last_hidden = g.last_hidden,
          *logits = g.logits;
    int32_t *next_token = g.next_token, *tokens = g.tokens, *positions = g.positions,
            *branch = g.branch, *starts = g.starts, *run_slot = g.run_slot, *active = g.active,
            *next_position = g.next_position;
    uint64_t *rng = g.rng;
    memset(branch, 0, sizeof(int32_t) * T_max);
    for (int i = 0; i < n_slots; i++) {
        uint64_t seed_state = s->seed ^ (0xA0761D6478BD642FULL * (s->first_sequence + (uint64_t)i + 1));
        rng[i] = splitmix64(&seed_state);
        out_lengths[i] = 0;
        g.resets[i] = 0;
        g.discarded[i] = -1;
    }
    kv_cache cache = {k, v, n_slots, capacity, run_slot, g.scores, threads, g.bf16,
                      g.bf16_scratch, threads};
    if (penalised) {
        memset(g.seen, 0, sizeof(uint64_t) * n_slots * seen_words(V));
        for (int slot = 0; slot < n_slots; slot++) {
            const int i = slot / R;
            for (int t = prompt_start[i]; t < prompt_start[i + 1]; t++)
                mark_seen(g.seen + slot * seen_words(V), prompt_tokens[t]);
        }
    }

    /* Prefill: every prompt once, into the first slot of its group. */
    for (int i = 0; i < n_prompts; i++) {
        starts[i] = prompt_start[i];
        run_slot[i] = i * R;
        for (int t = prompt_start[i]; t < prompt_start[i + 1]; t++) {
            tokens[t] = prompt_tokens[t];
            positions[t] = t - prompt_start[i];
        }
    }
    starts[n_prompts] = (int32_t)T_prefill;
    packed_batch batch = {tokens, positions, branch, starts, T_prefill, n_prompts};
    if (model_prepare(m, &batch, FORWARD_INFERENCE) < 0) {
        snprintf(err, CALIGN_ERR_LEN, "out of memory for the activations");
        return CALIGN_ENOMEM;
    }
    model_forward_cached(m, hidden, params, lora, &batch, &cache);
    /* The prompt's cache is copied to the other slots of its group. */
    for (int i = 0; i < n_prompts; i++) {
        int L = prompt_start[i + 1] - prompt_start[i];
        for (int r = 0; r < R; r++) {
            int slot = i * R + r;
            memcpy(last_hidden + (long)slot * d, hidden + (long)(prompt_start[i + 1] - 1) * d,
                   sizeof(float) * d);
            next_position[slot] = L;
            if (r == 0) continue;
            long kv_dim = (long)c->n_kv_head * c->head_dim;
            for (int l = 0; l < c->n_layer; l++) {
                long base = (long)l * layer_floats;
                memcpy(k + base + (long)slot * capacity * kv_dim,
                       k + base + (long)(i * R) * capacity * kv_dim, sizeof(float) * L * kv_dim);
                memcpy(v + base + (long)slot * capacity * kv_dim,
                       v + base + (long)(i * R) * capacity * kv_dim, sizeof(float) * L * kv_dim);
            }
        }
    }
    int n_active = n_slots;
    for (int i = 0; i < n_slots; i++) active[i] = i;
    const float *head = params + model_lm_head_offset(m);
    for (int step = 0; step < s->max_new_tokens && n_active > 0; step++) {
        /* logits of each active slot's last hidden state, then its next token */
        if (g.bf16)
            gemm_f32_bf16(n_active, V, d, last_hidden, d, g.bf16 + model_lm_head_offset(m), d,
                          logits, V, g.bf16_scratch, threads);
        else
            linear_forward(logits, V, last_hidden, head, NULL, n_active, d, V, WEIGHT_OUT_IN,
                           false);
        /* each sequence draws from its own generator: independent of the thread count */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int a = 0; a < n_active; a++) {
            int me = omp_get_thread_num();
            float *scratch = g.sample_buffer + (size_t)me * 4 * V;
            const float *row = logits + (long)a * V, *draw = row;
            /* a sequence that has used up its resets can no longer draw the reset token */
            const int banned = resettable && g.resets[active[a]] >= s->max_resets
                                   ? s->reset_token_id : -1;
            const int biased = resettable && banned < 0 && s->reset_logit_bias != 0.0f;
            if ((penalised || biased) && all_finite(row, V)) {
                /* the row itself stays as the model gave it (return_logprobs reads it) */
                float *copy = scratch + 3 * V;
                memcpy(copy, row, sizeof(float) * V);
                if (penalised)
                    penalise_repetitions(copy, g.seen + active[a] * seen_words(V), V,
                                         s->repetition_penalty);
                if (biased) {
                    copy[s->reset_token_id] += s->reset_logit_bias;
                    if (!isfinite(copy[s->reset_token_id])) {
                        next_token[a] = RESET_BIAS_OVERFLOW;
                        continue;
                    }
                }
                draw = copy;
            }
            next_token[a] = sample_token(draw, V, s, banned, &rng[active[a]],
                                         g.work + (size_t)me * 2 * V, scratch);
            if (out_logprobs && next_token[a] >= 0) {
                g.step_logprobs[a] = token_logprob(row, V, s->temperature, next_token[a], scratch);
                if (!isfinite(g.step_logprobs[a])) next_token[a] = TEMPERATURE_OVERFLOW;
            }
        }
        for (int a = 0; a < n_active; a++)
            if (next_token[a] < 0) {
                if (next_token[a] == NON_FINITE_LOGITS) {
                    snprintf(err, CALIGN_ERR_LEN, "the logits at new token %d are not finite "
                             "(NaN or infinity in the parameters?)", step + 1);
                    return CALIGN_ENONFINITE;
                }
                if (next_token[a] == RESET_BIAS_OVERFLOW) {
                    snprintf(err, CALIGN_ERR_LEN, "the reset token's logit at new token %d plus "
                             "reset_logit_bias %g overflows float32", step + 1,
                             (double)s->reset_logit_bias);
                    return CALIGN_EINVAL;
                }
                snprintf(err, CALIGN_ERR_LEN, "the logits at new token %d divided by the "
                         "temperature %g overflow float32: use a larger temperature%s", step + 1,
                         (double)s->temperature,
                         s->do_sample ? ", or greedy decoding (do_sample=False)" : "");
                return CALIGN_EINVAL;
            }
        int still = 0;
        for (int a = 0; a < n_active; a++) {
            int slot = active[a];
            int token = next_token[a];
            if (resettable && token == s->reset_token_id) {
                /* backtrack: what the sequence returned so far is dropped with the reset
                 * token; the KV cache keeps both */
                g.resets[slot]++;
                g.discarded[slot] = (g.discarded[slot] < 0 ? 0 : g.discarded[slot]) +
                                    out_lengths[slot] + 1;
                out_lengths[slot] = 0;
            } else {
                if (out_logprobs)
                    out_logprobs[(long)slot * s->max_new_tokens + out_lengths[slot]] =
                        g.step_logprobs[a];
                out_tokens[(long)slot * s->max_new_tokens + out_lengths[slot]++] = token;
            }
            if (penalised) mark_seen(g.seen + slot * seen_words(V), token);
            if (is_eos(token, s) || step + 1 == s->max_new_tokens) continue;
            tokens[still] = token;
            positions[still] = next_position[slot]++;
            run_slot[still] = slot;
            starts[still] = still;
            active[still++] = slot;
        }
        n_active = still;
        if (n_active == 0) break;
        starts[n_active] = n_active;
        batch = (packed_batch){tokens, positions, branch, starts, n_active, n_active};
        if (model_prepare(m, &batch, FORWARD_INFERENCE) < 0) {
            snprintf(err, CALIGN_ERR_LEN, "out of memory for the activations");
            return CALIGN_ENOMEM;
        }
        model_forward_cached(m, last_hidden, params, lora, &batch, &cache);
    }
    if (out_discarded) memcpy(out_discarded, g.discarded, sizeof(int32_t) * n_slots);
    return CALIGN_OK;
}
