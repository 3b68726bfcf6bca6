"""GRPO, RLOO and PPO losses and advantages (calign.losses) against TRL.

Two references: TRL 1.16's own GRPOTrainer._compute_loss and
RLOOTrainer._compute_loss, run on a stub trainer whose log-prob function
returns our tensor (values, autograd gradients and logged metrics), and an
independent torch transcription (tests/reference/rl_torch.py) of the same
formulas, of the advantage code of TRL 1.16's _generate_and_score_completions
and of TRL v1.9's experimental PPOTrainer (the installed TRL has none). The C
code takes float32 and computes in double: the references run in float64 on
the same float32 values; tolerance 1e-6, relative where values are large.
"""

import zlib
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from calign import _C, losses
from reference import rl_torch as ref

TOL = 1e-6


def close(actual, expected, tol=TOL):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = np.maximum(1.0, np.abs(expected))
    err = np.abs(actual - expected) / scale
    assert np.all(err <= tol), f"max scaled error {err.max():.3g}"


def metrics_close(actual, expected):
    for key, value in expected.items():
        got = actual[key]
        if np.isnan(value):
            assert got is None or np.isnan(got), key
        else:
            assert got is not None and abs(got - value) <= TOL * max(1.0, abs(value)), \
                (key, got, value)
    for key, value in actual.items():  # what we log and TRL does not is None
        if key not in expected:
            assert value is None, key


def t64(x):
    return torch.tensor(np.asarray(x, np.float32), dtype=torch.float64)


# ---- batches ------------------------------------------------------------------------------

def batch(seed, B=6, T=7, spread=0.3, extreme=False):
    """Token log-probs of a current, old and reference policy and a mask with
    an empty row, a truncated (full) row and ragged rows."""
    rng = np.random.default_rng(seed)
    logps = -rng.gamma(1.0, 1.0, (B, T)).astype(np.float32) - 0.01
    old = logps + rng.normal(0.0, spread, (B, T)).astype(np.float32)
    ref_ = logps + rng.normal(0.0, spread, (B, T)).astype(np.float32)
    old = np.minimum(old, 0.0).astype(np.float32)
    ref_ = np.minimum(ref_, 0.0).astype(np.float32)
    lengths = rng.integers(3, T, B)
    lengths[0], lengths[1] = T, 0  # a truncated completion, an empty one
    mask = np.arange(T)[None, :] < lengths[:, None]
    if extreme:  # log-ratios of +-20 to the old policy and the reference
        logps[0, 0], old[0, 0] = -21.0, -1.0
        old[2, 1] = logps[2, 1] - 20.0
        ref_[3, 2] = logps[3, 2] - 20.0
        logps[4, 0], ref_[4, 0] = -21.0, -1.0
    advantages = rng.normal(0.0, 1.0, B).astype(np.float32)
    advantages[4] = 0.0
    return logps, old, ref_, mask, advantages


# ---- TRL's own code on a stub trainer -----------------------------------------------------

class _Accelerator:
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    def pad_across_processes(self, x, dim=0, pad_index=0):
        return x

    gather_for_metrics = gather


def _stub(cls, logps, entropies=None, **attrs):
    """A trainer object whose log-prob function returns `logps` (requires_grad)
    and `entropies` (default 0)."""
    trainer = cls.__new__(cls)
    trainer.__dict__.update(
        model=SimpleNamespace(training=True), accelerator=_Accelerator(),
        aux_loss_enabled=False, _entropy_bonus_enabled=False, use_vllm=False,
        vllm_importance_sampling_correction=False, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, current_gradient_accumulation_steps=1,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    trainer.__dict__.update(attrs)
    entropies = torch.zeros_like(logps) if entropies is None else entropies
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropies, None)
    return trainer


def _ids(B, T):
    return dict(prompt_ids=torch.zeros(B, 2, dtype=torch.long),
                prompt_mask=torch.ones(B, 2, dtype=torch.long),
                completion_ids=torch.zeros(B, T, dtype=torch.long))


def trl_grpo(logps, old, ref_logps, advantages, mask, *, loss_type, level, epsilon=0.2,
             epsilon_high=None, delta=None, beta=0.0, bias_correction=True, off_policy=None,
             max_completion_length=None, num_items=None, accumulation=1, sapo=(1.0, 1.05),
             vespo=(2.0, 3.0, 3.0, 2.0), entropies=None, top_entropy_quantile=1.0):
    """TRL's loss, its gradient, its logged metrics and (with
    top_entropy_quantile < 1) the entropy mask it selected."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    lp = t64(logps).requires_grad_(True)
    B, T = lp.shape
    args = SimpleNamespace(delta=delta, use_bias_correction_kl=bias_correction,
                           sapo_temperature_pos=sapo[0], sapo_temperature_neg=sapo[1],
                           vespo_k_pos=vespo[0], vespo_lambda_pos=vespo[1], vespo_k_neg=vespo[2],
                           vespo_lambda_neg=vespo[3], steps_per_generation=accumulation)
    trainer = _stub(GRPOTrainer, lp, None if entropies is None else t64(entropies), args=args,
                    loss_type=loss_type, top_entropy_quantile=top_entropy_quantile,
                    importance_sampling_level=level, epsilon_low=epsilon,
                    epsilon_high=epsilon if epsilon_high is None else epsilon_high, beta=beta,
                    off_policy_mask_threshold=off_policy,
                    max_completion_length=max_completion_length,
                    current_gradient_accumulation_steps=accumulation)
    m = t64(mask)
    inputs = dict(_ids(B, T), completion_mask=m, advantages=t64(advantages),
                  num_items_in_batch=m.sum() if num_items is None else torch.tensor(num_items))
    if old is not None:
        inputs["old_per_token_logps"] = t64(old)
    if ref_logps is not None:
        inputs["ref_per_token_logps"] = t64(ref_logps)
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    metrics = {k: v[0] for k, v in trainer._metrics["train"].items() if k != "entropy"}
    entropy_mask = None if entropies is None else trainer.get_high_entropy_mask(
        t64(entropies), m, 1 - top_entropy_quantile).numpy()
    return loss.item(), lp.grad.numpy(), metrics, entropy_mask


# ---- GRPO loss ----------------------------------------------------------------------------

LOSS_TYPES = losses.GRPO_LOSS_TYPES


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("setting", ["on_policy", "off_policy", "kl", "extreme"])
def test_grpo_loss_matches_trl(loss_type, level, setting):
    seed = zlib.crc32(f"{loss_type} {level} {setting}".encode()) % 1000
    logps, old, ref_logps, mask, adv = batch(seed=seed,
                                             spread=0.3, extreme=setting == "extreme")
    kw = dict(loss_type=loss_type, level=level, max_completion_length=9)
    if setting == "on_policy":
        old, ref_logps = None, None
    elif setting == "off_policy":
        ref_logps = None
        kw.update(epsilon_high=0.28)
    else:
        kw.update(beta=0.04, delta=1.5 if loss_type != "cispo" else None)
    if loss_type == "cispo":
        kw.update(epsilon_high=5.0 if setting != "off_policy" else 1.1)
    ours = losses.grpo_loss(
        logps, adv, mask, old_per_token_logps=old, ref_per_token_logps=ref_logps,
        loss_type=loss_type, importance_sampling_level=level,
        epsilon_high=kw.get("epsilon_high"), delta=kw.get("delta"), beta=kw.get("beta", 0.0),
        max_completion_length=9)
    loss, grad, metrics, _ = trl_grpo(logps, old, ref_logps, adv, mask, **kw)
    close(ours.loss, loss)
    close(ours.grad_logps, grad)
    assert ours.grad_logps.dtype == np.float32 and ours.grad_logps.shape == logps.shape
    assert not np.any(ours.grad_logps[~mask])
    metrics_close(ours.metrics, metrics)
    # the independent transcription agrees with both
    lp = t64(logps).requires_grad_(True)
    tloss, tmetrics = ref.grpo_loss(
        lp, None if old is None else t64(old), None if ref_logps is None else t64(ref_logps),
        t64(adv), t64(mask), loss_type, level, epsilon_high=kw.get("epsilon_high"),
        delta=kw.get("delta"), beta=kw.get("beta", 0.0), max_completion_length=9)
    tloss.backward()
    close(ours.loss, tloss.item())
    close(ours.grad_logps, lp.grad.numpy())
    metrics_close(ours.metrics, tmetrics)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "luspo", "sapo"])
def test_grpo_options_match_trl(loss_type):
    """Bias-corrected KL off, off-policy and entropy masks, accumulation,
    num_items_in_batch, SAPO temperatures."""
    logps, old, ref_logps, mask, adv = batch(seed=5, spread=0.5)
    entropies = np.random.default_rng(6).uniform(0, 3, logps.shape).astype(np.float32)
    for level in ("token", "sequence"):
        kw = dict(beta=0.1, bias_correction=False, off_policy=0.05, accumulation=3,
                  num_items=50.0, sapo=(0.7, 1.3), entropies=entropies, top_entropy_quantile=0.4)
        loss, grad, metrics, entropy_mask = trl_grpo(logps, old, ref_logps, adv, mask,
                                                     loss_type=loss_type, level=level, **kw)
        assert 0 < entropy_mask.sum() < mask.sum()
        ours = losses.grpo_loss(
            logps, adv, mask, old_per_token_logps=old, ref_per_token_logps=ref_logps,
            loss_type=loss_type, importance_sampling_level=level, beta=0.1,
            use_bias_correction_kl=False, off_policy_mask_threshold=0.05,
            gradient_accumulation_steps=3, num_items_in_batch=50.0, sapo_temperature_pos=0.7,
            sapo_temperature_neg=1.3, entropy_mask=entropy_mask)
        close(ours.loss, loss)
        close(ours.grad_logps, grad)
        metrics_close(ours.metrics, metrics)


def test_grpo_vespo_parameters_match_trl():
    logps, old, ref_logps, mask, adv = batch(seed=9, spread=0.05)
    ours = losses.grpo_loss(logps, adv, mask, old_per_token_logps=old, loss_type="vespo",
                            vespo_k_pos=1.5, vespo_lambda_pos=2.5, vespo_k_neg=2.0,
                            vespo_lambda_neg=1.0)
    loss, grad, metrics, _ = trl_grpo(logps, old, None, adv, mask, loss_type="vespo",
                                      level="token", vespo=(1.5, 2.5, 2.0, 1.0))
    close(ours.loss, loss)
    close(ours.grad_logps, grad)
    metrics_close(ours.metrics, metrics)


def test_grpo_on_policy_gradient_is_the_policy_gradient():
    """At ratio 1 the dapo gradient is -A mask / tokens, the REINFORCE form."""
    logps, _, _, mask, adv = batch(seed=3)
    out = losses.grpo_loss(logps, adv, mask)
    expected = -adv[:, None] * mask / mask.sum()
    close(out.grad_logps, expected)
    assert out.metrics["clip_ratio/region_mean"] == 0.0


def test_grpo_loss_row_sums_to_the_batch():
    """The batch loss is the sum of row contributions: dropping a row's
    advantage to 0 on-policy removes exactly its gradient."""
    logps, old, _, mask, adv = batch(seed=4)
    full = losses.grpo_loss(logps, adv, mask, old_per_token_logps=old, loss_type="grpo")
    adv2 = adv.copy()
    adv2[2] = 0.0
    part = losses.grpo_loss(logps, adv2, mask, old_per_token_logps=old, loss_type="grpo")
    close(np.delete(full.grad_logps, 2, 0), np.delete(part.grad_logps, 2, 0))
    assert not np.any(part.grad_logps[2])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_grpo_loss_random_batches(data):
    """Random shapes, masks, log-ratios up to +-20, every loss type and level
    (T >= 2: with T == 1 TRL's metrics take the sequence-level branch)."""
    B = data.draw(st.integers(1, 5))
    T = data.draw(st.integers(2, 6))
    seed = data.draw(st.integers(0, 2**32 - 1))
    loss_type = data.draw(st.sampled_from(LOSS_TYPES))
    level = data.draw(st.sampled_from(losses.IMPORTANCE_SAMPLING_LEVELS))
    beta = data.draw(st.sampled_from([0.0, 0.04]))
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.0, 25.0, (B, T)).astype(np.float32)
    old = np.minimum(logps + rng.uniform(-20, 20, (B, T)), 0).astype(np.float32)
    ref_logps = np.minimum(logps + rng.uniform(-20, 20, (B, T)), 0).astype(np.float32)
    mask = rng.random((B, T)) < 0.7
    adv = rng.normal(0, 1, B).astype(np.float32)
    ours = losses.grpo_loss(logps, adv, mask, old_per_token_logps=old,
                            ref_per_token_logps=ref_logps, loss_type=loss_type,
                            importance_sampling_level=level, beta=beta, max_completion_length=T)
    lp = t64(logps).requires_grad_(True)
    tloss, tmetrics = ref.grpo_loss(lp, t64(old), t64(ref_logps), t64(adv), t64(mask), loss_type,
                                    level, beta=beta, max_completion_length=T)
    tloss.backward()
    close(ours.loss, tloss.item())
    close(ours.grad_logps, lp.grad.numpy())
    metrics_close(ours.metrics, tmetrics)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_advantages_random_rewards(data):
    G = data.draw(st.integers(2, 4))
    n_groups = data.draw(st.integers(1, 4))
    F = data.draw(st.integers(1, 3))
    value = st.one_of(st.sampled_from([np.nan, 0.0, 1.0, -2.5]), st.floats(-1e3, 1e3, width=32))
    r = np.array(data.draw(st.lists(value, min_size=G * n_groups * F, max_size=G * n_groups * F)),
                 np.float32).reshape(G * n_groups, F)
    weights = np.array(data.draw(st.lists(st.floats(-2, 2, width=32), min_size=F, max_size=F)),
                       np.float32)
    scale = data.draw(st.sampled_from(losses.SCALE_REWARDS_KINDS))
    aggregation = data.draw(st.sampled_from(losses.MULTI_OBJECTIVE_AGGREGATIONS))
    ours = losses.group_advantages(r, G, scale_rewards=scale, reward_weights=weights,
                                   multi_objective_aggregation=aggregation)
    assert not np.any(np.isnan(ours))
    close(ours, ref.group_advantages(t64(r), t64(weights), G, scale, aggregation).numpy(), 1e-5)
    normalize = data.draw(st.booleans())
    ours = losses.rloo_advantages(r, G, reward_weights=weights, normalize_advantages=normalize)
    expected, _ = ref.rloo_advantages(t64(r), t64(weights), G, normalize=normalize)
    close(ours.advantages, expected.numpy(), 1e-5)


# ---- RLOO loss ----------------------------------------------------------------------------

@pytest.mark.parametrize("spread", [0.0, 0.05, 0.3])
def test_rloo_loss_matches_trl(spread):
    from trl.trainer.rloo_trainer import RLOOTrainer
    logps, old, _, mask, adv = batch(seed=11, spread=spread)
    old_seq = None if spread == 0.0 else (old.astype(np.float64) * mask).sum(1).astype(np.float32)
    ours = losses.rloo_loss(logps, adv, mask, old_logps=old_seq, epsilon_high=0.25)
    lp = t64(logps).requires_grad_(True)
    trainer = _stub(RLOOTrainer, lp, epsilon_low=0.2, epsilon_high=0.25)
    m = t64(mask)
    old_t = (lp.detach() * m).sum(1) if old_seq is None else t64(old_seq)
    loss = trainer._compute_loss(None, dict(_ids(*logps.shape), completion_mask=m,
                                            old_logps=old_t, advantages=t64(adv)))
    loss.backward()
    close(ours.loss, loss.item())
    close(ours.grad_logps, lp.grad.numpy())
    metrics_close(ours.metrics, {k: v[0] for k, v in trainer._metrics["train"].items()
                                 if k != "entropy"})
    lp2 = t64(logps).requires_grad_(True)
    tloss, tmetrics = ref.rloo_loss(lp2, None if old_seq is None else t64(old_seq), t64(adv),
                                    t64(mask), epsilon_high=0.25)
    tloss.backward()
    close(ours.grad_logps, lp2.grad.numpy())
    metrics_close(ours.metrics, tmetrics)


# ---- advantages ---------------------------------------------------------------------------

def rewards_case(seed, B=12, F=1, nan=True, equal_group=True):
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0, 2.0, (B, F)).astype(np.float32)
    if nan:
        r[1, 0] = np.nan            # one function missing
        r[4:6, :] = np.nan          # two unscorable completions in one group (G=3: rows 3-5)
    if equal_group:
        r[6:9, :] = 1.5             # a group of equal rewards
    return r


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("F", [1, 3])
@pytest.mark.parametrize("aggregation", losses.MULTI_OBJECTIVE_AGGREGATIONS)
def test_group_advantages_match_transcription(scale, F, aggregation):
    r = rewards_case(seed=F, F=F)
    weights = np.array([1.0, 0.5, -2.0][:F], np.float32)
    ours = losses.group_advantages(r if F > 1 else r[:, 0], 3, scale_rewards=scale,
                                   reward_weights=weights,
                                   multi_objective_aggregation=aggregation)
    expected = ref.group_advantages(t64(r), t64(weights), 3, scale, aggregation)
    assert ours.dtype == np.float32 and not np.any(np.isnan(ours))
    close(ours, expected.numpy())
    if aggregation == "sum_then_normalize":
        assert np.all(ours[6:9] == 0.0)  # all-equal group: exactly 0
        assert np.all(ours[4:6] == 0.0)  # unscorable completions


def test_group_advantages_degenerate_groups_are_zero():
    r = np.array([np.nan, np.nan, 3.0, np.nan, 2.0, 2.0], np.float32)
    for scale in losses.SCALE_REWARDS_KINDS:
        out = losses.group_advantages(r, 2, scale_rewards=scale)
        assert not np.any(np.isnan(out))
        close(out, ref.group_advantages(t64(r[:, None]), t64([1.0]), 2, scale,
                                        "sum_then_normalize").numpy())
    assert np.array_equal(losses.group_advantages(r, 2, scale_rewards=True),
                          losses.group_advantages(r, 2, scale_rewards="group"))
    assert np.array_equal(losses.group_advantages(r, 2, scale_rewards=False),
                          losses.group_advantages(r, 2, scale_rewards="none"))


@pytest.mark.parametrize("beta, clip, normalize", [(0.0, None, False), (0.05, None, False),
                                                   (0.05, (-1.0, 1.0), True), (0.0, None, True)])
def test_rloo_advantages_match_transcription(beta, clip, normalize):
    r = rewards_case(seed=7, F=2)
    logps, old, ref_logps, mask, _ = batch(seed=8, B=12)
    kw = dict(old_per_token_logps=old, ref_per_token_logps=ref_logps, completion_mask=mask) \
        if beta else {}
    ours = losses.rloo_advantages(r, 3, beta=beta, reward_clip_range=clip,
                                  normalize_advantages=normalize, **kw)
    expected, kl = ref.rloo_advantages(t64(r), t64([1.0, 1.0]), 3, beta, t64(old), t64(ref_logps),
                                       t64(mask), clip, normalize)
    close(ours.advantages, expected.numpy())
    assert not np.any(np.isnan(ours.advantages))
    if beta:
        close(ours.kl, kl.numpy())
        close(ours.metrics["kl"], kl.sum().item() / mask.sum())
    else:
        assert ours.kl is None and ours.metrics == {}


def test_rloo_advantage_is_the_leave_one_out_difference():
    r = np.array([1.0, 2.0, 4.0, 0.0, 0.0, 0.0], np.float32)
    out = losses.rloo_advantages(r, 3).advantages
    close(out, [1 - 3.0, 2 - 2.5, 4 - 1.5, 0, 0, 0])


# ---- PPO ----------------------------------------------------------------------------------

def ppo_case(seed, B=6, T=8):
    rng = np.random.default_rng(seed)
    logps, old, ref_logps, mask, _ = batch(seed, B=B, T=T)
    values = rng.normal(0.0, 1.0, (B, T)).astype(np.float32)
    scores = rng.normal(0.0, 2.0, B).astype(np.float32)
    lengths = mask.sum(1) - 1  # TRL's sequence_lengths: the index of the last token
    return logps, old, ref_logps, mask, values, scores, lengths


@pytest.mark.parametrize("estimator", losses.KL_ESTIMATORS)
@pytest.mark.parametrize("whiten", [False, True])
def test_ppo_rollout_matches_transcription(estimator, whiten):
    logps, old, ref_logps, mask, values, scores, lengths = ppo_case(seed=21)
    shaped = losses.shape_rewards(scores, logps, ref_logps, mask, kl_coef=0.05,
                                  kl_estimator=estimator, whiten_rewards=whiten)
    g = losses.gae(shaped.rewards, values, shaped.reward_mask, gamma=0.99, lam=0.95)
    advantages = losses.masked_whiten(g.advantages, mask)
    trl = ref.ppo_rollout(t64(logps), t64(ref_logps), t64(values), t64(scores),
                          torch.tensor(lengths), 0.05, estimator, whiten, 0.99, 0.95)
    assert np.array_equal(shaped.reward_mask.astype(bool), ~trl["padding_mask_p1"].numpy())
    close(shaped.rewards, trl["rewards"].numpy())
    close(g.advantages, trl["raw_advantages"].numpy())
    close(g.returns, trl["returns"].numpy())
    close(advantages, trl["advantages"].numpy())
    close(shaped.metrics["objective/kl"], trl["kl"].sum(1).mean().item())
    close(shaped.metrics["objective/non_score_reward"],
          trl["non_score_reward"].sum(1).mean().item())
    close(shaped.metrics["objective/rlhf_reward"],
          trl["non_score_reward"].sum(1).mean().item() + float(scores.astype(float).mean()))


def test_score_positions():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    z = np.zeros((3, 4), np.float32)
    scores = np.array([1.0, 2.0, 3.0], np.float32)
    after = losses.shape_rewards(scores, z - 1, z - 1, mask)
    assert np.array_equal(after.rewards, [[0, 0, 1, 0], [0, 0, 0, 2], [3, 0, 0, 0]])
    at = losses.shape_rewards(scores, z - 1, z - 1, mask, score_position="last_token")
    assert np.array_equal(at.rewards, [[0, 1, 0, 0], [0, 0, 0, 2], [3, 0, 0, 0]])


def test_gae_matches_the_recursion_by_hand():
    r = np.array([[1.0, 0.0, 2.0]], np.float32)
    v = np.array([[0.5, -1.0, 1.0]], np.float32)
    g = losses.gae(r, v, np.ones((1, 3), bool), gamma=0.9, lam=0.8)
    a2 = 2.0 - 1.0
    a1 = 0.0 + 0.9 * 1.0 + 1.0 + 0.72 * a2
    a0 = 1.0 + 0.9 * -1.0 - 0.5 + 0.72 * a1
    close(g.advantages, [[a0, a1, a2]])
    close(g.returns, [[a0 + 0.5, a1 - 1.0, a2 + 1.0]])


@pytest.mark.parametrize("spread", [0.05, 0.4, "extreme"])
def test_ppo_losses_match_transcription(spread):
    logps, old, ref_logps, mask, values, scores, lengths = ppo_case(seed=31)
    rng = np.random.default_rng(32)
    if spread == "extreme":
        new = logps.copy()
        new[0, 0] = logps[0, 0] - 20.0
        new[2, 0] = np.minimum(logps[2, 0] + 20.0, 0.0)
        old_lp = logps
        logps = new
    else:
        old_lp = np.minimum(logps + rng.normal(0, spread, logps.shape), 0).astype(np.float32)
    trl = ref.ppo_rollout(t64(old_lp), t64(ref_logps), t64(values), t64(scores),
                          torch.tensor(lengths), 0.05, "k1", False, 1.0, 0.95)
    shaped = losses.shape_rewards(scores, old_lp, ref_logps, mask)
    g = losses.gae(shaped.rewards, values, shaped.reward_mask, gamma=1.0, lam=0.95)
    advantages = losses.masked_whiten(g.advantages, mask)
    vpred = (values + rng.normal(0, 0.4, values.shape)).astype(np.float32)
    out = losses.ppo_losses(logps, old_lp, vpred, values * shaped.reward_mask, advantages,
                            g.returns, mask, value_mask=shaped.reward_mask, vf_coef=0.1)
    lp = t64(logps).requires_grad_(True)
    vp = t64(vpred).requires_grad_(True)
    loss, pg, vf, metrics = ref.ppo_minibatch_loss(
        lp, vp, t64(old_lp), trl["values"], trl["advantages"], trl["returns"],
        trl["padding_mask"], trl["padding_mask_p1"], 0.2, 0.2, 0.1)
    loss.backward()
    close(out.loss, loss.item())
    close(out.pg_loss, pg.item())
    close(out.vf_loss, vf.item())
    close(out.grad_logps, lp.grad.numpy())
    close(out.grad_values, vp.grad.numpy())
    metrics_close(out.metrics, metrics)


# ---- names from C -------------------------------------------------------------------------

def test_rl_names_come_from_c():
    names = _C.describe()
    assert losses.GRPO_LOSS_TYPES == names["grpo_loss_types"]
    assert set(losses.GRPO_LOSS_TYPES) == {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo",
                                           "luspo", "vespo"}
    assert losses.SCALE_REWARDS_KINDS == ("group", "batch", "none")
    assert losses.IMPORTANCE_SAMPLING_LEVELS == ("token", "sequence")
    assert losses.KL_ESTIMATORS == ("k1", "k3")


# ---- bad input ----------------------------------------------------------------------------

def _grpo(**overrides):
    logps, old, ref_logps, mask, adv = batch(seed=1)
    kw = dict(per_token_logps=logps, advantages=adv, completion_mask=mask)
    kw.update(overrides)
    return losses.grpo_loss(kw.pop("per_token_logps"), kw.pop("advantages"),
                            kw.pop("completion_mask"), **kw)


@pytest.mark.parametrize("overrides, match", [
    (dict(loss_type="ppo"), "loss_type must be one of"),
    (dict(importance_sampling_level="tokens"), "importance_sampling_level must be one of"),
    (dict(beta=0.1), "ref_per_token_logps is required when beta != 0"),
    (dict(loss_type="dr_grpo"), "max_completion_length must be"),
    (dict(per_token_logps=np.zeros((6, 7), np.int64)), "per_token_logps must be a floating"),
    (dict(per_token_logps=np.zeros(7, np.float32)), "per_token_logps must be 2-dimensional"),
    (dict(advantages=np.zeros(5, np.float32)), "advantages has length 5"),
    (dict(completion_mask=np.ones((6, 6), bool)), r"completion_mask has shape \(6, 6\)"),
    (dict(completion_mask=np.full((6, 7), 2.0)), r"completion_mask\[0, 0\] = 2 must be 0 or 1"),
    (dict(entropy_mask=np.full((6, 7), 0.5)), r"entropy_mask\[0, 0\] = 0.5 must be 0 or 1"),
    (dict(entropy_mask=np.ones((6, 8), bool)), r"entropy_mask has shape \(6, 8\)"),
    (dict(completion_mask=np.array(["a"] * 42).reshape(6, 7)), "completion_mask must be a bool"),
    (dict(per_token_logps=np.full((6, 7), np.nan, np.float32)),
     r"per_token_logps\[0, 0\] = nan must be a finite log-probability"),
    (dict(old_per_token_logps=np.full((6, 7), 0.5, np.float32)),
     r"old_per_token_logps\[0, 0\] = 0.5 must be a finite log-probability"),
    (dict(advantages=np.array([np.inf] + [0.0] * 5, np.float32)), r"advantages\[0\] = inf"),
    (dict(epsilon=-0.1), "epsilon must be"),
    (dict(delta=0.0), "delta must be"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps must be"),
    (dict(sapo_temperature_pos=0.0), "sapo_temperature_pos must be"),
])
def test_grpo_bad_input_names_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        _grpo(**overrides)


@pytest.mark.parametrize("call, match", [
    (lambda: losses.group_advantages(np.ones(6), 1), "num_generations must be an integer in"),
    (lambda: losses.group_advantages(np.ones(6), 4), "num_generations must divide the 6 rows"),
    (lambda: losses.group_advantages(np.ones(6), 2, scale_rewards="std"), "scale_rewards must"),
    (lambda: losses.group_advantages(np.ones(6), 2, multi_objective_aggregation="mean"),
     "multi_objective_aggregation must"),
    (lambda: losses.group_advantages(np.array([1, np.inf, 0, 0]), 2), r"rewards\[1, 0\] = inf"),
    (lambda: losses.group_advantages(np.ones((6, 2)), 2, reward_weights=[1.0]),
     "reward_weights has 1 entries"),
    (lambda: losses.group_advantages(np.array(["a", "b"]), 2), "rewards must be a numeric"),
    (lambda: losses.group_advantages(np.ones(0), 2), "rewards must have at least one row"),
    (lambda: losses.grpo_loss(np.ones((0, 3), np.float32), np.zeros(0), np.ones((0, 3))),
     "per_token_logps is empty"),
    (lambda: losses.rloo_advantages(np.ones(6), 3, beta=0.1), "old_per_token_logps is required"),
    (lambda: losses.rloo_advantages(np.ones(6), 3, reward_clip_range=(1.0, 0.0)),
     r"reward_clip_range\[1\] must be"),
    (lambda: losses.rloo_advantages(np.ones(5), 2), "num_generations must divide"),
    (lambda: losses.rloo_loss(np.zeros((2, 3), np.float32), np.zeros(2), np.ones((2, 3)),
                              old_logps=np.zeros(3)), "old_logps has length 3"),
    (lambda: losses.masked_whiten(np.ones((2, 2)), np.array([[1, 0], [0, 0]])),
     "mask must select at least two values"),
    (lambda: losses.gae(np.ones((2, 2)), np.ones((2, 3)), np.ones((2, 2))),
     r"values has shape \(2, 3\)"),
    (lambda: losses.gae(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), gamma=1.5),
     "gamma must be"),
    (lambda: losses.shape_rewards(np.ones(2), -np.ones((2, 3)), -np.ones((2, 3)), np.ones((2, 3)),
                                  kl_estimator="k2"), "kl_estimator must be one of"),
    (lambda: losses.shape_rewards(np.ones(3), -np.ones((2, 3)), -np.ones((2, 3)), np.ones((2, 3))),
     "scores has length 3"),
    (lambda: losses.ppo_losses(*[-np.ones((2, 3))] * 6, np.zeros((2, 3))),
     "mask and value_mask must each select at least one token"),
    (lambda: losses.ppo_losses(*[-np.ones((2, 3))] * 6, np.ones((2, 3)), cliprange=-1),
     "cliprange must be"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_overflowing_ratio_is_an_error_not_a_number():
    logps = np.zeros((2, 2), np.float32)
    old = np.full((2, 2), -100.0, np.float32)  # ratio e^100: its gradient overflows float32
    with pytest.raises(FloatingPointError, match="not finite"):
        losses.grpo_loss(logps, -np.ones(2, np.float32), np.ones((2, 2)),
                         old_per_token_logps=old)
    with pytest.raises(FloatingPointError, match="not finite"):
        losses.rloo_loss(np.full((2, 8), -0.01, np.float32), -np.ones(2), np.ones((2, 8)),
                         old_logps=np.full(2, -800.0))
