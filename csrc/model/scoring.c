#include "model/scoring.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/bump.h"
#include "core/status.h"
#include "losses/dpo_pairs.h"
#include "losses/grpo_rows.h"

/* With bf16 products each chunk of rows rounds the whole lm_head [V, d]
 * again, which at V = 151936 costs about what the product of a default
 * (55-row) chunk does: there, chunks take at least this many rows. The
 * logits chunk grows to 155 MiB at that V; on the Qwen2.5-0.5B shape the
 * kernel's 11.1 s of a DPO step fell to 1.5 s, for 250 MiB more peak. */
#define BF16_MIN_CHUNK_ROWS 256

static logprob_problem problem_of(const model *m, const float *params, const float *rows_hidden,
                                  const score_request *r) {
    const model_config *c = model_get_config(m);
    int chunk_rows = logprob_default_chunk_rows(c->vocab, c->d_model);
    if (model_bf16_products(m) && chunk_rows < BF16_MIN_CHUNK_ROWS)
        chunk_rows = BF16_MIN_CHUNK_ROWS;
    return (logprob_problem){
        .hidden = rows_hidden,
        .weight = params ? params + model_lm_head_offset(m) : NULL,
        .bias = NULL,
        .targets = r->targets,
        .N = r->M,
        .d = c->d_model,
        .V = c->vocab,
        .temperature = r->temperature,
        .ignore_index = -100,
        .chunk_rows = chunk_rows,
        .bf16 = model_bf16_products(m),
    };
}

/* What every scoring call carves: the scored rows gathered [M, d], their
 * gradient [M, d], the upstream gradient in float [M] and the kernel's
 * scratch (grouped or not). */
typedef struct {
    float *rows, *d_rows, *grad32;
    void *kernel;
} score_buffers;

static void plan_score_buffers(score_buffers *s, bump *b, const model *m, const score_request *r,
                               int grouped) {
    const size_t d = model_get_config(m)->d_model, M = r->M;
    logprob_problem p = problem_of(m, NULL, NULL, r);
    s->rows = bump_take(b, sizeof(float) * M * d);
    s->d_rows = bump_take(b, sizeof(float) * M * d);
    s->grad32 = bump_take(b, sizeof(float) * M);
    s->kernel = bump_take(b, grouped ? logprob_grouped_scratch_bytes(&p)
                                     : logprob_scratch_bytes(&p));
}

static void gather_rows(float *out, const float *hidden, const int64_t *rows, long M, int d) {
    for (long i = 0; i < M; i++)
        memcpy(out + i * d, hidden + rows[i] * d, sizeof(float) * d);
}

/* d_hidden[rows[i]] += d_rows[i], in score order (deterministic). */
static void scatter_add_rows(float *d_hidden, const float *d_rows, const int64_t *rows, long M,
                             int d) {
    for (long i = 0; i < M; i++) {
        float *dst = d_hidden + rows[i] * d;
        const float *src = d_rows + i * d;
        for (int j = 0; j < d; j++) dst[j] += src[j];
    }
}

/* The lm_head's gradient inside grads, or NULL when the base is frozen
 * (grads NULL: LoRA trains adapters only). */
static float *lm_head_grad(float *grads, const model *m) {
    return grads ? grads + model_lm_head_offset(m) : NULL;
}

static int out_of_memory(char *err) {
    snprintf(err, CALIGN_ERR_LEN, "out of memory for the scoring workspace");
    return CALIGN_ENOMEM;
}

/* The kernels return the first row whose logits were not finite, or -1. */
static int kernel_status(long bad_row, char *err) {
    if (bad_row < 0) return CALIGN_OK;
    snprintf(err, CALIGN_ERR_LEN,
             "the model produced non-finite logits (NaN or infinity in the parameters?)");
    return CALIGN_ENONFINITE;
}

/* Carves the score buffers from the model's workspace, gathers the scored
 * rows of hidden and sets up the kernel's problem over them. */
static int prepare_scores(score_buffers *s, logprob_problem *p, model *m, const float *params,
                          const float *hidden, const score_request *r, char *err) {
    bump b = {NULL, 0};
    plan_score_buffers(s, &b, m, r, 0);
    if (!(b.base = model_workspace(m, b.used))) return out_of_memory(err);
    b.used = 0;
    plan_score_buffers(s, &b, m, r, 0);
    gather_rows(s->rows, hidden, r->rows, r->M, model_get_config(m)->d_model);
    *p = problem_of(m, params, s->rows, r);
    return CALIGN_OK;
}

int model_score_forward(float *logprobs, const logprob_stats *stats, model *m,
                        const float *params, const float *hidden, const score_request *r,
                        char *err) {
    score_buffers s;
    logprob_problem p;
    int status = prepare_scores(&s, &p, m, params, hidden, r, err);
    if (status != CALIGN_OK) return status;
    return kernel_status(token_logprobs_forward(logprobs, stats, &p, s.kernel), err);
}

int model_score_backward(float *d_hidden, float *grads, float *logprobs,
                         const logprob_stats *stats, model *m, const float *params,
                         const float *hidden, const double *grad_logprobs,
                         const score_request *r, char *err) {
    score_buffers s;
    logprob_problem p;
    int status = prepare_scores(&s, &p, m, params, hidden, r, err);
    if (status != CALIGN_OK) return status;
    for (long i = 0; i < r->M; i++) s.grad32[i] = (float)grad_logprobs[i];
    status = kernel_status(token_logprobs_backward(s.d_rows, lm_head_grad(grads, m), NULL,
                                                   logprobs, stats, s.grad32, &p, s.kernel),
                           err);
    if (status == CALIGN_OK)
        scatter_add_rows(d_hidden, s.d_rows, r->rows, r->M, model_get_config(m)->d_model);
    return status;
}

/* ---- preference pairs ------------------------------------------------------------- */

/* The pair layout on top of the scoring buffers: sequence and group starts
 * for the grouped kernel, the sequence sums and gradients, the completion
 * lengths as doubles, and the DPO loss's scratch. */
typedef struct {
    score_buffers score;
    int *group_first_seq; /* [B + 1] */
    long *seq_first_row;  /* [2B + 1] */
    double *seq_grads;    /* [2B] */
    double *chosen_len, *rejected_len; /* [B] */
    double *pair_work;    /* 4B, dpo_pairs' */
    double *loss_work;    /* 5B, dpo_loss's */
    int *loss_iwork;      /* 2B */
} pair_buffers;

static void plan_pair_buffers(pair_buffers *p, bump *b, const model *m, const score_request *r,
                              size_t B) {
    plan_score_buffers(&p->score, b, m, r, 1);
    p->group_first_seq = bump_take(b, sizeof(int) * (B + 1));
    p->seq_first_row = bump_take(b, sizeof(long) * (2 * B + 1));
    p->seq_grads = bump_take(b, sizeof(double) * 2 * B);
    p->chosen_len = bump_take(b, sizeof(double) * B);
    p->rejected_len = bump_take(b, sizeof(double) * B);
    p->pair_work = bump_take(b, sizeof(double) * 4 * B);
    p->loss_work = bump_take(b, sizeof(double) * 5 * B);
    p->loss_iwork = bump_take(b, sizeof(int) * 2 * B);
}

/* EINVAL unless every completion is non-empty, the lengths add up to the
 * scores and no score is left out (-100). */
static int check_completion_lengths(const score_request *r, const int64_t *lengths, long n,
                                    char *err) {
    int64_t total = 0;
    for (long s = 0; s < n; s++) {
        const int64_t len = lengths[s];
        if (len < 1 || len > r->M) {
            snprintf(err, CALIGN_ERR_LEN, "completion_lengths[%ld] = %lld: every completion "
                     "needs between 1 and the %ld scores", s, (long long)len, r->M);
            return CALIGN_EINVAL;
        }
        total += len;
    }
    if (total != r->M) {
        snprintf(err, CALIGN_ERR_LEN, "completion_lengths add up to %lld but there are %ld "
                 "scores", (long long)total, r->M);
        return CALIGN_EINVAL;
    }
    for (long i = 0; i < r->M; i++)
        if (r->targets[i] == -100) {
            snprintf(err, CALIGN_ERR_LEN, "every completion token must be scored (no -100)");
            return CALIGN_EINVAL;
        }
    return CALIGN_OK;
}

/* EINVAL unless the request can be fused: per-pair losses only, and the
 * completions' lengths right. */
static int check_pair_request(const score_request *r, const dpo_pair_request *q, char *err) {
    for (int t = 0; t < q->loss->n_loss_types; t++)
        if (DPO_LOSS_INFO[q->loss->loss_types[t]].couples_batch) {
            snprintf(err, CALIGN_ERR_LEN,
                     "score_dpo_pairs cannot fuse the loss types that couple a batch's pairs "
                     "(loss_type '%s'): score the pairs, then call calign.losses.dpo_loss on "
                     "the whole batch", DPO_LOSS_INFO[q->loss->loss_types[t]].name);
            return CALIGN_EINVAL;
        }
    return check_completion_lengths(r, q->completion_lengths, 2L * q->n_pairs, err);
}

int model_score_dpo_pairs(const dpo_pair_scores *out, float *grads, model *m,
                          const float *params, const float *hidden, const score_request *r,
                          const dpo_pair_request *q, char *err) {
    int status = check_pair_request(r, q, err);
    if (status != CALIGN_OK) return status;
    const int B = q->n_pairs;
    pair_buffers w;
    bump b = {NULL, 0};
    plan_pair_buffers(&w, &b, m, r, B);
    if (!(b.base = model_workspace(m, b.used))) return out_of_memory(err);
    b.used = 0;
    plan_pair_buffers(&w, &b, m, r, B);

    /* pair g is group g: its chosen and rejected completions, sequences 2g and 2g + 1 */
    w.seq_first_row[0] = 0;
    for (int s = 0; s < 2 * B; s++)
        w.seq_first_row[s + 1] = w.seq_first_row[s] + q->completion_lengths[s];
    for (int g = 0; g <= B; g++) w.group_first_seq[g] = 2 * g;
    for (int i = 0; i < B; i++) {
        w.chosen_len[i] = (double)q->completion_lengths[2 * i];
        w.rejected_len[i] = (double)q->completion_lengths[2 * i + 1];
    }
    dpo_pairs ctx = {q->loss, q->ref_chosen, q->ref_rejected, w.chosen_len, w.rejected_len,
                     q->pair_weights, q->grad_scale, out->losses, out->chosen_rewards,
                     out->rejected_rewards, w.pair_work, w.loss_work, w.loss_iwork};
    logprob_groups groups = {.n_groups = B, .group_first_seq = w.group_first_seq,
                             .seq_first_row = w.seq_first_row, .row_weight = q->token_weights,
                             .sequence_grads = dpo_pairs_sequence_grads, .ctx = &ctx};
    const int d = model_get_config(m)->d_model;
    gather_rows(w.score.rows, hidden, r->rows, r->M, d);
    logprob_problem p = problem_of(m, params, w.score.rows, r);
    status = kernel_status(token_logprobs_grouped(w.score.d_rows,
                                                  lm_head_grad(grads, m),
                                                  out->logprobs, &out->stats, out->policy_sums,
                                                  w.seq_grads, &p, &groups, w.score.kernel),
                           err);
    if (status == CALIGN_OK) scatter_add_rows(out->d_hidden, w.score.d_rows, r->rows, r->M, d);
    return status;
}

/* ---- token losses: one group per completion -------------------------------------- */

/* The buffers every token-loss call (GRPO's, the constrained loss) carves:
 * group s of the grouped kernel is completion s. */
typedef struct {
    score_buffers score;
    int *group_first_seq; /* [S + 1] */
    long *seq_first_row;  /* [S + 1] first score of each completion */
    double *seq_sums;     /* [S] (the grouped kernel's; unused by token losses) */
} completion_buffers;

static void plan_completion_buffers(completion_buffers *c, bump *b, const model *m,
                                    const score_request *r, size_t S) {
    plan_score_buffers(&c->score, b, m, r, 1);
    c->group_first_seq = bump_take(b, sizeof(int) * (S + 1));
    c->seq_first_row = bump_take(b, sizeof(long) * (S + 1));
    c->seq_sums = bump_take(b, sizeof(double) * S);
}

/* Completion s (lengths[s] scores, in order) as group s. */
static void lay_out_completions(completion_buffers *c, const int64_t *lengths, int S) {
    c->seq_first_row[0] = 0;
    for (int s = 0; s < S; s++) {
        c->group_first_seq[s] = s;
        c->seq_first_row[s + 1] = c->seq_first_row[s] + lengths[s];
    }
    c->group_first_seq[S] = S;
}

/* The grouped kernel with a token-loss callback over the S completions:
 * log-probs and stats, row_grads from token_grads(ctx, ...), the lm_head
 * gradient added into grads and each score's hidden gradient in
 * c->score.d_rows (scatter_add_rows puts it into d_hidden). */
static int run_token_loss(completion_buffers *c, float *logprobs, const logprob_stats *stats,
                          float *grads, model *m, const float *params, const float *hidden,
                          const score_request *r, int S,
                          void (*token_grads)(void *, int, int, const float *, float *),
                          float *row_grads, void *ctx, char *err) {
    logprob_groups groups = {.n_groups = S, .group_first_seq = c->group_first_seq,
                             .seq_first_row = c->seq_first_row, .token_grads = token_grads,
                             .row_grads = row_grads, .ctx = ctx};
    gather_rows(c->score.rows, hidden, r->rows, r->M, model_get_config(m)->d_model);
    logprob_problem p = problem_of(m, params, c->score.rows, r);
    return kernel_status(token_logprobs_grouped(c->score.d_rows, lm_head_grad(grads, m), logprobs,
                                                stats, c->seq_sums, NULL, &p, &groups,
                                                c->score.kernel),
                         err);
}

/* ---- GRPO completions --------------------------------------------------------------- */

typedef struct {
    completion_buffers completions;
    double *weights;      /* [S] */
    grpo_row_stats *stats; /* [S] */
} grpo_buffers;

static void plan_grpo_buffers(grpo_buffers *g, bump *b, const model *m, const score_request *r,
                              size_t S) {
    plan_completion_buffers(&g->completions, b, m, r, S);
    g->weights = bump_take(b, sizeof(double) * S);
    g->stats = bump_take(b, sizeof(grpo_row_stats) * S);
}

int model_score_grpo(const grpo_scores *out, float *grads, model *m, const float *params,
                     const float *hidden, const score_request *r, const grpo_request *q,
                     char *err) {
    int status = check_completion_lengths(r, q->completion_lengths, q->n_completions, err);
    if (status != CALIGN_OK) return status;
    const int S = q->n_completions;
    grpo_buffers w;
    bump b = {NULL, 0};
    plan_grpo_buffers(&w, &b, m, r, S);
    if (!(b.base = model_workspace(m, b.used))) return out_of_memory(err);
    b.used = 0;
    plan_grpo_buffers(&w, &b, m, r, S);
    completion_buffers *c = &w.completions;
    lay_out_completions(c, q->completion_lengths, S);

    double batch_tokens = 0.0;
    for (long i = 0; i < r->M; i++) batch_tokens += q->mask[i];
    const double items = q->num_items_in_batch > 0.0 ? q->num_items_in_batch : batch_tokens;
    for (int s = 0; s < S; s++) {
        double row_tokens = 0.0;
        for (long i = c->seq_first_row[s]; i < c->seq_first_row[s + 1]; i++)
            row_tokens += q->mask[i];
        w.weights[s] = grpo_row_weight(q->loss, row_tokens, batch_tokens, S,
                                       q->max_completion_length, items,
                                       q->gradient_accumulation_steps);
    }
    grpo_rows ctx = {q->loss, c->seq_first_row, q->old_logps, q->ref_logps, q->mask,
                     q->advantages, w.weights, w.stats};
    status = run_token_loss(c, out->logprobs, &out->stats, grads, m, params, hidden, r, S,
                            grpo_rows_token_grads, out->grad_logps, &ctx, err);
    if (status != CALIGN_OK) return status;
    grpo_aggregate(out->metrics, w.stats, S, batch_tokens, q->loss);
    int finite = isfinite(out->metrics->loss);
    for (long i = 0; i < r->M && finite; i++) finite = isfinite(out->grad_logps[i]);
    if (!finite) {
        snprintf(err, CALIGN_ERR_LEN, "the GRPO loss or its gradient is not finite in float32 "
                 "(a log-ratio of the policy to old_logps too large?)");
        return CALIGN_ENONFINITE;
    }
    scatter_add_rows(out->d_hidden, c->score.d_rows, r->rows, r->M,
                     model_get_config(m)->d_model);
    return CALIGN_OK;
}

/* ---- token-wise constrained sequences ------------------------------------------------ */

typedef struct {
    const long *seq_first_row;
    const constrained_request *q;
    double *losses;
} constrained_rows;

/* The kernel's token-loss callback: sequence s is group s. */
static void constrained_token_grads(void *ctx, int g0, int g1, const float *logprobs,
                                    float *row_grads) {
    const constrained_rows *c = ctx;
    for (int s = g0; s < g1; s++) {
        const long first = c->seq_first_row[s];
        c->losses[s] = token_constrained_row(row_grads + first, logprobs + first,
                                             c->q->ref_logps + first, c->q->betas + first, NULL,
                                             (int)(c->seq_first_row[s + 1] - first),
                                             c->q->grad_scale);
    }
}

int model_score_constrained(const constrained_scores *out, float *grads, model *m,
                            const float *params, const float *hidden, const score_request *r,
                            const constrained_request *q, char *err) {
    int status = check_completion_lengths(r, q->completion_lengths, q->n_completions, err);
    if (status != CALIGN_OK) return status;
    const int S = q->n_completions;
    completion_buffers c;
    bump b = {NULL, 0};
    plan_completion_buffers(&c, &b, m, r, S);
    if (!(b.base = model_workspace(m, b.used))) return out_of_memory(err);
    b.used = 0;
    plan_completion_buffers(&c, &b, m, r, S);
    lay_out_completions(&c, q->completion_lengths, S);
    constrained_rows ctx = {c.seq_first_row, q, out->losses};
    status = run_token_loss(&c, out->logprobs, &out->stats, grads, m, params, hidden, r, S,
                            constrained_token_grads, out->grad_logps, &ctx, err);
    if (status == CALIGN_OK)
        scatter_add_rows(out->d_hidden, c.score.d_rows, r->rows, r->M,
                         model_get_config(m)->d_model);
    return status;
}
