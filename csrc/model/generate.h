/* Generation with a KV cache: greedy or sampled (temperature, top-k, top-p),
 * batched over ragged prompts, several samples per prompt sharing the
 * prompt's prefill. */
#ifndef CALIGN_GENERATE_H
#define CALIGN_GENERATE_H

#include <stdint.h>

#include "model/model.h"

typedef struct {
    int max_new_tokens, do_sample, top_k, num_return_sequences;
    float temperature, top_p;
    /* transformers' RepetitionPenaltyLogitsProcessor (Keskar et al. 2019): the
     * logit of every token already in the sequence (prompt included) is
     * divided by it when positive, multiplied by it when not; 1: off */
    float repetition_penalty;
    const int32_t *eos_token_ids; /* a sequence stops after any of these */
    int n_eos;
    /* sequence i of the call draws from a generator seeded by (seed,
     * first_sequence + i): a shard of a batch that starts at its first
     * sequence's index in the batch samples what the whole batch would */
    uint64_t seed, first_sequence;
    /* Backtracking (Zhang et al. 2024), off when has_reset_token is 0: the
     * reset token's logit gets reset_logit_bias added before the draw; once a
     * sequence has drawn it max_resets times it cannot be drawn again. A
     * sequence's returned tokens are those after its last reset token (the KV
     * cache keeps them all: what follows is conditioned on the discarded
     * text). max_new_tokens counts every drawn token, discarded ones too. */
    int has_reset_token, reset_token_id, max_resets;
    float reset_logit_bias;
    /* read the matrix weights as bfloat16 (a copy made at the call's start,
     * half the bytes a decoding step reads), float32 arithmetic */
    int bf16_weights;
} generate_settings;

/* Prompt i is prompt_tokens[prompt_start[i] .. prompt_start[i+1]); sample r
 * of prompt i is written to out_tokens[(i * R + r) * max_new_tokens ...] with
 * its length in out_lengths[i * R + r] (it stops after an eos token, which is
 * included). out_logprobs (NULL: not wanted), laid out as out_tokens, gets
 * each drawn token's log softmax(logits / temperature) over the whole
 * vocabulary, before any filter, repetition penalty or reset bias: the log-prob a
 * training forward at that temperature gives it (RL's sampling policy).
 * out_discarded (NULL: not wanted), one per sequence, gets how many drawn
 * tokens were dropped from its output (those before and including its last
 * reset token), or -1 when it never reset; out_logprobs stays aligned with
 * out_tokens.
 * lora: the adapter vector (NULL: the base model alone). Its buffers (the KV
 * cache among them) come from the model's workspace.
 * Returns CALIGN_OK, or with a message in err (CALIGN_ERR_LEN bytes)
 * CALIGN_ENOMEM, CALIGN_ENONFINITE when the logits are not finite, or
 * CALIGN_EINVAL when logits / temperature overflow float32 or the reset
 * token's biased logit does. */
int model_generate(model *m, const float *params, const float *lora, const int32_t *prompt_tokens,
                   const int32_t *prompt_start, int n_prompts, const generate_settings *s,
                   int32_t *out_tokens, int32_t *out_lengths, float *out_logprobs,
                   int32_t *out_discarded, char *err);

#endif
