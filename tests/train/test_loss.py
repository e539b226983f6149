"""The clipped GRPO loss: plain ratio, GRPO-Guard's normalised ratio, clipping, KL."""

import pytest
import torch

from precise_fast.sde import mean_jacobian, noise_std, reference_step
from precise_fast.train.grpo.loss import grpo_loss_rows


def _score64(x, v, prev, s, s_next, sd, *, kind, old_mean=None, return_mean=False):
    """score_step's (log_prob, mean, guard_bias) in float64: the spec (reference_step) keeps
    float64 math for float64 inputs, which these cancellation-heavy identities need (the
    public score_step computes in float32 on every backend)."""
    out = reference_step(x, v, s, s_next, sd, kind=kind, prev_sample=prev)
    bias = None if old_mean is None else ((out.mean - old_mean) ** 2).flatten(1).mean(1)
    return out.log_prob, (out.mean if return_mean else None), bias


def test_plain_ratio_and_clip():
    logp = torch.tensor([0.0, 0.1, -0.1, 0.3], requires_grad=True)
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    rows = grpo_loss_rows(logp, old, adv, clip_range=0.2, ratio_kind="plain")
    ratio = torch.exp(logp.detach())
    torch.testing.assert_close(rows.ratio, ratio)
    want = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    torch.testing.assert_close(rows.loss.detach(), want)
    assert rows.clipped.tolist() == [False, False, False, True]
    rows.loss.sum().backward()
    # Row 3: A < 0 and ratio 1.35 > 1.2: the pessimistic max keeps the unclipped term, gradient flows.
    assert logp.grad[3] != 0
    # A > 0 beyond the upper clip: the clipped (constant) term wins, no gradient.
    logp2 = torch.tensor([0.5], requires_grad=True)
    grpo_loss_rows(logp2, torch.zeros(1), torch.ones(1), clip_range=0.2, ratio_kind="plain").loss.sum().backward()
    assert logp2.grad.item() == 0.0


def _step_case(gen, kind="precise", rows=3, shape=(64, 8)):
    sigmas = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    std = noise_std(sigmas, kind, 1.5 if kind == "precise" else 0.7)
    i = torch.tensor([1, 4, 7])[:rows]
    s, s_next, sd = sigmas[i], sigmas[i + 1], std[i]
    x = torch.randn(rows, *shape, generator=gen, dtype=torch.float64)
    v_old = torch.randn(rows, *shape, generator=gen, dtype=torch.float64)
    delta = 1e-2 * torch.randn(rows, *shape, generator=gen, dtype=torch.float64)
    _, m_old, _ = _score64(x, v_old, x, s, s_next, sd, kind=kind, return_mean=True)
    z = torch.randn(rows, *shape, generator=gen, dtype=torch.float64)
    prev = m_old + sd.view(-1, 1, 1) * z
    return x, v_old, delta, prev, z, m_old, s, s_next, sd


@pytest.mark.parametrize("kind", ["precise", "flow_grpo"])
def test_guard_log_ratio_is_mean_z_times_mean_shift(gen, kind):
    """SAMPLERS.md: (logp - logp_old + bias) * sigma = mean(z * (mean - mean_old))."""
    x, v_old, delta, prev, z, m_old, s, s_next, sd = _step_case(gen, kind)
    lp_old, _, _ = _score64(x, v_old, prev, s, s_next, sd, kind=kind)
    lp, m_new, bias = _score64(x, v_old + delta, prev, s, s_next, sd, kind=kind, old_mean=m_old, return_mean=True)
    jac = mean_jacobian(s, s_next, sd, kind)
    rows = grpo_loss_rows(lp, lp_old, torch.ones(3, dtype=torch.float64), clip_range=1.0, ratio_kind="guard", std=sd,
                          guard_bias=bias, jacobian=jac)
    want = (z * (m_new - m_old)).flatten(1).mean(1)
    # float64, but logp - logp_old cancels large terms: 1e-6 relative is what survives.
    torch.testing.assert_close(torch.log(rows.ratio), want, rtol=1e-6, atol=1e-10)
    # The clipped policy loss is divided by |J| of the step.
    torch.testing.assert_close(rows.policy, -rows.ratio / jac.abs())


def test_guard_needs_its_inputs():
    with pytest.raises(ValueError, match="guard"):
        grpo_loss_rows(torch.zeros(2), torch.zeros(2), torch.ones(2), clip_range=0.1, ratio_kind="guard")
    with pytest.raises(ValueError, match="ratio_kind"):
        grpo_loss_rows(torch.zeros(2), torch.zeros(2), torch.ones(2), clip_range=0.1, ratio_kind="ppo")


def test_on_policy_guard_ratio_is_one(gen):
    x, v_old, _, prev, _, m_old, s, s_next, sd = _step_case(gen)
    lp_old, _, _ = _score64(x, v_old, prev, s, s_next, sd, kind="precise")
    lp, _, bias = _score64(x, v_old, prev, s, s_next, sd, kind="precise", old_mean=m_old)
    rows = grpo_loss_rows(lp, lp_old, torch.ones(3, dtype=torch.float64), clip_range=4e-6, ratio_kind="guard", std=sd,
                          guard_bias=bias, jacobian=mean_jacobian(s, s_next, sd, "precise"))
    assert torch.equal(rows.ratio, torch.ones(3, dtype=torch.float64))


def test_kl_term():
    kl = torch.tensor([0.5, 2.0])
    rows = grpo_loss_rows(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_range=0.1, ratio_kind="plain", kl=kl, beta=0.1)
    torch.testing.assert_close(rows.loss, 0.1 * kl)
    with pytest.raises(ValueError, match="KL"):
        grpo_loss_rows(torch.zeros(2), torch.zeros(2), torch.zeros(2), clip_range=0.1, ratio_kind="plain", beta=0.1)
