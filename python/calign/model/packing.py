"""Packed batches: sequences laid end to end without padding, each token with
its position, its sequence and its branch (0: a prefix every branch sees;
k > 0: sees the prefix and itself), plus the (row, target) pairs to score."""

from dataclasses import dataclass, field

import numpy as np

from calign import checks

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


@dataclass
class PackedBatch:
    """Token ids stay int64 here: the engine checks them against the model
    (vocabulary, positions) before it narrows them to its int32."""
    input_ids: np.ndarray        # int64 [T]
    position_ids: np.ndarray     # int64 [T]
    sequence_starts: np.ndarray  # int64 [S + 1]
    branch_ids: np.ndarray       # int64 [T]
    score_rows: np.ndarray       # int64 [M]: row of the hidden states that predicts ...
    score_targets: np.ndarray    # int64 [M]: ... this token
    # completion_slices[i][k]: the scores of completion k of example i
    completion_slices: list = field(default_factory=list)
    # prompt_slices[i]: scores of prompt tokens 1.. of example i (score_prompt only)
    prompt_slices: list = field(default_factory=list)
    # completion_rows[i][k]: the rows (a range) of completion k of example i
    completion_rows: list = field(default_factory=list)

    @property
    def num_tokens(self):
        return int(self.input_ids.shape[0])


def token_id_array(ids, what):
    """ids (a list or an integer array, any shape) as int64, never wrapped: a
    value beyond int64 (a uint64 above 2**63 - 1, a Python int beyond 64
    bits) raises ValueError with the value as given."""
    arr = np.asarray(ids)
    if arr.dtype == object or (arr.dtype.kind == "f" and not isinstance(ids, np.ndarray)):
        # Python ints NumPy could not type as int64: find the one that does not fit
        flat = arr.ravel().tolist() if arr.dtype == object else list(_flatten(ids))
        if flat and all(checks.is_int(v) for v in flat):
            bad = next(v for v in flat if not INT64_MIN <= v <= INT64_MAX)
            raise ValueError(f"{what} holds {bad}, which is not a token id (outside 64 bits)")
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer token ids, not {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > INT64_MAX:
        raise ValueError(f"{what} holds {int(arr.max())}, which is not a token id "
                         "(outside 64 bits)")
    return arr.astype(np.int64)


def concatenated_rows(rows, name_of):
    """Ragged token-id rows (each a non-empty 1-D list or integer array) as
    (their ids end to end, starts [len(rows) + 1]); name_of(i) names row i in
    errors."""
    arrays = []
    for i, ids in enumerate(rows):
        row = np.asarray(ids)
        if row.ndim != 1 or row.size == 0:
            raise ValueError(f"{name_of(i)} must be a non-empty list of token ids")
        if row.dtype.kind not in "iu":
            raise TypeError(f"{name_of(i)} must hold integer token ids, not {row.dtype}")
        arrays.append(row)
    return np.concatenate(arrays), np.concatenate([[0], np.cumsum([r.size for r in arrays])])


def _flatten(nested):
    for item in nested:
        if isinstance(item, (list, tuple, np.ndarray)):
            yield from _flatten(item)
        else:
            yield item


def _id_list(ids, what):
    arr = token_id_array(ids, what)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat list of token ids, got shape {arr.shape}")
    return arr


def pack_shared_prefix(examples, score_prompt=False):
    """One row per example: prompt | completion 1 | completion 2 | ...

    Each completion is its own branch, with positions continuing from the end
    of the prompt, so the prompt is computed once. Score k of a completion is
    its token k predicted from the previous token of its branch (token 0 from
    the last prompt token).

    Args:
        examples: list of (prompt_ids, [completion_ids, ...]); a prompt must
            hold at least one token and so must each completion.
        score_prompt: also score prompt tokens 1.. (each from the one before),
            after all completion scores (see prompt_slices).
    """
    if not examples:
        raise ValueError("examples is empty: a batch needs at least one example")
    ids, positions, branches, starts = [], [], [], [0]
    rows, targets, slices, prompt_scores, completion_rows = [], [], [], [], []
    offset = n_scores = 0
    for i, example in enumerate(examples):
        try:
            prompt, completions = example
        except (TypeError, ValueError):
            raise ValueError(f"examples[{i}] must be (prompt_ids, [completion_ids, ...])") from None
        prompt = _id_list(prompt, f"examples[{i}] prompt")
        if prompt.size == 0:
            raise ValueError(f"examples[{i}] has an empty prompt")
        if len(completions) == 0:
            raise ValueError(f"examples[{i}] has no completions")
        P = prompt.size
        ids.append(prompt)
        positions.append(np.arange(P))
        branches.append(np.zeros(P, np.int64))
        cursor = offset + P
        example_slices, example_rows = [], []
        for k, completion in enumerate(completions):
            completion = _id_list(completion, f"examples[{i}] completion {k}")
            if completion.size == 0:
                raise ValueError(f"examples[{i}] completion {k} is empty")
            C = completion.size
            ids.append(completion)
            positions.append(P + np.arange(C))
            branches.append(np.full(C, k + 1, np.int64))
            # token j of the completion is predicted at the row of the token before it
            prev_rows = np.concatenate([[offset + P - 1], cursor + np.arange(C - 1)])
            example_slices.append(slice(n_scores, n_scores + C))
            example_rows.append(range(cursor, cursor + C))
            n_scores += C
            rows.append(prev_rows)
            targets.append(completion)
            cursor += C
        slices.append(example_slices)
        completion_rows.append(example_rows)
        prompt_scores.append((offset, prompt))
        offset = cursor
        starts.append(offset)
    prompt_slices = []
    if score_prompt:
        for start, prompt in prompt_scores:
            rows.append(start + np.arange(prompt.size - 1))
            targets.append(prompt[1:])
            prompt_slices.append(slice(n_scores, n_scores + prompt.size - 1))
            n_scores += prompt.size - 1
    return PackedBatch(
        input_ids=np.concatenate(ids),
        position_ids=np.concatenate(positions).astype(np.int64),
        sequence_starts=np.asarray(starts, np.int64),
        branch_ids=np.concatenate(branches),
        score_rows=np.concatenate(rows).astype(np.int64),
        score_targets=np.concatenate(targets).astype(np.int64),
        completion_slices=slices,
        prompt_slices=prompt_slices,
        completion_rows=completion_rows,
    )


def as_id_matrix(input_ids, attention_mask=None):
    """(ids [B, T] int64, mask [B, T] bool) from arrays or lists, with clear errors."""
    if isinstance(input_ids, (list, tuple)) and input_ids and all(
            isinstance(r, (list, tuple, np.ndarray)) for r in input_ids):
        lengths = {len(r) for r in input_ids}
        if len(lengths) > 1:
            if attention_mask is None:
                raise ValueError("input_ids rows have different lengths; pad them and pass "
                                 "attention_mask")
            raise ValueError("input_ids rows have different lengths")
    if isinstance(input_ids, (list, tuple)) and len(input_ids) == 0:
        raise ValueError("input_ids is empty: the batch has no tokens")
    ids = token_id_array(input_ids, "input_ids")
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError("input_ids is empty: the batch has no tokens")
    if attention_mask is None:
        mask = np.ones(ids.shape, bool)
    else:
        mask = np.asarray(attention_mask)
        if mask.ndim == 1:
            mask = mask[None, :]
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape} but input_ids has "
                             f"{ids.shape}")
        if mask.dtype.kind not in "biu" or not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1")
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("attention_mask masks every token: the batch is empty")
    return ids, mask


def pack_rows(ids, mask):
    """Packs the real tokens of each row (mask True) into one sequence per row.

    Returns (PackedBatch without scores, flat_index [B, T]: the packed row of
    each real position, -1 for padding). Positions count real tokens only, so
    left padding gives the positions the model saw in training."""
    B, T = ids.shape
    lengths = mask.sum(axis=1)
    flat_index = np.full((B, T), -1, np.int64)
    flat_index[mask] = np.arange(int(lengths.sum()))
    positions = (np.cumsum(mask, axis=1) - 1)[mask]
    starts = np.concatenate([[0], np.cumsum(lengths[lengths > 0])])
    batch = PackedBatch(
        input_ids=ids[mask],
        position_ids=positions.astype(np.int64),
        sequence_starts=starts.astype(np.int64),
        branch_ids=np.zeros(int(lengths.sum()), np.int64),
        score_rows=np.zeros(0, np.int64),
        score_targets=np.zeros(0, np.int64),
    )
    return batch, flat_index
