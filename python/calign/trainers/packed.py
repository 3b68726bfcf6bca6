"""A packed micro-batch of examples with a prompt and completions, and the
bookkeeping between per-token scores and per-completion values."""

import numpy as np

from calign.model import pack_shared_prefix


class PackedPreferences:
    """A packed micro-batch of preference examples and where each completion's
    token scores sit."""

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
