"""What the trainers' reference models that are not a plain Model share."""


class InferenceReference:
    """Stands where a reference Model stands in the trainers: scoring,
    max_positions, vocab_size and config are those of `self.model`, which a
    subclass sets; forward_packed is the subclass's (inference only)."""

    def packed_scores(self, hidden, batch, temperature=1.0, return_stats=False):
        return self.model.packed_scores(hidden, batch, temperature, return_stats)

    @property
    def max_positions(self):
        return self.model.max_positions

    @property
    def vocab_size(self):
        return self.model.vocab_size

    @property
    def config(self):
        return self.model.config
