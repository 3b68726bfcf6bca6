"""A decoding session: a KV cache on the C engine that lives between calls.

Searches over continuations (RAIN's tree, stop-string decoding) move back and
forth along token sequences; a Session keeps the keys and values of each of
its slots so that moving costs only the tokens that change:

    session = Session(model, n_slots=2, capacity=64)
    logits = session.append(0, prompt_ids)     # the prompt, computed once
    session.copy(0, 1)                         # fork: slot 1 shares the prompt's work
    session.append(1, [token])                 # one token's forward
    session.truncate(1, len(prompt_ids))       # rewind, nothing recomputed

The cache is the session's own memory (n_slots x capacity positions of every
layer's keys and values), not the model's workspace, so any other call on the
model may run between two calls on the session. The model's LoRA adapters
apply as in Model.generate (off inside model.disable_adapter()).
"""

from calign import _C, checks
from calign.model.model import BUSY_MESSAGE
from calign.model.packing import concatenated_rows


class Session:
    """n_slots token sequences of up to `capacity` positions (default: the
    model's max_positions) on `model`, each with its KV cache."""

    def __init__(self, model, n_slots=1, capacity=None):
        n_slots = checks.integer("n_slots", n_slots, 1, checks.C_INT_MAX)
        capacity = checks.integer(
            "capacity", model.max_positions if capacity is None else capacity, 1,
            model.max_positions, what=f"None or an integer in [1, {model.max_positions}] (the "
                                      f"model's maximum positions)")
        self.model = model
        self._handle = _C.session_create(model._handle, n_slots, capacity)

    @property
    def n_slots(self):
        return _C.session_info(self._handle)[0]

    @property
    def capacity(self):
        """Positions each slot holds at most."""
        return _C.session_info(self._handle)[1]

    @property
    def nbytes(self):
        """Bytes of the session's own memory (KV cache and scratch)."""
        return _C.session_info(self._handle)[2]

    def lengths(self):
        """int64 [n_slots]: the tokens each slot holds."""
        return _C.session_lengths(self._handle)

    def length(self, slot):
        return int(self.lengths()[self._slot("slot", slot)])

    def _slot(self, name, slot):
        return checks.integer(name, slot, 0, self.n_slots - 1)

    def _run(self, function, *args, **kwargs):
        """One use of the model, as Model's exclusive methods make."""
        if not self.model._in_use.acquire(blocking=False):
            raise RuntimeError(BUSY_MESSAGE)
        try:
            return function(*args, **kwargs)
        finally:
            self.model._in_use.release()

    def append(self, slot, input_ids, *, all_logits=False, return_hidden=False):
        """Appends token ids to `slot` (one forward over them, attending to
        what the slot holds) and returns the logits float32 [V] after the last
        one, or with all_logits [n, V] after each; with return_hidden also
        their final normed hidden states [n, d]."""
        logits, hidden = self.append_batch([slot], [input_ids], all_logits=all_logits,
                                           return_hidden=True)
        if not all_logits:
            logits = logits[0]
        return (logits, hidden) if return_hidden else logits

    def append_batch(self, slots, input_ids, *, all_logits=False, return_hidden=False):
        """Appends input_ids[i] to slots[i] (distinct slots) in one forward;
        returns the logits float32 [len(slots), V] after each run's last token
        (all_logits: [total tokens, V], runs in order), with return_hidden
        also the hidden states [total tokens, d]."""
        if isinstance(slots, (str, bytes)) or not hasattr(slots, "__len__") or not len(slots):
            raise ValueError(f"slots must be a non-empty list of slot indices, got {slots!r}")
        if not hasattr(input_ids, "__len__") or len(input_ids) != len(slots):
            raise ValueError(f"input_ids must be a list of {len(slots)} token-id lists (one per "
                             f"slot)")
        slots = [self._slot(f"slots[{i}]", s) for i, s in enumerate(slots)]
        ids, starts = concatenated_rows(input_ids, lambda i: f"input_ids[{i}]")
        model = self.model
        return self._run(_C.session_append, self._handle, model._handle, model._engine_params,
                         ids, starts, slots, adapters=model._active_adapters(),
                         all_logits=checks.flag("all_logits", all_logits),
                         return_hidden=checks.flag("return_hidden", return_hidden))

    def truncate(self, slot, length):
        """Rewinds `slot` to its first `length` tokens, recomputing nothing."""
        self._run(_C.session_truncate, self._handle, self._slot("slot", slot),
                  checks.integer("length", length, 0, checks.C_INT_MAX))

    def copy(self, source, target):
        """Makes slot `target` hold what slot `source` holds (a fork)."""
        self._run(_C.session_copy, self._handle, self._slot("source", source),
                  self._slot("target", target))
