"""Alignment losses on NumPy arrays: the same C code the trainers call.

The offline losses (DPO and its family, KTO, ORPO, CPO, reward models) take
one number per example (sequence log-probabilities or rewards), compute in
double precision and return a NamedTuple of float64
arrays: the per-example losses (their mean is TRL's batch loss), the implicit
rewards and, with ``return_grad=True``, the gradients

    grad_x[j] = d (sum_i losses[i]) / d x[j]

for each policy input x (for losses that couple examples, such as ``aot`` and
``sft``, this includes the cross terms). TRL 1.16's trainers are the
specification of every formula; the C files cite the papers.

The online RL functions (GRPO, RLOO, PPO; at the end of this module) take
per-token [B, T] arrays and return a scalar loss with its float32 gradient
with respect to the per-token log-probs.
"""

from typing import NamedTuple, Optional

import numpy as np

from calign import _C, checks

# The names and properties of the loss types are defined once, beside their
# enums in the C headers (csrc/losses/losses.h), and read from there.
_C_NAMES = _C.describe()
DPO_LOSS_TYPES = tuple(_C_NAMES["dpo_loss_types"])
F_DIVERGENCE_TYPES = tuple(_C_NAMES["f_divergence_types"])
KTO_LOSS_TYPES = tuple(_C_NAMES["kto_loss_types"])
CPO_LOSS_TYPES = tuple(_C_NAMES["cpo_loss_types"])
# DPO loss types that normalise by completion length (need chosen/rejected_lengths).
LENGTH_NORMALISED_DPO_LOSS_TYPES = tuple(_C_NAMES["dpo_loss_types_needing_chosen_lengths"])
# ... of which these normalise the chosen completion only (need chosen_lengths only).
CHOSEN_LENGTH_DPO_LOSS_TYPES = tuple(
    t for t in LENGTH_NORMALISED_DPO_LOSS_TYPES
    if t not in _C_NAMES["dpo_loss_types_needing_rejected_lengths"])
# DPO loss types whose value for a pair depends on the rest of the batch: the
# fused pair scoring (Model.score_dpo_pairs) cannot apply them chunk by chunk.
BATCH_COUPLED_DPO_LOSS_TYPES = tuple(_C_NAMES["dpo_loss_types_coupling_the_batch"])


class DPOLossOutput(NamedTuple):
    losses: np.ndarray
    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray
    grad_chosen: Optional[np.ndarray] = None
    grad_rejected: Optional[np.ndarray] = None


class KTOLossOutput(NamedTuple):
    losses: np.ndarray
    rewards: np.ndarray
    kl: float
    grad: Optional[np.ndarray] = None


class ORPOLossOutput(NamedTuple):
    losses: np.ndarray
    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray
    log_odds: np.ndarray
    grad_chosen: Optional[np.ndarray] = None
    grad_rejected: Optional[np.ndarray] = None


class CPOLossOutput(NamedTuple):
    losses: np.ndarray
    chosen_rewards: np.ndarray
    rejected_rewards: np.ndarray
    grad_chosen: Optional[np.ndarray] = None
    grad_rejected: Optional[np.ndarray] = None


class RewardLossOutput(NamedTuple):
    losses: np.ndarray
    margins: np.ndarray
    grad_chosen: Optional[np.ndarray] = None
    grad_rejected: Optional[np.ndarray] = None


class ListwiseLossOutput(NamedTuple):
    losses: np.ndarray
    rewards: np.ndarray
    grad: Optional[np.ndarray] = None


def _positive(value, name):
    return checks.real(name, value, 0, open_low=True)


def _finite(value, name):
    return checks.real(name, value)


def _names(value, name):
    """One name or a list of names, as a list."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise ValueError(f"{name} must be a name or a list of names, got {value!r}")
    return [str(v) if isinstance(v, np.str_) else v for v in value]


def _counts(lengths, name):
    """Token counts may be integers or floats; both become float64."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold numbers (token counts), not {arr.dtype}")
    return arr.astype(np.float64)


def _logps_vector(values, name):
    """A non-empty 1-D float array of finite log-probabilities (<= 0)."""
    arr = np.asarray(values)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating-point dtype, not {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-dimensional array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity")
    if np.any(arr > 0):
        raise ValueError(f"{name} holds a log-probability > 0 (log-probabilities are <= 0)")
    return arr.astype(np.float64)


def dpo_settings(*, beta=0.1, loss_type="sigmoid", loss_weights=None, label_smoothing=0.0,
                 f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, discopop_tau=0.05,
                 bco_reward_shift=0.0, scpo_alpha=1.0):
    """The checked settings of dpo_loss as the C library takes them (a dict
    whose keys are _C.describe()["dpo_settings"]), for the trainer's fused
    scoring, which applies the same loss inside the log-prob kernel. Arguments
    as dpo_loss's; every rule on their values and combinations lives here."""
    types = _names(loss_type, "loss_type")
    if not types:
        raise ValueError(f"loss_type must name at least one of {list(DPO_LOSS_TYPES)}")
    for t in types:
        checks.choice("loss_type", t, DPO_LOSS_TYPES)
    if loss_weights is None:
        loss_weights = [1.0] * len(types)
    if not isinstance(loss_weights, (list, tuple, np.ndarray)):
        raise ValueError(f"loss_weights must be a list of numbers, one per loss_type, got "
                         f"{loss_weights!r}")
    if len(loss_weights) != len(types):
        raise ValueError(f"loss_weights has {len(loss_weights)} entries but loss_type has "
                         f"{len(types)}")
    loss_weights = [_finite(w, "loss_weights") for w in loss_weights]
    label_smoothing = checks.real("label_smoothing", label_smoothing, 0.0, 1.0)
    if "exo_pair" in types and not 0.0 < label_smoothing < 1.0:
        raise ValueError("label_smoothing must be in (0, 1) for the 'exo_pair' loss "
                         f"(it takes log(label_smoothing)), got {label_smoothing}")
    if "robust" in types and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) for the 'robust' loss, got "
                         f"{label_smoothing}")
    return {
        "beta": _positive(beta, "beta"),
        "label_smoothing": label_smoothing,
        "f_divergence_type": checks.choice("f_divergence_type", f_divergence_type,
                                           F_DIVERGENCE_TYPES),
        "f_alpha_divergence_coef": _finite(f_alpha_divergence_coef, "f_alpha_divergence_coef"),
        "discopop_tau": _positive(discopop_tau, "discopop_tau"),
        "bco_reward_shift": _finite(bco_reward_shift, "bco_reward_shift"),
        "scpo_alpha": checks.real("scpo_alpha", scpo_alpha, 0.0),
        "loss_type": types,
        "loss_weights": loss_weights,
    }


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta=0.1, loss_type="sigmoid", loss_weights=None, label_smoothing=0.0,
             f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, discopop_tau=0.05,
             chosen_lengths=None, rejected_lengths=None, weights=None, bco_reward_shift=0.0,
             scpo_alpha=1.0, return_grad=False):
    """DPO and its variants, per example, as TRL 1.16's DPOTrainer.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
            ref_rejected_logps: [B] summed completion log-probs (<= 0).
        beta: the KL strength (> 0).
        loss_type: one of ``DPO_LOSS_TYPES`` or a list of them.
        loss_weights: one weight per loss type (default all 1); the losses are
            summed with these weights.
        label_smoothing: epsilon of exo_pair (> 0 required), robust ([0, 0.5))
            and aot/aot_unpaired.
        f_divergence_type, f_alpha_divergence_coef: the f-divergence whose
            derivative replaces the log-ratio (Wang et al. 2023).
        discopop_tau: temperature of the discopop blend.
        chosen_lengths, rejected_lengths: [B] completion token counts, required
            by ipo, sigmoid_norm and sft (clamped at 1 as TRL does).
        weights: [B] constant per-example factors (TRL's use_weighting: the
            product of the chosen and rejected WPO weights; ScPO's vote margin
            w(x) = (votes_chosen - votes_rejected) / n), multiplying every term.
        bco_reward_shift: the reward shift delta of BCO (0 as in TRL 1.16,
            which keeps no running mean).
        scpo_alpha: alpha of the "scpo" loss (Prasad et al. 2024, ScPO),
            -log sigma(beta * margin) - alpha * log pi(y+|x) / |y+|, each
            example multiplied by its weight w(x); >= 0, default 1 (IRPO's).
        return_grad: also return grad_chosen and grad_rejected.

    Returns:
        DPOLossOutput(losses, chosen_rewards, rejected_rewards[, grad_chosen, grad_rejected]).
    """
    settings = dpo_settings(beta=beta, loss_type=loss_type, loss_weights=loss_weights,
                            label_smoothing=label_smoothing, f_divergence_type=f_divergence_type,
                            f_alpha_divergence_coef=f_alpha_divergence_coef,
                            discopop_tau=discopop_tau, bco_reward_shift=bco_reward_shift,
                            scpo_alpha=scpo_alpha)
    result = _C.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                         ref_rejected_logps, settings,
                         chosen_lengths=_counts(chosen_lengths, "chosen_lengths"),
                         rejected_lengths=_counts(rejected_lengths, "rejected_lengths"),
                         weights=weights, return_grad=bool(return_grad))
    return DPOLossOutput(*result)


def kto_loss(policy_logps, ref_logps, labels, *, kl_policy_logps=None, kl_ref_logps=None,
             kl=None, beta=0.1, loss_type="kto", desirable_weight=1.0, undesirable_weight=1.0,
             return_grad=False):
    """KTO (Ethayarajh et al. 2024) or APO-zero unpaired, per example, as TRL 1.16.

    Args:
        policy_logps, ref_logps: [B] summed completion log-probs.
        labels: [B] bools, True for a desirable completion.
        kl_policy_logps, kl_ref_logps: [M] log-probs of mismatched
            (prompt, completion) pairs; the KL reference point is
            max(0, mean(kl_policy_logps - kl_ref_logps)), a constant.
        kl: give the reference point directly instead (clamped at 0). The
            estimate depends only on the pairs you pass, never on the batch
            composition otherwise.
        loss_type: "kto" (needs kl or the kl_* log-probs) or "apo_zero_unpaired".
        desirable_weight, undesirable_weight: lambda_D and lambda_U of the paper.

    Returns:
        KTOLossOutput(losses, rewards, kl[, grad]) with losses in input order.
    """
    checks.choice("loss_type", loss_type, KTO_LOSS_TYPES)
    beta = _positive(beta, "beta")
    desirable_weight = _positive(desirable_weight, "desirable_weight")
    undesirable_weight = _positive(undesirable_weight, "undesirable_weight")
    if kl is not None:
        kl_value = max(0.0, _finite(kl, "kl"))
    elif kl_policy_logps is not None or kl_ref_logps is not None:
        if kl_policy_logps is None or kl_ref_logps is None:
            raise ValueError("kl_policy_logps and kl_ref_logps must be given together")
        kl_policy = _logps_vector(kl_policy_logps, "kl_policy_logps")
        kl_ref = _logps_vector(kl_ref_logps, "kl_ref_logps")
        if kl_policy.shape != kl_ref.shape:
            raise ValueError(f"kl_ref_logps has length {kl_ref.size} but kl_policy_logps has "
                             f"length {kl_policy.size}")
        estimate = kl_policy - kl_ref
        kl_value = max(0.0, float(estimate.mean()))
    elif loss_type == "kto":
        raise ValueError("loss_type 'kto' needs a KL reference point: pass kl, or "
                         "kl_policy_logps and kl_ref_logps")
    else:
        kl_value = 0.0
    result = _C.kto_loss(policy_logps, ref_logps, labels, kl=kl_value, beta=beta,
                         loss_type=loss_type, desirable_weight=desirable_weight,
                         undesirable_weight=undesirable_weight, return_grad=bool(return_grad))
    losses, rewards = result[0], result[1]
    grad = result[2] if return_grad else None
    return KTOLossOutput(losses, rewards, kl_value, grad)


def orpo_loss(policy_chosen_logps, policy_rejected_logps, *, beta=0.1, return_grad=False):
    """ORPO's odds-ratio term (Hong et al. 2024), per example.

    Inputs are AVERAGE per-token log-probs. losses = -beta * log sigmoid(log_odds),
    so TRL's ORPO loss is nll_loss + losses.mean(). Log-probs that round to 0
    are capped at -1e-12 so the log-odds stay finite.

    Returns:
        ORPOLossOutput(losses, chosen_rewards, rejected_rewards, log_odds[, grads]).
    """
    beta = _positive(beta, "beta")
    return ORPOLossOutput(*_C.orpo_loss(policy_chosen_logps, policy_rejected_logps, beta=beta,
                                        return_grad=bool(return_grad)))


def cpo_loss(policy_chosen_logps, policy_rejected_logps, *, beta=0.1, loss_type="sigmoid",
             label_smoothing=0.0, simpo_gamma=0.5, alpha=0.0, return_grad=False):
    """CPO (Xu et al. 2024) and SimPO (Meng et al. 2024), per example, as TRL 1.16.

    Args:
        policy_chosen_logps, policy_rejected_logps: [B] log-probs (summed for
            CPO, averaged per token for SimPO and IPO, as TRL passes them).
        loss_type: "sigmoid", "hinge", "ipo" or "simpo".
        label_smoothing: conservative smoothing of sigmoid and simpo, in [0, 0.5].
        simpo_gamma: SimPO's target reward margin.
        alpha: AlphaPO's reward shape; 0 uses the log-probs as rewards.

    Returns:
        CPOLossOutput(losses, chosen_rewards, rejected_rewards[, grads]).
    """
    return CPOLossOutput(*_C.cpo_loss(
        policy_chosen_logps, policy_rejected_logps, beta=_positive(beta, "beta"),
        loss_type=checks.choice("loss_type", loss_type, CPO_LOSS_TYPES),
        label_smoothing=checks.real("label_smoothing", label_smoothing, 0.0, 0.5),
        simpo_gamma=_finite(simpo_gamma, "simpo_gamma"), alpha=_finite(alpha, "alpha"),
        return_grad=bool(return_grad)))


def reward_loss(chosen_rewards, rejected_rewards, *, margin=None,
                center_rewards_coefficient=None, return_grad=False):
    """Bradley-Terry reward-model loss, per example, as TRL 1.16's RewardTrainer.

    loss_i = -log sigmoid(r_c - r_r - margin_i) + c (r_c + r_r)^2, whose mean is
    TRL's loss (c = center_rewards_coefficient, default off).

    Returns:
        RewardLossOutput(losses, margins[, grad_chosen, grad_rejected]) with
        margins = r_c - r_r.
    """
    coef = checks.real("center_rewards_coefficient", center_rewards_coefficient, 0.0,
                       allow_none=True)
    return RewardLossOutput(*_C.reward_loss(chosen_rewards, rejected_rewards, margin=margin,
                                            center_rewards_coefficient=coef or 0.0,
                                            return_grad=bool(return_grad)))


def listwise_dpo_loss(policy_logps, ref_logps, *, beta=0.1, return_grad=False):
    """Plackett-Luce DPO over K responses per prompt, given best first.

    With s_k = beta (policy_logps[:, k] - ref_logps[:, k]):
    loss = -sum_{k < K-1} (s_k - logsumexp(s_k, ..., s_{K-1})); K = 2 is sigmoid DPO.

    Args:
        policy_logps, ref_logps: [B, K] summed completion log-probs.

    Returns:
        ListwiseLossOutput(losses [B], rewards [B, K][, grad [B, K]]).
    """
    beta = _positive(beta, "beta")
    return ListwiseLossOutput(*_C.listwise_dpo_loss(policy_logps, ref_logps, beta=beta,
                                                    return_grad=bool(return_grad)))


# ==== Online RL: GRPO, RLOO and PPO ==========================================================
# Per-token inputs are [B, T] arrays (B completions of T tokens, padded), taken
# as float32; masks are bool or 0/1 numbers (1: a completion token). The C
# code accumulates in double and returns float32 arrays; the gradients are
# those of the returned scalar loss, for the backward of a log-prob kernel.

GRPO_LOSS_TYPES = tuple(_C_NAMES["grpo_loss_types"])
IMPORTANCE_SAMPLING_LEVELS = tuple(_C_NAMES["importance_sampling_levels"])
SCALE_REWARDS_KINDS = tuple(_C_NAMES["scale_rewards_kinds"])
MULTI_OBJECTIVE_AGGREGATIONS = tuple(_C_NAMES["multi_objective_aggregations"])
KL_ESTIMATORS = tuple(_C_NAMES["kl_estimators"])
# Where shape_rewards adds the score: TRL's PPOTrainer puts it one position
# past the last completion token (the last one when the row is full);
# InstructGPT's description puts it on the last token.
SCORE_POSITIONS = ("after_last_token", "last_token")


class RLOOAdvantages(NamedTuple):
    advantages: np.ndarray
    kl: Optional[np.ndarray]  # per-sequence k1 KL folded into the rewards (beta != 0)
    metrics: dict


class GRPOLossOutput(NamedTuple):
    loss: float
    grad_logps: np.ndarray
    metrics: dict


class RLOOLossOutput(NamedTuple):
    loss: float
    grad_logps: np.ndarray
    metrics: dict


class ShapedRewards(NamedTuple):
    rewards: np.ndarray
    reward_mask: np.ndarray  # the completion mask plus the score's position
    kl: np.ndarray           # per-sequence sum of the per-token KL estimate
    metrics: dict


class GAEOutput(NamedTuple):
    advantages: np.ndarray
    returns: np.ndarray


class PPOLossOutput(NamedTuple):
    loss: float
    pg_loss: float
    vf_loss: float
    grad_logps: np.ndarray
    grad_values: np.ndarray
    metrics: dict


def _float_array(name, value, ndim, allow_none=False):
    """value as a C-contiguous float32 array of rank ndim (its values are
    checked in C); None passes through when allow_none."""
    if value is None and allow_none:
        return None
    arr = np.asarray(value)
    checks.require(arr.dtype.kind == "f", name, arr.dtype, "a floating-point array")
    checks.require(arr.ndim == ndim, name, arr.shape,
                   f"{ndim}-dimensional" + (" [B, T]" if ndim == 2 else ""))
    return np.ascontiguousarray(arr, dtype=np.float32)


def _mask_array(name, value):
    """A [B, T] mask of bools or 0/1 numbers as float32 (0/1 is checked in C)."""
    arr = np.asarray(value)
    checks.require(arr.dtype.kind in "bfiu", name, arr.dtype, "a bool or numeric mask")
    checks.require(arr.ndim == 2, name, arr.shape, "2-dimensional [B, T]")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _rewards_matrix(rewards):
    """Rewards [B] (one function) or [B, F] as float32 [B, F]."""
    arr = np.asarray(rewards)
    checks.require(arr.dtype.kind in "fiu", "rewards", arr.dtype,
                   "a numeric array (NaN: no reward)")
    checks.require(arr.ndim in (1, 2), "rewards", arr.shape, "[B] or [B, n_reward_functions]")
    return np.ascontiguousarray(arr[:, None] if arr.ndim == 1 else arr, dtype=np.float32)


def _reward_weights(reward_weights, n_functions):
    if reward_weights is None:
        return np.ones(n_functions, np.float32)
    return _float_array("reward_weights", np.asarray(reward_weights, dtype=float), 1)


def scale_rewards_kind(scale_rewards):
    """TRL's bool spellings: True is "group", False is "none"."""
    if isinstance(scale_rewards, (bool, np.bool_)):
        return "group" if scale_rewards else "none"
    return checks.choice("scale_rewards", scale_rewards, SCALE_REWARDS_KINDS)


def group_advantages(rewards, num_generations, *, scale_rewards="group", reward_weights=None,
                     multi_objective_aggregation="sum_then_normalize"):
    """GRPO's group-relative advantages, as TRL 1.16's GRPOTrainer.

    The B = n_prompts * G completions come in groups of G = num_generations
    adjacent rows. With the weighted reward r_i = sum_j w_j r_ij (NaN terms
    skipped; NaN if all are NaN: an unscorable completion):

        A_i = (r_i - mean_group(r)) / (std + 1e-4)

    std is the unbiased std of the group ("group", DeepSeekMath, Shao et al.
    2024) or of the batch ("batch", PPO-Lite, arXiv 2508.08221); "none" skips
    the division (Dr. GRPO, arXiv 2503.20783). Statistics skip NaN. With
    multi_objective_aggregation="normalize_then_sum" (GDPO, arXiv 2601.05242)
    each function's rewards are standardised within the group, summed with the
    weights, and the sum standardised over the batch. Unscorable completions
    and undefined statistics give 0, never NaN.

    Args:
        rewards: [B] or [B, F] rewards (F reward functions); NaN: no reward.
        num_generations: G >= 2, dividing B.
        scale_rewards: one of SCALE_REWARDS_KINDS, or True ("group") / False ("none").
        reward_weights: [F] weights (default all 1).

    Returns:
        advantages: float32 [B].
    """
    rewards = _rewards_matrix(rewards)
    return _C.group_advantages(
        rewards, _reward_weights(reward_weights, rewards.shape[1]),
        num_generations=checks.integer("num_generations", num_generations, 2, checks.C_INT_MAX),
        scale_rewards=scale_rewards_kind(scale_rewards),
        multi_objective_aggregation=checks.choice("multi_objective_aggregation",
                                                  multi_objective_aggregation,
                                                  MULTI_OBJECTIVE_AGGREGATIONS))


def reward_clip(reward_clip_range):
    """RLOO's reward_clip_range checked: None, or a (low, high) pair of reals."""
    if reward_clip_range is None:
        return None
    checks.require(isinstance(reward_clip_range, (tuple, list)) and len(reward_clip_range) == 2,
                   "reward_clip_range", reward_clip_range, "None or a (low, high) pair")
    low = checks.real("reward_clip_range[0]", reward_clip_range[0])
    return low, checks.real("reward_clip_range[1]", reward_clip_range[1], low)


def rloo_advantages(rewards, num_generations, *, beta=0.0, old_per_token_logps=None,
                    ref_per_token_logps=None, completion_mask=None, reward_weights=None,
                    reward_clip_range=None, normalize_advantages=False):
    """RLOO's leave-one-out advantages (Ahmadian et al. 2024), as TRL 1.16's RLOOTrainer.

    r_i = sum_j w_j r_ij, clamped to reward_clip_range if given, minus
    beta * kl_i with kl_i = sum_t mask (old_logp - ref_logp) (first-order,
    per sequence); then A_i = r_i - mean of the OTHER scorable rewards of the
    group, and with normalize_advantages (A - mean) / (std + 1e-4) over the
    batch. Unscorable completions (all rewards NaN) and a group's only
    scorable one get 0.

    Args:
        rewards: [B] or [B, F] rewards; NaN: no reward.
        num_generations: G >= 2, dividing B.
        beta: the KL coefficient (TRL's RLOOConfig default is 0.05); when not
            0, old_per_token_logps, ref_per_token_logps and completion_mask
            ([B, T]) are required.
        reward_clip_range: None or (low, high).

    Returns:
        RLOOAdvantages(advantages float32 [B], kl float64 [B] or None,
        metrics {"kl": the masked token mean of old - ref} when beta != 0).
    """
    rewards = _rewards_matrix(rewards)
    beta = checks.real("beta", beta)
    reward_clip_range = reward_clip(reward_clip_range)
    mask = None if completion_mask is None else _mask_array("completion_mask", completion_mask)
    advantages, kl = _C.rloo_advantages(
        rewards, _reward_weights(reward_weights, rewards.shape[1]),
        num_generations=checks.integer("num_generations", num_generations, 2, checks.C_INT_MAX),
        beta=beta,
        old_per_token_logps=_float_array("old_per_token_logps", old_per_token_logps, 2, True),
        ref_per_token_logps=_float_array("ref_per_token_logps", ref_per_token_logps, 2, True),
        completion_mask=mask, reward_clip_range=reward_clip_range,
        normalize_advantages=checks.flag("normalize_advantages", normalize_advantages))
    metrics = {} if kl is None else {"kl": float(kl.sum() / max(float(mask.sum()), 1.0))}
    return RLOOAdvantages(advantages, kl, metrics)


def grpo_settings(*, loss_type="dapo", importance_sampling_level="token", epsilon=0.2,
                  epsilon_high=None, delta=None, beta=0.0, use_bias_correction_kl=True,
                  sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0,
                  vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0,
                  off_policy_mask_threshold=None):
    """The checked settings of the GRPO loss of a token, as the C library takes
    them (a dict): grpo_loss and Model.score_grpo read them. See grpo_loss for
    each; defaults are TRL 1.16's GRPOConfig's."""
    epsilon = checks.real("epsilon", epsilon, 0.0)
    return {
        "loss_type": checks.choice("loss_type", loss_type, GRPO_LOSS_TYPES),
        "importance_sampling_level": checks.choice("importance_sampling_level",
                                                   importance_sampling_level,
                                                   IMPORTANCE_SAMPLING_LEVELS),
        "epsilon": epsilon,
        "epsilon_high": checks.real("epsilon_high",
                                    epsilon if epsilon_high is None else epsilon_high, 0.0),
        "delta": checks.real("delta", delta, 0.0, open_low=True, allow_none=True),
        "beta": checks.real("beta", beta),
        "use_bias_correction_kl": checks.flag("use_bias_correction_kl", use_bias_correction_kl),
        "sapo_temperature_pos": _positive(sapo_temperature_pos, "sapo_temperature_pos"),
        "sapo_temperature_neg": _positive(sapo_temperature_neg, "sapo_temperature_neg"),
        "vespo_k_pos": _finite(vespo_k_pos, "vespo_k_pos"),
        "vespo_lambda_pos": _finite(vespo_lambda_pos, "vespo_lambda_pos"),
        "vespo_k_neg": _finite(vespo_k_neg, "vespo_k_neg"),
        "vespo_lambda_neg": _finite(vespo_lambda_neg, "vespo_lambda_neg"),
        "off_policy_mask_threshold": checks.real("off_policy_mask_threshold",
                                                 off_policy_mask_threshold, allow_none=True),
    }


def grpo_batch_settings(max_completion_length=None, num_items_in_batch=None,
                        gradient_accumulation_steps=1):
    """The batch-level arguments of the GRPO loss's normalisers, checked, as
    the C functions take them (0: not given)."""
    return dict(
        max_completion_length=0 if max_completion_length is None else checks.integer(
            "max_completion_length", max_completion_length, 1, checks.C_INT_MAX),
        num_items_in_batch=0.0 if num_items_in_batch is None else checks.real(
            "num_items_in_batch", num_items_in_batch, 0.0, open_low=True),
        gradient_accumulation_steps=checks.integer("gradient_accumulation_steps",
                                                   gradient_accumulation_steps, 1,
                                                   checks.C_INT_MAX))


def grpo_loss(per_token_logps, advantages, completion_mask, *, old_per_token_logps=None,
              ref_per_token_logps=None, entropy_mask=None, loss_type="dapo",
              importance_sampling_level="token", epsilon=0.2, epsilon_high=None, delta=None,
              beta=0.0, use_bias_correction_kl=True,
              sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, vespo_k_pos=2.0,
              vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0,
              off_policy_mask_threshold=None, max_completion_length=None,
              num_items_in_batch=None, gradient_accumulation_steps=1):
    """GRPO's policy loss over a batch of completions, as TRL 1.16's GRPOTrainer._compute_loss.

    With w_t = exp(logp_t - old_t) ("token") or, for the whole row,
    exp(mean_t mask (logp - old)) ("sequence", GSPO, arXiv 2507.18071):

        grpo, bnpo, dr_grpo, dapo, luspo:
            l_t = -min(min(w, delta) A, clip(w, 1 - epsilon, 1 + epsilon_high) A)
        cispo (MiniMax-M1): l_t = -sg(min(w, epsilon_high)) A logp_t
        sapo (arXiv 2511.20347): l_t = -sigmoid(tau (w - 1)) 4 / tau A,
            tau = sapo_temperature_pos if A > 0 else sapo_temperature_neg
        vespo (arXiv 2602.10693): l_t = -sg(phi(W)) A logp_t, W the product of
            the token ratios, phi(W) = e^lambda W^k e^(-lambda W)

    plus beta * KL_t with the k3 estimate e^(ref - logp) - (ref - logp) - 1
    (times w when use_bias_correction_kl, DeepSeek-V3.2). A completion with
    A < 0 whose mean old - logp exceeds off_policy_mask_threshold loses its
    policy term (DeepSeek-V3.2 eq. 9). The masked l_t are reduced per
    loss_type: grpo/sapo, mean over rows of each row's token mean; bnpo, token
    mean over the batch; dr_grpo, sum / (B max_completion_length); luspo, mean
    over rows of each row's token sum; dapo/cispo/vespo, sum /
    num_items_in_batch (TRL's normaliser: the tokens of the accumulated
    batch; default the mask's sum). All but the last three are also divided by
    gradient_accumulation_steps, as TRL does.

    Args:
        per_token_logps: [B, T] the current policy's token log-probs.
        advantages: [B] one advantage per completion (group_advantages).
        completion_mask: [B, T] bool or 0/1.
        old_per_token_logps: [B, T] the sampling policy's, or None for the
            current ones detached (TRL's num_iterations == 1).
        ref_per_token_logps: [B, T], required when beta != 0.
        entropy_mask: None or [B, T] bool/0-1, multiplying the policy term
            (not the KL): TRL's top_entropy_quantile selection of the
            high-entropy tokens (Wang et al. 2025, arXiv 2506.01939).
        loss_type: one of GRPO_LOSS_TYPES (TRL's default "dapo").
        importance_sampling_level: "token" or "sequence". TRL only warns about
            luspo at token level, vespo at sequence level and bnpo/dr_grpo/
            dapo/cispo at sequence level; so does nothing here: they compute.
        epsilon, epsilon_high: the clip range (epsilon_high None: epsilon);
            for cispo epsilon_high is the cap of the weight.
        delta: None, or the upper bound of the unclipped ratio (INTELLECT-2).

    Returns:
        GRPOLossOutput(loss, grad_logps [B, T] = d loss / d per_token_logps,
        metrics) with TRL's metric names: "kl" (beta != 0),
        "clip_ratio/low_mean", "clip_ratio/low_min", "clip_ratio/high_mean",
        "clip_ratio/high_max", "clip_ratio/region_mean" (clipped types),
        "cispo_clip_ratio", "vespo/phi_seq_mean"; None where TRL logs none.
    """
    if loss_type == "dr_grpo":
        checks.require(max_completion_length is not None, "max_completion_length",
                       max_completion_length, "an integer >= 1 for loss_type 'dr_grpo' (its "
                       "normaliser is B * max_completion_length)")
    settings = grpo_settings(
        loss_type=loss_type, importance_sampling_level=importance_sampling_level,
        epsilon=epsilon, epsilon_high=epsilon_high, delta=delta, beta=beta,
        use_bias_correction_kl=use_bias_correction_kl,
        sapo_temperature_pos=sapo_temperature_pos, sapo_temperature_neg=sapo_temperature_neg,
        vespo_k_pos=vespo_k_pos, vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
        vespo_lambda_neg=vespo_lambda_neg, off_policy_mask_threshold=off_policy_mask_threshold)
    result = _C.grpo_loss(
        _float_array("per_token_logps", per_token_logps, 2),
        _float_array("old_per_token_logps", old_per_token_logps, 2, True),
        _float_array("ref_per_token_logps", ref_per_token_logps, 2, True),
        _float_array("advantages", advantages, 1),
        _mask_array("completion_mask", completion_mask),
        None if entropy_mask is None else _mask_array("entropy_mask", entropy_mask), settings,
        **grpo_batch_settings(max_completion_length, num_items_in_batch,
                              gradient_accumulation_steps))
    return GRPOLossOutput(*result)


def rloo_loss(per_token_logps, advantages, completion_mask, *, old_logps=None, epsilon=0.2,
              epsilon_high=None):
    """RLOO's policy loss, as TRL 1.16's RLOOTrainer._compute_loss.

    One ratio per completion, r_i = exp(sum_t mask logp - old_logps[i]):
    loss = mean_i -min(r_i A_i, clip(r_i, 1 - epsilon, 1 + epsilon_high) A_i).

    Args:
        per_token_logps: [B, T] the current policy's token log-probs.
        advantages: [B] (rloo_advantages).
        completion_mask: [B, T] bool or 0/1.
        old_logps: [B] the sampling policy's SEQUENCE log-probs (masked sums),
            or None for the current ones detached.

    Returns:
        RLOOLossOutput(loss, grad_logps [B, T], metrics) with TRL's
        "clip_ratio/{low_mean,low_min,high_mean,high_max,region_mean}".
    """
    epsilon = checks.real("epsilon", epsilon, 0.0)
    epsilon_high = checks.real("epsilon_high", epsilon if epsilon_high is None else epsilon_high,
                               0.0)
    return RLOOLossOutput(*_C.rloo_loss(
        _float_array("per_token_logps", per_token_logps, 2),
        _float_array("old_logps", old_logps, 1, True), _float_array("advantages", advantages, 1),
        _mask_array("completion_mask", completion_mask), epsilon=epsilon,
        epsilon_high=epsilon_high))


def masked_whiten(values, mask, *, shift_mean=True):
    """(x - mean) / sqrt(var + 1e-8) over the entries where mask is 1 (unbiased
    variance; the mean added back when shift_mean is False), 0 elsewhere, as
    TRL's masked_whiten followed by its zero fill. mask must select >= 2 values.

    Returns:
        float32 array of values' shape [B, T].
    """
    return _C.masked_whiten(_float_array("values", values, 2), _mask_array("mask", mask),
                            shift_mean=checks.flag("shift_mean", shift_mean))


def _score_index(mask, score_position):
    """The token position of each row's score: after (or at) its last mask token."""
    B, T = mask.shape
    present = mask.any(axis=1)
    last = np.where(present, T - 1 - np.argmax(mask[:, ::-1] != 0, axis=1), -1)
    if score_position == "after_last_token":
        return np.where(last + 1 < T, last + 1, last).astype(np.int64)
    return np.maximum(last, 0).astype(np.int64)


def shape_rewards(scores, per_token_logps, ref_per_token_logps, completion_mask, *,
                  kl_coef=0.05, kl_estimator="k1", whiten_rewards=False,
                  score_position="after_last_token"):
    """PPO's per-token rewards (Ziegler et al. 2019; InstructGPT), as TRL's PPOTrainer.

    rewards_t = -kl_coef * kl_t on completion tokens, with kl_t = logp - ref
    ("k1") or e^(ref - logp) - 1 - (ref - logp) ("k3"); the reward model's
    score is added at score_position: "after_last_token" (TRL: one past the
    last completion token, or the last when the row is full; an empty row at
    0) or "last_token". reward_mask is the completion mask plus that position:
    the tokens that carry reward and value. whiten_rewards standardises the
    rewards over reward_mask without removing the mean, as TRL.

    Returns:
        ShapedRewards(rewards float32 [B, T], reward_mask float32 [B, T],
        kl float64 [B] (per-sequence sums), metrics) with TRL's
        "objective/kl", "objective/non_score_reward", "objective/scores",
        "objective/rlhf_reward".
    """
    mask = _mask_array("completion_mask", completion_mask)
    logps = _float_array("per_token_logps", per_token_logps, 2)
    checks.require(mask.shape == logps.shape, "completion_mask", mask.shape,
                   f"of per_token_logps' shape {logps.shape}")
    index = _score_index(mask, checks.choice("score_position", score_position, SCORE_POSITIONS))
    scores = _float_array("scores", scores, 1)
    rewards, kl = _C.ppo_shape_rewards(
        scores, logps, _float_array("ref_per_token_logps", ref_per_token_logps, 2), mask, index,
        kl_coef=checks.real("kl_coef", kl_coef),
        kl_estimator=checks.choice("kl_estimator", kl_estimator, KL_ESTIMATORS))
    reward_mask = mask.copy()
    if mask.size:
        reward_mask[np.arange(mask.shape[0]), index] = 1.0
    if checks.flag("whiten_rewards", whiten_rewards):
        rewards = masked_whiten(rewards, reward_mask, shift_mean=False)
    mean_kl, mean_score = float(kl.mean()), float(scores.astype(np.float64).mean())
    metrics = {"objective/kl": mean_kl, "objective/non_score_reward": -kl_coef * mean_kl,
               "objective/scores": mean_score,
               "objective/rlhf_reward": -kl_coef * mean_kl + mean_score}
    return ShapedRewards(rewards, reward_mask, kl, metrics)


def gae(rewards, values, mask, *, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al. 2016), as TRL's PPOTrainer.

    Rewards and values count as 0 where mask is 0 (pass shape_rewards'
    reward_mask); backwards over t: delta_t = r_t + gamma V_{t+1} - V_t,
    A_t = delta_t + gamma lam A_{t+1}; returns = A + V. TRL then whitens the
    advantages over the completion tokens: masked_whiten(A, completion_mask).

    Returns:
        GAEOutput(advantages float32 [B, T], returns float32 [B, T]).
    """
    return GAEOutput(*_C.gae(_float_array("rewards", rewards, 2),
                             _float_array("values", values, 2), _mask_array("mask", mask),
                             gamma=checks.real("gamma", gamma, 0.0, 1.0),
                             lam=checks.real("lam", lam, 0.0, 1.0)))


def ppo_losses(per_token_logps, old_per_token_logps, values, old_values, advantages, returns,
               mask, *, value_mask=None, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1):
    """PPO's clipped policy and value losses (Schulman et al. 2017), as TRL's PPOTrainer.

        r = exp(logp - old_logp)
        pg_loss = masked_mean(max(-A r, -A clip(r, 1 - cliprange, 1 + cliprange)), mask)
        v_clip = clip(v, old_v - cliprange_value, old_v + cliprange_value)
        vf_loss = 0.5 masked_mean(max((v - R)^2, (v_clip - R)^2), value_mask)
        loss = pg_loss + vf_coef vf_loss

    Args:
        per_token_logps, old_per_token_logps, values, old_values, advantages,
            returns: [B, T].
        mask: [B, T] the completion tokens; value_mask: those with a value
            (TRL: one more than the completion, shape_rewards' reward_mask;
            default mask).

    Returns:
        PPOLossOutput(loss, pg_loss, vf_loss, grad_logps, grad_values,
        metrics) with TRL's "policy/approxkl_avg" (0.5 mean of the squared
        log-ratio over all B * T positions), "policy/clipfrac_avg",
        "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "val/ratio"
        (mean ratio over all positions, padding counting 1).
    """
    mask = _mask_array("mask", mask)
    value_mask = mask if value_mask is None else _mask_array("value_mask", value_mask)
    return PPOLossOutput(*_C.ppo_losses(
        _float_array("per_token_logps", per_token_logps, 2),
        _float_array("old_per_token_logps", old_per_token_logps, 2),
        _float_array("values", values, 2), _float_array("old_values", old_values, 2),
        _float_array("advantages", advantages, 2), _float_array("returns", returns, 2), mask,
        value_mask, cliprange=checks.real("cliprange", cliprange, 0.0),
        cliprange_value=checks.real("cliprange_value", cliprange_value, 0.0),
        vf_coef=checks.real("vf_coef", vf_coef, 0.0)))


# ---- token-wise constrained fine-tuning (Qi et al. 2024) -------------------------------

# The paper's schedule (its Section 4 and the official code's beta 0.1, first-
# token factor 5, factor 20 over the first 5 tokens): entry t is the beta of
# the (t+1)-th response token, the last entry that of every later one.
CONSTRAINED_BETAS = (0.5, 2.0, 2.0, 2.0, 2.0, 0.1)


def constrained_beta_schedule(schedule, name="constrained_betas"):
    """The schedule as a tuple of positive finite floats (at least one)."""
    if isinstance(schedule, np.ndarray):
        schedule = schedule.tolist()
    checks.require(isinstance(schedule, (list, tuple)) and len(schedule) > 0, name, schedule,
                   "a non-empty list of betas (entry t for response token t + 1, the last "
                   "for every later token)")
    for beta in schedule:
        checks.require(checks.is_finite_real(beta) and beta > 0, name, schedule,
                       "a list of positive finite betas")
    return tuple(float(b) for b in schedule)


def constrained_betas(positions, schedule=CONSTRAINED_BETAS):
    """beta_t of each response-token position (0-based): schedule[t], or the
    schedule's last entry past its end."""
    schedule = np.asarray(constrained_beta_schedule(schedule), np.float64)
    return schedule[np.minimum(np.asarray(positions, np.int64), schedule.size - 1)]


def token_constrained_loss(policy_logps, ref_logps, betas, mask=None, return_grad=False):
    """The token-wise constrained objective of Qi et al. 2024 ("Safety
    Alignment Should Be Made More Than Just a Few Tokens Deep", Eq. 3-4):

        loss_i = sum_t mask (2 / beta_t) softplus(beta_t (ref_logps - policy_logps))
               = sum_t mask -(2 / beta_t) log sigmoid(beta_t (policy_logps - ref_logps))

    Its gradient (Eq. 5) is the NLL gradient weighted by
    w_t = 2 sigmoid(beta_t (ref_logps - policy_logps)): 1 as beta -> 0 (plain
    SFT), about 2 where the policy is below the reference and 0 above it for a
    large beta (the constraint). The official code also clamps w_t at 1e-3
    from below; calign keeps the exact gradient.

    Args:
        policy_logps, ref_logps: [B, T] per-token log-probs (rows left-aligned:
            column t is response token t + 1).
        betas: [T] (one beta per column, e.g. constrained_betas(range(T))) or
            [B, T]; positive.
        mask: [B, T] bool or 0/1 (None: every token).
        return_grad: also return d(sum of losses) / d policy_logps, [B, T].

    Returns:
        float64 [B] per-sequence losses, or (losses, float32 [B, T] gradient).
    """
    policy = _float_array("policy_logps", policy_logps, 2)
    betas = np.asarray(betas)
    checks.require(betas.dtype.kind in "fiu", "betas", betas.dtype, "a numeric array")
    checks.require(betas.ndim in (1, 2), "betas", betas.shape,
                   f"[T] or [B, T] with T = {policy.shape[1]}")
    if betas.ndim == 1:
        checks.require(betas.shape[0] == policy.shape[1], "betas", betas.shape,
                       f"one beta per column of policy_logps ({policy.shape[1]})")
        betas = np.broadcast_to(betas, policy.shape)
    mask = np.ones(policy.shape, np.float32) if mask is None else _mask_array("mask", mask)
    losses, grad = _C.token_constrained_loss(
        policy, _float_array("ref_logps", ref_logps, 2),
        np.ascontiguousarray(betas, dtype=np.float32), mask,
        return_grad=checks.flag("return_grad", return_grad))
    return (losses, grad) if return_grad else losses
