"""A generation batch of the online RL trainers: prompts sampled G times
each by the C sampler (the prompt prefilled once for its G samples), with
the sampled tokens' log-probs under the sampling policy, truncation flags,
the completion texts and the reward matrix; and the metrics TRL logs of
them."""

import warnings
from dataclasses import dataclass, field

import numpy as np

from calign.data.tokenize import is_conversational
from calign.model.packing import pack_shared_prefix


@dataclass
class Rollout:
    """Row i is completion i: prompt examples[i] (a prompt's G completions
    are adjacent rows)."""
    examples: list               # [N] PromptExample of each row
    completion_ids: list         # [N] lists of token ids (the EOS kept)
    # [N] float32 arrays: log-probs under the sampling policy (the sampler's
    # own; with bf16 products, those of the training forward, since the
    # sampler multiplies in float32 and the ratios must start at 1)
    sampling_logps: list
    truncated: np.ndarray        # [N] bool: no EOS before max_completion_length
    completions: list = None     # [N] text (or [{"role": "assistant", ...}]) given to rewards
    rewards: np.ndarray = None   # [N, F] float32, NaN: no reward
    advantages: np.ndarray = None  # [N] float32
    ref_logps: list = None       # [N] float32 arrays under the reference (beta != 0)
    trained: np.ndarray = None   # [N] bool: the rows that count in the loss
    extra_logs: dict = field(default_factory=dict)  # what reward functions log_extra

    @property
    def num_items(self):
        """Completion tokens that count in the loss: TRL's num_items_in_batch."""
        return int(sum(len(c) for c, t in zip(self.completion_ids, self.trained) if t))


def round_seed(*parts):
    """A 63-bit seed from integers (the sampler's seed of a round)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class PackedRows:
    """Rows of a rollout packed for the engine, the G completions of a prompt
    sharing its prefix; `order` is the rows in score order."""

    def __init__(self, rollout, rows):
        groups = {}
        for r in rows:
            groups.setdefault(id(rollout.examples[r]), []).append(r)
        self.order = [r for g in groups.values() for r in g]
        self.batch = pack_shared_prefix([
            (rollout.examples[g[0]].prompt_ids, [rollout.completion_ids[r] for r in g])
            for g in groups.values()])
        self.lengths = [len(rollout.completion_ids[r]) for r in self.order]
        self.splits = np.cumsum(self.lengths)[:-1]

    def per_row(self, scores):
        """{row: its scores} from scores in score order."""
        return dict(zip(self.order, np.split(np.asarray(scores), self.splits)))

    def flatten(self, matrix, index_of):
        """Scores in score order from a [B, T] matrix whose row index_of[r] is row r."""
        return np.concatenate([matrix[index_of[r], :n] for r, n in zip(self.order, self.lengths)])


def per_row_scores(rollout, step, score):
    """[N] float32 arrays of per-token numbers of a rollout's completions:
    score(PackedRows) of `step` completions a pass (no activations kept)."""
    out = [None] * len(rollout.completion_ids)
    for start in range(0, len(out), step):
        packed = PackedRows(rollout, range(start, min(len(out), start + step)))
        for r, values in packed.per_row(score(packed)).items():
            out[r] = np.asarray(values, np.float32)
    return out


def token_logps(model, rollout, step, temperature):
    """[N] float32 arrays: each completion's token log-probs under `model` at
    `temperature`, `step` completions a pass (no activations kept)."""
    return per_row_scores(rollout, step, lambda packed: model.packed_scores(
        model.forward_packed(packed.batch), packed.batch, temperature))


def sample(model, examples, G, args, eos_ids, seed, first_prompt_index=0):
    """A Rollout of `examples` (each sampled G times) with the config's
    temperature, top_k, top_p and repetition_penalty; examples[0] is prompt
    first_prompt_index of the seed's batch (a rank's block of it). No
    examples: an empty Rollout."""
    if not examples:
        return Rollout([], [], [], np.zeros(0, bool))
    sequences, logps = model.generate(
        [e.prompt_ids for e in examples], max_new_tokens=args.max_completion_length,
        do_sample=True, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, eos_token_id=list(eos_ids),
        num_return_sequences=G, seed=seed, return_logprobs=True,
        first_prompt_index=first_prompt_index)
    stops = set(eos_ids)
    truncated = np.array([len(s) == 0 or s[-1] not in stops for s in sequences])
    rows = [e for e in examples for _ in range(G)]
    return Rollout(rows, sequences, logps, truncated)


def gathered(world, block, examples, G):
    """The Rollout of all `examples` from each rank's Rollout of its block
    (World.block) of them: the sampled rows, their texts, rewards, reference
    log-probs and logged columns, in prompt order on every rank."""
    if not world.distributed:
        return block
    parts = world.allgather((block.completion_ids, block.sampling_logps, block.truncated,
                             block.completions, block.rewards, block.ref_logps,
                             block.extra_logs))
    ids, logps, truncated, texts, rewards, ref, extra = zip(*parts)
    return Rollout([e for e in examples for _ in range(G)], join(ids), join(logps),
                   np.concatenate(truncated), completions=join(texts),
                   rewards=np.concatenate(rewards),
                   ref_logps=None if block.ref_logps is None else join(ref),
                   extra_logs=merged_lists(extra))


def join(lists):
    return [x for part in lists for x in part]


def merged_lists(dicts):
    """{key: the dicts' lists for key, joined in order}."""
    merged = {}
    for d in dicts:
        for key, values in d.items():
            merged.setdefault(key, []).extend(values)
    return merged


def decode_completions(rollout, tokenizer):
    """TRL's completions: decoded without special tokens; for conversational
    prompts, one assistant message."""
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in rollout.completion_ids]
    if texts and is_conversational(rollout.examples[0].prompt):
        return [[{"role": "assistant", "content": t}] for t in texts]
    return texts


# fields TRL does not pass on as columns (the prompt is not among a record's columns)
NOT_REWARD_COLUMNS = ("completion", "completion_ids")


def reward_columns(examples):
    """The records' other fields, one value per completion (TRL passes the
    first record's keys, but for NOT_REWARD_COLUMNS)."""
    keys = [k for k in examples[0].columns if k not in NOT_REWARD_COLUMNS]
    return {k: [e.columns.get(k) for e in examples] for k in keys}


def nanstd(x, axis=None):
    """torch-style unbiased std skipping NaN (NaN with fewer than two values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(np.asarray(x, np.float64), axis=axis, ddof=1)


def nanmean(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(np.asarray(x, np.float64)))


def completion_metrics(rollout):
    """TRL's completions/* metrics of a generation batch."""
    lengths = np.array([len(c) for c in rollout.completion_ids], np.float64)
    ended = lengths[~rollout.truncated]
    if ended.size == 0:
        ended = np.zeros(1)
    return {"completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(rollout.truncated.mean()),
            "completions/mean_terminated_length": float(ended.mean()),
            "completions/min_terminated_length": float(ended.min()),
            "completions/max_terminated_length": float(ended.max())}


def reward_metrics(rollout, names, weights, std_rewards):
    """TRL's reward metrics: per function mean and std, the weighted sum's
    mean and std (unscorable rows left out), the fraction of rows whose
    advantage std is 0 (torch.isclose: |std| <= 1e-8)."""
    metrics = {}
    for j, name in enumerate(names):
        metrics[f"rewards/{name}/mean"] = nanmean(rollout.rewards[:, j])
        metrics[f"rewards/{name}/std"] = float(nanstd(rollout.rewards[:, j]))
    total = weighted_rewards(rollout.rewards, weights)
    metrics["reward"] = nanmean(total)
    metrics["reward_std"] = float(nanstd(total))
    metrics["frac_reward_zero_std"] = float(np.mean(np.abs(std_rewards) <= 1e-8))
    return metrics


def weighted_rewards(rewards, weights):
    """sum_j w_j r_ij skipping NaN; NaN where every function gave none."""
    r = np.asarray(rewards, np.float64)
    total = np.nansum(r * np.asarray(weights, np.float64)[None, :], axis=1)
    total[np.isnan(r).all(axis=1)] = np.nan
    return total


def padded(rows, width, dtype=np.float32):
    """[len(rows), width] with each row's values first, 0 after."""
    out = np.zeros((len(rows), width), dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out
