/* A decoding session: a KV cache of n_slots sequences of up to capacity
 * positions that lives between calls, for searches over continuations (RAIN,
 * stop-string decoding). Tokens are appended to a slot (their keys and values
 * computed once), a slot is rewound to a shorter length without recomputing
 * anything (the entries beyond are overwritten by the next append), and a
 * slot's cache is copied into another (a fork sharing the prefix's work).
 *
 * The cache is the session's own memory, not the model's workspace (which
 * the model's other calls reuse), so a session survives any call on its
 * model in between. The model's activation arena is used during an append. */
#ifndef CALIGN_SESSION_H
#define CALIGN_SESSION_H

#include <stdint.h>

#include "model/model.h"

typedef struct decode_session decode_session;

/* A session for model m (appends must pass the same model) of n_slots
 * sequences of up to capacity positions (1 <= capacity <= the model's
 * max_positions). NULL with a message in err (CALIGN_ERR_LEN bytes) on bad
 * sizes or when its memory could not be had; *status tells which
 * (CALIGN_EINVAL, CALIGN_ENOMEM). */
decode_session *session_create(const model *m, int n_slots, int capacity, int *status, char *err);
void session_free(decode_session *s);

int session_slots(const decode_session *s);
int session_capacity(const decode_session *s);
/* Tokens slot holds (0 <= slot < n_slots, unchecked). */
int session_length(const decode_session *s, int slot);
/* Bytes of the session's own memory (its KV cache and scratch). */
size_t session_bytes(const decode_session *s);

/* Appends run r's tokens, tokens[run_start[r] .. run_start[r + 1]), to slot
 * run_slot[r] (n_runs >= 1 runs of >= 1 token each, on distinct slots; token
 * ids already checked against the vocabulary), in one forward of the T =
 * run_start[n_runs] tokens: each token attends to what its slot held before
 * and to the run's tokens before it. Writes the final normed hidden states of
 * the T tokens to hidden_out [T, d], and the lm_head logits to logits_out:
 * [T, V] with all_logits, else [n_runs, V], the row of each run's last token.
 * lora: the adapter vector, or NULL for the base model alone.
 * Returns CALIGN_OK, or with a message in err CALIGN_EINVAL (another model,
 * a bad slot, a slot repeated, an empty run, a slot's capacity exceeded;
 * nothing is changed then) or CALIGN_ENOMEM. */
int session_append(decode_session *s, model *m, const float *params, const float *lora,
                   const int32_t *tokens, const int32_t *run_start, const int32_t *run_slot,
                   int n_runs, int all_logits, float *hidden_out, float *logits_out, char *err);

/* Rewinds slot to its first `length` tokens (0 <= length <= its length). */
int session_truncate(decode_session *s, int slot, int length, char *err);

/* Makes slot `to` hold a copy of slot `from`'s tokens and cache. */
int session_copy(decode_session *s, int from, int to, char *err);

#endif
