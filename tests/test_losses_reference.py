"""calign.losses against torch autograd of TRL 1.16's formulas (tests/reference/losses_autograd.py)."""

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calign import losses
from reference import losses_autograd as ref
from reference import scpo_paper

B = 7
TOL = dict(rtol=1e-9, atol=1e-10)


def batch(seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    pc, pr = -rng.uniform(0.5, 30, B), -rng.uniform(0.5, 30, B)
    rc, rr = pc + rng.normal(0, scale, B), pr + rng.normal(0, scale, B)
    rc, rr = np.minimum(rc, -1e-3), np.minimum(rr, -1e-3)
    lengths_c, lengths_r = rng.integers(0, 20, B).astype(float), rng.integers(1, 20, B).astype(float)
    return pc, pr, rc, rr, lengths_c, lengths_r


def torch_dpo(inputs, loss_types, loss_weights=None, weights=None, **kw):
    pc, pr, rc, rr, lc, lr = inputs
    tpc = torch.tensor(pc, requires_grad=True)
    tpr = torch.tensor(pr, requires_grad=True)
    total, rewards = 0.0, None
    for t, w in zip(loss_types, loss_weights or [1.0] * len(loss_types), strict=True):
        loss, chosen_rewards, rejected_rewards = ref.dpo(
            tpc, tpr, torch.tensor(rc), torch.tensor(rr), t, chosen_lengths=torch.tensor(lc),
            rejected_lengths=torch.tensor(lr), **kw)
        if weights is not None:
            loss = loss * torch.tensor(weights)
        total = total + w * loss
        rewards = (chosen_rewards, rejected_rewards)
    total.sum().backward()
    def grad(t):  # a loss that ignores an input leaves its grad unset
        return t.grad.numpy() if t.grad is not None else np.zeros(t.shape)

    return (total.detach().numpy(), rewards[0].numpy(), rewards[1].numpy(), grad(tpc), grad(tpr))


def calign_dpo(inputs, loss_types, **kw):
    pc, pr, rc, rr, lc, lr = inputs
    out = losses.dpo_loss(pc, pr, rc, rr, loss_type=loss_types, chosen_lengths=lc,
                          rejected_lengths=lr, return_grad=True, **kw)
    return tuple(out)


def assert_same(ours, theirs, **tol):
    for name, a, b in zip(["losses", "chosen_rewards", "rejected_rewards", "grad_chosen",
                           "grad_rejected"], ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, err_msg=name, **(tol or TOL))


ALL_TYPES = list(losses.DPO_LOSS_TYPES)


@pytest.mark.parametrize("loss_type", ALL_TYPES)
@pytest.mark.parametrize("divergence,coef", [("reverse_kl", 1.0), ("forward_kl", 1.0),
                                             ("js_divergence", 1.0), ("alpha_divergence", 0.5),
                                             ("alpha_divergence", 1.0)])
def test_dpo_every_loss_type_and_divergence(loss_type, divergence, coef):
    # a seed of the case's names that PYTHONHASHSEED does not salt, so a failure reproduces
    inputs = batch(seed=zlib.crc32(f"{loss_type}/{divergence}".encode()) % 1000, scale=1.0)
    kw = dict(beta=0.3, label_smoothing=0.2 if loss_type in ("exo_pair", "robust", "aot",
                                                              "aot_unpaired") else 0.0,
              f_divergence_type=divergence, f_alpha_divergence_coef=coef, discopop_tau=0.05)
    # TRL's alpha-divergence scales exp((a-1) lr); keep the scores representable
    ref_kw = dict(beta=kw["beta"], label_smoothing=kw["label_smoothing"],
                  f_divergence_type=divergence, alpha_coef=coef, discopop_tau=0.05)
    assert_same(calign_dpo(inputs, [loss_type], **kw), torch_dpo(inputs, [loss_type], **ref_kw),
                rtol=1e-8, atol=1e-9)


def test_dpo_alpha_divergence_clamp_like_trl():
    inputs = batch(seed=5)
    pc, pr, rc, rr, lc, lr = inputs
    rc = rc - 300.0  # (a - 1) * logratio far above 80 for a = 1.5
    inputs = (pc, pr, np.minimum(rc, -1e-3), rr, lc, lr)
    kw = dict(f_divergence_type="alpha_divergence")
    assert_same(calign_dpo(inputs, ["sigmoid"], f_alpha_divergence_coef=1.5, **kw),
                torch_dpo(inputs, ["sigmoid"], alpha_coef=1.5, **kw))


def test_dpo_list_of_types_with_weights_and_wpo_weights():
    inputs = batch(seed=3)
    types, lw = ["sigmoid", "sft", "hinge"], [1.0, 0.3, 0.5]
    weights = np.random.default_rng(3).uniform(0.1, 1.0, B)
    assert_same(calign_dpo(inputs, types, loss_weights=lw, weights=weights, beta=0.2),
                torch_dpo(inputs, types, loss_weights=lw, weights=weights, beta=0.2))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
def test_scpo_against_the_papers_formula(alpha):
    """loss_type="scpo" with weights w = vote margin / k is Prasad et al.'s l_ScPO."""
    pc, pr, rc, rr, _, _ = batch(seed=21)
    rng = np.random.default_rng(21)
    k = 8
    votes_rejected = rng.integers(0, 4, B)
    votes_chosen = votes_rejected + rng.integers(1, 5, B)
    tokens = rng.integers(1, 30, B).astype(float)
    w = (votes_chosen - votes_rejected) / k
    out = losses.dpo_loss(pc, pr, rc, rr, beta=0.4, loss_type="scpo", scpo_alpha=alpha,
                          chosen_lengths=tokens, weights=w, return_grad=True)
    tpc, tpr = torch.tensor(pc, requires_grad=True), torch.tensor(pr, requires_grad=True)
    expected = scpo_paper.scpo_loss(tpc, tpr, torch.tensor(rc), torch.tensor(rr),
                                    torch.tensor(votes_chosen), torch.tensor(votes_rejected), k,
                                    torch.tensor(tokens), beta=0.4, alpha=alpha)
    expected.sum().backward()
    np.testing.assert_allclose(out.losses, expected.detach().numpy(), **TOL)
    np.testing.assert_allclose(out.grad_chosen, tpc.grad.numpy(), **TOL)
    np.testing.assert_allclose(out.grad_rejected, tpr.grad.numpy(), **TOL)
    np.testing.assert_allclose(out.chosen_rewards, 0.4 * (pc - rc), **TOL)


def test_scpo_by_hand():
    """Policy = reference, w = 5/8 - 1/8 = 0.5, log pi(y+) = -6 over 3 tokens, alpha = 1:
    0.5 * (ln 2 + 6 / 3); d/d log pi(y+) = 0.5 * (-beta / 2 - 1 / 3), d/d log pi(y-) = 0.5 * beta / 2."""
    out = losses.dpo_loss([-6.0], [-4.0], [-6.0], [-4.0], beta=0.2, loss_type="scpo",
                          chosen_lengths=[3], weights=[0.5], return_grad=True)
    assert out.losses[0] == pytest.approx(0.5 * (math.log(2) + 2.0), rel=1e-14)
    assert out.grad_chosen[0] == pytest.approx(0.5 * (-0.1 - 1 / 3), rel=1e-14)
    assert out.grad_rejected[0] == pytest.approx(0.05, rel=1e-14)
    with_zero_alpha = losses.dpo_loss([-6.0], [-4.0], [-5.0], [-4.5], beta=0.2,
                                      loss_type="scpo", scpo_alpha=0.0, chosen_lengths=[3])
    plain = losses.dpo_loss([-6.0], [-4.0], [-5.0], [-4.5], beta=0.2)
    assert with_zero_alpha.losses[0] == pytest.approx(plain.losses[0], rel=1e-14)


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    pc, pr = np.array([-3.0, -40.0, -0.1]), np.array([-7.0, -2.0, -1.0])
    out = losses.dpo_loss(pc, pr, pc, pr)
    np.testing.assert_allclose(out.losses, math.log(2), rtol=1e-15)


@pytest.mark.parametrize("loss_type", ALL_TYPES)
def test_dpo_extreme_log_ratios_stay_finite(loss_type):
    pc = np.array([-1.0, -10001.0, -1.0, -10001.0])
    pr = np.array([-10001.0, -1.0, -1.0, -10001.0])
    rc = np.array([-10001.0, -1.0, -10001.0, -1.0])
    rr = np.array([-1.0, -10001.0, -10001.0, -1.0])
    out = losses.dpo_loss(pc, pr, rc, rr, loss_type=loss_type, label_smoothing=0.1,
                          chosen_lengths=np.full(4, 5.0), rejected_lengths=np.full(4, 5.0),
                          return_grad=True)
    for name, value in out._asdict().items():
        assert np.all(np.isfinite(value)), (loss_type, name, value)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_against_torch(loss_type):
    rng = np.random.default_rng(7)
    policy, refs = -rng.uniform(1, 30, B), -rng.uniform(1, 30, B)
    labels = rng.random(B) < 0.5
    kl_p, kl_r = -rng.uniform(1, 30, 5), -rng.uniform(1, 30, 5)
    out = losses.kto_loss(policy, refs, labels, kl_policy_logps=kl_p, kl_ref_logps=kl_r,
                          beta=0.2, loss_type=loss_type, desirable_weight=1.3,
                          undesirable_weight=0.7, return_grad=True)
    kl = max(0.0, float(np.mean(kl_p - kl_r)))
    assert out.kl == pytest.approx(kl if loss_type == "kto" else out.kl)
    tp = torch.tensor(policy, requires_grad=True)
    loss, rewards = ref.kto(tp, torch.tensor(refs), torch.tensor(labels),
                            kl if loss_type == "kto" else 0.0, 0.2, loss_type, 1.3, 0.7)
    loss.sum().backward()
    np.testing.assert_allclose(out.losses, loss.detach().numpy(), **TOL)
    np.testing.assert_allclose(out.rewards, rewards.numpy(), **TOL)
    np.testing.assert_allclose(out.grad, tp.grad.numpy(), **TOL)


def test_kto_kl_is_clamped_at_zero_and_explicit_kl_is_used():
    policy, refs, labels = np.array([-2.0, -3.0]), np.array([-2.5, -1.0]), np.array([True, False])
    out = losses.kto_loss(policy, refs, labels, kl_policy_logps=[-9.0], kl_ref_logps=[-1.0])
    assert out.kl == 0.0
    assert losses.kto_loss(policy, refs, labels, kl=0.7).kl == 0.7


def test_orpo_against_torch():
    rng = np.random.default_rng(8)
    pc, pr = -rng.uniform(0.01, 5, B), -rng.uniform(0.01, 5, B)
    out = losses.orpo_loss(pc, pr, beta=0.25, return_grad=True)
    tpc, tpr = torch.tensor(pc, requires_grad=True), torch.tensor(pr, requires_grad=True)
    loss, cr, rr, log_odds = ref.orpo(tpc, tpr, 0.25)
    loss.sum().backward()
    for a, b in [(out.losses, loss.detach()), (out.chosen_rewards, cr), (out.rejected_rewards, rr),
                 (out.log_odds, log_odds.detach()), (out.grad_chosen, tpc.grad),
                 (out.grad_rejected, tpr.grad)]:
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("loss_type", list(losses.CPO_LOSS_TYPES))
@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_cpo_against_torch(loss_type, alpha):
    rng = np.random.default_rng(9)
    pc, pr = -rng.uniform(0.1, 4, B), -rng.uniform(0.1, 4, B)
    out = losses.cpo_loss(pc, pr, beta=0.5, loss_type=loss_type, label_smoothing=0.1,
                          simpo_gamma=0.3, alpha=alpha, return_grad=True)
    tpc, tpr = torch.tensor(pc, requires_grad=True), torch.tensor(pr, requires_grad=True)
    loss, cr, rr = ref.cpo(tpc, tpr, 0.5, loss_type, 0.1, 0.3, alpha)
    loss.sum().backward()
    assert_same(tuple(out), (loss.detach().numpy(), cr.numpy(), rr.numpy(), tpc.grad.numpy(),
                             tpr.grad.numpy()))


@pytest.mark.parametrize("margin,center", [(None, None), (True, 0.01)])
def test_reward_against_torch(margin, center):
    rng = np.random.default_rng(10)
    rc, rr = rng.normal(0, 3, B), rng.normal(0, 3, B)
    m = rng.uniform(0, 1, B) if margin else None
    out = losses.reward_loss(rc, rr, margin=m, center_rewards_coefficient=center,
                             return_grad=True)
    trc, trr = torch.tensor(rc, requires_grad=True), torch.tensor(rr, requires_grad=True)
    loss = ref.reward(trc, trr, None if m is None else torch.tensor(m), center)
    loss.sum().backward()
    np.testing.assert_allclose(out.losses, loss.detach().numpy(), **TOL)
    np.testing.assert_allclose(out.margins, rc - rr, **TOL)
    np.testing.assert_allclose(out.grad_chosen, trc.grad.numpy(), **TOL)
    np.testing.assert_allclose(out.grad_rejected, trr.grad.numpy(), **TOL)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_listwise_against_torch(K):
    rng = np.random.default_rng(K)
    policy, refs = -rng.uniform(1, 20, (B, K)), -rng.uniform(1, 20, (B, K))
    out = losses.listwise_dpo_loss(policy, refs, beta=0.4, return_grad=True)
    tp = torch.tensor(policy, requires_grad=True)
    loss, rewards = ref.plackett_luce(tp, torch.tensor(refs), 0.4)
    loss.sum().backward()
    np.testing.assert_allclose(out.losses, loss.detach().numpy(), **TOL)
    np.testing.assert_allclose(out.rewards, rewards.numpy(), **TOL)
    np.testing.assert_allclose(out.grad, tp.grad.numpy(), **TOL)


def test_listwise_with_two_responses_is_sigmoid_dpo():
    pc, pr, rc, rr, _, _ = batch(seed=11)
    pair = losses.dpo_loss(pc, pr, rc, rr, beta=0.3, return_grad=True)
    lw = losses.listwise_dpo_loss(np.stack([pc, pr], 1), np.stack([rc, rr], 1), beta=0.3,
                                  return_grad=True)
    np.testing.assert_allclose(lw.losses, pair.losses, rtol=1e-12)
    np.testing.assert_allclose(lw.grad[:, 0], pair.grad_chosen, rtol=1e-12)
    np.testing.assert_allclose(lw.grad[:, 1], pair.grad_rejected, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.sampled_from(["sigmoid", "ipo", "robust", "apo_down"]),
       st.floats(0.01, 5.0), st.integers(0, 10_000))
def test_dpo_random_batches(size, loss_type, beta, seed):
    rng = np.random.default_rng(seed)
    pc, pr = -rng.uniform(1e-3, 200, size), -rng.uniform(1e-3, 200, size)
    rc, rr = -rng.uniform(1e-3, 200, size), -rng.uniform(1e-3, 200, size)
    lc, lr = rng.integers(1, 50, size).astype(float), rng.integers(1, 50, size).astype(float)
    kw = dict(beta=beta, label_smoothing=0.1 if loss_type == "robust" else 0.0)
    assert_same(calign_dpo((pc, pr, rc, rr, lc, lr), [loss_type], **kw),
                torch_dpo((pc, pr, rc, rr, lc, lr), [loss_type], **kw), rtol=1e-8, atol=1e-9)


# ---- bad input ----------------------------------------------------------------------

GOOD = dict(policy_chosen_logps=[-1.0, -2.0], policy_rejected_logps=[-1.5, -2.5],
            ref_chosen_logps=[-1.2, -2.2], ref_rejected_logps=[-1.4, -2.4])


def call_dpo(**changes):
    args = dict(GOOD, **changes)
    return losses.dpo_loss(args.pop("policy_chosen_logps"), args.pop("policy_rejected_logps"),
                           args.pop("ref_chosen_logps"), args.pop("ref_rejected_logps"), **args)


@pytest.mark.parametrize("changes,error,match", [
    (dict(policy_chosen_logps=[[-1.0, -2.0]]), ValueError, "policy_chosen_logps must be 1-dim"),
    (dict(ref_rejected_logps=[-1.0]), ValueError, "ref_rejected_logps has length 1"),
    (dict(policy_rejected_logps=np.array([-1, -2])), TypeError,
     "policy_rejected_logps must have a floating-point dtype"),
    (dict(ref_chosen_logps=np.array(["a", "b"])), TypeError, "ref_chosen_logps"),
    (dict(policy_chosen_logps=[-1.0, float("nan")]), ValueError,
     "policy_chosen_logps contains NaN"),
    (dict(ref_chosen_logps=[-1.0, float("inf")]), ValueError, "ref_chosen_logps contains NaN"),
    (dict(policy_chosen_logps=[0.5, -1.0]), ValueError, r"policy_chosen_logps\[0\] = 0.5"),
    (dict(policy_chosen_logps=[]), ValueError, "policy_chosen_logps is empty"),
    (dict(loss_type="dpo"), ValueError, r"loss_type must be one of \['sigmoid', 'hinge'"),
    (dict(beta=0.0), ValueError, "beta must be a finite number > 0"),
    (dict(beta=-1.0), ValueError, "beta"),
    (dict(loss_type="ipo"), ValueError, "chosen_lengths is required"),
    (dict(loss_type="scpo"), ValueError, "chosen_lengths is required by loss_type 'scpo'"),
    (dict(loss_type=["sft", "ipo"], chosen_lengths=[1, 2]), ValueError,
     "rejected_lengths is required by loss_type 'ipo'"),
    (dict(loss_type="scpo", chosen_lengths=[1, 2], scpo_alpha=-0.5), ValueError,
     "scpo_alpha must be a finite number >= 0"),
    (dict(loss_type="scpo", chosen_lengths=[1, 2], scpo_alpha=float("nan")), ValueError,
     "scpo_alpha must be a finite number"),
    (dict(loss_type="exo_pair"), ValueError, "label_smoothing must be in \\(0, 1\\)"),
    (dict(loss_type="robust", label_smoothing=0.5), ValueError, "label_smoothing"),
    (dict(loss_type=["sigmoid", "hinge"], loss_weights=[1.0]), ValueError, "loss_weights"),
    (dict(f_divergence_type="kl"), ValueError, "f_divergence_type"),
    (dict(loss_type="ipo", chosen_lengths=[1, -2], rejected_lengths=[1, 1]), ValueError,
     "chosen_lengths"),
])
def test_dpo_bad_input(changes, error, match):
    with pytest.raises(error, match=match):
        call_dpo(**changes)


def test_other_losses_bad_input():
    with pytest.raises(ValueError, match="loss_type 'kto' needs a KL reference point"):
        losses.kto_loss([-1.0], [-1.0], [True])
    with pytest.raises(TypeError, match="labels must be a 1-dimensional array of bools"):
        losses.kto_loss([-1.0], [-1.0], [1], kl=0.0)
    with pytest.raises(ValueError, match="kl_ref_logps has length 1"):
        losses.kto_loss([-1.0], [-1.0], [True], kl_policy_logps=[-1.0, -2.0], kl_ref_logps=[-1.0])
    with pytest.raises(ValueError, match="policy_chosen_logps"):
        losses.orpo_loss([0.1], [-1.0])
    with pytest.raises(ValueError, match="loss_type must be one of"):
        losses.cpo_loss([-1.0], [-1.0], loss_type="dpo")
    with pytest.raises(ValueError, match="margin has length 1"):
        losses.reward_loss([1.0, 2.0], [0.0, 1.0], margin=[0.5])
    with pytest.raises(ValueError, match="needs K >= 2"):
        losses.listwise_dpo_loss([[-1.0]], [[-1.0]])
    with pytest.raises(ValueError, match="ref_logps has shape"):
        losses.listwise_dpo_loss([[-1.0, -2.0]], [[-1.0, -2.0, -3.0]])
