"""Examples with a prompt and completions, packed for the engine: the
packed micro-batch and the bookkeeping between per-token scores and
per-completion values (PackedPreferences), the summed log-probs of a model
over a dataset, and the check that every example fits a model.

An example is anything with `prompt_ids` (a list of token ids),
`completions` (lists of token ids) and `index` (its record in the source):
calign.data's PreferenceExample and UnpairedExample."""

import numpy as np

from calign import checks
from calign.model.packing import pack_shared_prefix


class PackedPreferences:
    """A packed micro-batch of examples and where each completion's token
    scores sit: one row per example, `prompt | completion 1 | completion 2 ...`
    (pack_shared_prefix), K completions per example."""

    def __init__(self, examples, ld_alpha=None, score_prompt=False):
        self.batch = pack_shared_prefix([(e.prompt_ids, e.completions) for e in examples],
                                        score_prompt=score_prompt)
        self.K = len(examples[0].completions)
        if any(len(e.completions) != self.K for e in examples):
            raise ValueError("all examples of a batch must have the same number of responses")
        self.lengths = np.array([len(c) for e in examples for c in e.completions], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        # LD-DPO (Liu et al. 2024): tokens past the shorter completion count ld_alpha
        self.token_weights = np.ones(int(self.lengths.sum()))
        if ld_alpha is not None:
            shared = self.lengths.reshape(-1, self.K).min(axis=1).repeat(self.K)
            position = np.arange(self.token_weights.size) - np.repeat(self.starts, self.lengths)
            self.token_weights[position >= np.repeat(shared, self.lengths)] = ld_alpha

    @property
    def completion_tokens(self):
        """Completion scores come first in the batch; prompt scores (if any) follow."""
        return self.token_weights.size

    def sequence_sums(self, token_values, weighted=True):
        """[B, K] sums of per-token values over each completion."""
        token_values = np.asarray(token_values)[:self.completion_tokens]
        values = token_values * self.token_weights if weighted else token_values
        return np.add.reduceat(np.asarray(values, np.float64), self.starts).reshape(-1, self.K)

    def sequence_means(self, token_values):
        return self.sequence_sums(token_values, weighted=False) / self.lengths.reshape(-1, self.K)

    def per_token(self, per_sequence):
        """Spreads [B, K] per-completion values over their tokens (times the weights)."""
        return np.repeat(np.asarray(per_sequence, np.float64).ravel(), self.lengths) * \
            self.token_weights

    def logps(self, model):
        """[B, K] summed (LD-weighted) log-probs of the completions under `model`:
        one forward pass, no activations kept (a reference, or an evaluation)."""
        hidden = model.forward_packed(self.batch, train=False)
        return self.sequence_sums(model.packed_scores(hidden, self.batch))


def completion_logps(model, examples, batch_size, ld_alpha=None):
    """[N, K] summed log-probs of every example's completions under `model`,
    batch_size examples to a packed batch (forward only)."""
    return np.concatenate([PackedPreferences(examples[i:i + batch_size], ld_alpha).logps(model)
                           for i in range(0, len(examples), batch_size)])


def reward_margins(policy, reference, examples, beta, batch_size):
    """The DPO implicit reward margin of each preference pair (chosen first):
    beta (log pi(chosen) - log ref(chosen)) - beta (log pi(rejected) - log ref(rejected))."""
    beta = checks.real("beta", beta, 0.0, open_low=True)
    rewards = beta * (completion_logps(policy, examples, batch_size) -
                      completion_logps(reference, examples, batch_size))
    return rewards[:, 0] - rewards[:, 1]


def check_fits(model, examples, name, model_name="model"):
    """A ValueError naming the record unless every example fits `model` once
    packed: its token ids within the model's vocabulary, and its prompt plus
    its LONGEST completion within the model's positions (each completion's
    positions continue from the end of the prompt, so the completions of an
    example do not add up). `name` is the dataset's, `model_name` the model's."""
    vocab, limit = model.vocab_size, model.max_positions
    for e in examples:
        longest = max((len(c) for c in e.completions), default=0)
        if len(e.prompt_ids) + longest > limit:
            raise ValueError(
                f"{name} record {e.index}: the prompt ({len(e.prompt_ids)} tokens) plus its "
                f"longest completion ({longest} tokens) needs {len(e.prompt_ids) + longest} "
                f"positions, more than the {model_name}'s maximum positions ({limit}): set "
                f"max_length to at most {limit} to truncate the records")
        parts = [("the prompt", e.prompt_ids)] + [(f"completion {k}", c)
                                                 for k, c in enumerate(e.completions)]
        for part, ids in parts:
            if ids and max(ids) >= vocab:
                raise ValueError(f"{name} record {e.index}: {part} holds token id {max(ids)}, "
                                 f"outside the {model_name}'s vocabulary [0, {vocab})")
