"""Alignment losses on NumPy arrays: the same C code the trainers call.

Every function takes one number per example (sequence log-probabilities or
rewards), computes in double precision and returns a NamedTuple of float64
arrays: the per-example losses (their mean is TRL's batch loss), the implicit
rewards and, with ``return_grad=True``, the gradients

    grad_x[j] = d (sum_i losses[i]) / d x[j]

for each policy input x (for losses that couple examples, such as ``aot`` and
``sft``, this includes the cross terms). TRL 1.16's trainers are the
specification of every formula; the C files cite the papers.
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
                 f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0, discopop_tau=0.05,
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
             f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0, discopop_tau=0.05,
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
