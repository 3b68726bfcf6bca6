#include "model/scoring.h"

#include <string.h>

#include "logprob.h"

static logprob_problem problem_of(const model *m, const float *params, const float *rows_hidden,
                                  const score_request *r) {
    const model_config *c = model_get_config(m);
    return (logprob_problem){
        .hidden = rows_hidden,
        .weight = params + model_lm_head_offset(m),
        .bias = NULL,
        .targets = r->targets,
        .N = r->M,
        .d = c->d_model,
        .V = c->vocab,
        .temperature = r->temperature,
        .ignore_index = -100,
        .chunk_rows = logprob_default_chunk_rows(c->vocab, c->d_model),
    };
}

/* scratch: gathered rows [M, d] | their gradient [M, d] | kernel scratch */
long scoring_scratch_floats(const model *m, const score_request *r) {
    const model_config *c = model_get_config(m);
    logprob_problem p = problem_of(m, NULL, NULL, r);
    return 2 * r->M * (long)c->d_model + (long)(logprob_scratch_bytes(&p) / sizeof(float)) + 16;
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

long model_score_forward(float *logprobs, const logprob_stats *stats, const model *m,
                         const float *params, const float *hidden, const score_request *r,
                         float *scratch) {
    const int d = model_get_config(m)->d_model;
    float *rows = scratch, *kernel_scratch = scratch + 2 * r->M * d;
    gather_rows(rows, hidden, r->rows, r->M, d);
    logprob_problem p = problem_of(m, params, rows, r);
    return token_logprobs_forward(logprobs, stats, &p, kernel_scratch);
}

long model_score_backward(float *d_hidden, float *grads, float *logprobs,
                          const logprob_stats *stats, const model *m, const float *params,
                          const float *hidden, const float *grad_logprobs,
                          const score_request *r, float *scratch) {
    const int d = model_get_config(m)->d_model;
    float *rows = scratch, *d_rows = scratch + r->M * d, *kernel_scratch = scratch + 2 * r->M * d;
    gather_rows(rows, hidden, r->rows, r->M, d);
    logprob_problem p = problem_of(m, params, rows, r);
    long bad = token_logprobs_backward(d_rows, grads + model_lm_head_offset(m), NULL, logprobs,
                                       stats, grad_logprobs, &p, kernel_scratch);
    if (bad >= 0) return bad;
    scatter_add_rows(d_hidden, d_rows, r->rows, r->M, d);
    return -1;
}

long scoring_grouped_scratch_floats(const model *m, const score_request *r) {
    const model_config *c = model_get_config(m);
    logprob_problem p = problem_of(m, NULL, NULL, r);
    return 2 * r->M * (long)c->d_model + (long)(logprob_grouped_scratch_bytes(&p) / sizeof(float)) +
           16;
}

long model_score_grouped(float *d_hidden, float *grads, float *logprobs,
                         const logprob_stats *stats, double *seq_sums, double *seq_grads,
                         const model *m, const float *params, const float *hidden,
                         const score_request *r, const logprob_groups *g, float *scratch) {
    const int d = model_get_config(m)->d_model;
    float *rows = scratch, *d_rows = scratch + r->M * d, *kernel_scratch = scratch + 2 * r->M * d;
    gather_rows(rows, hidden, r->rows, r->M, d);
    logprob_problem p = problem_of(m, params, rows, r);
    long bad = token_logprobs_grouped(d_rows, grads + model_lm_head_offset(m), logprobs, stats,
                                      seq_sums, seq_grads, &p, g, kernel_scratch);
    if (bad >= 0) return bad;
    scatter_add_rows(d_hidden, d_rows, r->rows, r->M, d);
    return -1;
}
