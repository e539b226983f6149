"""The reference step's log-prob, mean and derivatives agree with independent computations.

The float64 cases call ``reference_step`` (the spec, which keeps float64 math for float64
inputs); the public ``step`` computes in float32 for every dtype (tests/sde/test_errors.py).
"""

import math

import pytest
import torch

from precise_fast.sde import KINDS, flux2_sigmas, mean_coefficients, mean_jacobian, noise_std, reference_step, step

STOCHASTIC = [k for k in KINDS if k != "ode"]
ETA = {"flow_grpo": 0.7, "dance_grpo": 0.3, "cps": 0.7, "precise": 1.5, "dance_precise": 0.3, "ode": 0.0}


def _rows(kind, batch, dtype=torch.float64):
    """Per-row (sigma, next_sigma, std) drawn from different steps of the FLUX.2 schedule."""
    sigmas = flux2_sigmas(20, 1024).to(dtype)
    std = noise_std(sigmas, kind, ETA[kind])
    index = torch.tensor([0, 7, 13, 18, 19, 3, 11][:batch])
    return sigmas[index], sigmas[index + 1], std[index]


@pytest.mark.parametrize("kind", STOCHASTIC)
def test_log_prob_is_the_row_mean_of_normal_log_density(kind, gen):
    s, s_next, std = _rows(kind, 5)
    x = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)
    out = reference_step(x, v, s, s_next, std, kind=kind, generator=gen)
    normal = torch.distributions.Normal(out.mean, std.view(5, 1, 1, 1))
    expected = normal.log_prob(out.prev_sample).reshape(5, -1).mean(1)
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_affine_coefficients_reproduce_the_step_mean(kind, gen):
    s, s_next, std = _rows(kind, 5)
    x = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    v = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    mean = reference_step(x, v, s, s_next, std, kind=kind, generator=gen).mean
    c_x, c_v = mean_coefficients(s, s_next, std, kind)
    torch.testing.assert_close(mean, c_x[:, None] * x + c_v[:, None] * v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_autograd_of_mean_wrt_v_is_the_closed_form_jacobian(kind, gen):
    s, s_next, std = _rows(kind, 5)
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    mean = reference_step(x, v, s, s_next, std, kind=kind, generator=gen).mean
    (grad,) = torch.autograd.grad(mean.sum(), v)
    jac = mean_jacobian(s, s_next, std, kind)
    torch.testing.assert_close(grad, jac[:, None].expand_as(grad), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", STOCHASTIC)
def test_autograd_of_log_prob_wrt_v_is_closed_form(kind, gen):
    # d logp_row / d v_i = J (prev_i - mean_i) / (std**2 M): the fused backward relies on it.
    s, s_next, std = _rows(kind, 5)
    x = torch.randn(5, 2, 9, generator=gen, dtype=torch.float64)
    v = torch.randn(5, 2, 9, generator=gen, dtype=torch.float64)
    prev = reference_step(x, v, s, s_next, std, kind=kind, generator=gen).prev_sample
    v_train = (v + 0.01 * torch.randn(v.shape, generator=gen, dtype=torch.float64)).requires_grad_()
    out = reference_step(x, v_train, s, s_next, std, kind=kind, prev_sample=prev)
    weights = torch.randn(5, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out.log_prob * weights).sum(), v_train)
    jac = mean_jacobian(s, s_next, std, kind).view(5, 1, 1)
    expected = weights.view(5, 1, 1) * jac * (prev - out.mean) / (std.view(5, 1, 1) ** 2 * 18)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", STOCHASTIC)
def test_score_mode_of_a_sample_reproduces_its_log_prob(kind, gen):
    # On-policy law at the step level: rescoring the drawn sample gives the same log-prob.
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        s, s_next, std = _rows(kind, 4, torch.float32)
        x = torch.randn(4, 33, generator=gen).to(dtype)
        v = torch.randn(4, 33, generator=gen).to(dtype)
        sampled = step(x, v, s, s_next, std, kind=kind, generator=gen)
        assert sampled.prev_sample.dtype == dtype and sampled.log_prob.dtype == torch.float32
        scored = step(x, v, s, s_next, std, kind=kind, prev_sample=sampled.prev_sample)
        assert torch.equal(scored.log_prob, sampled.log_prob)
        assert torch.equal(scored.mean, sampled.mean)


def test_explicit_noise_is_used_verbatim(gen):
    s, s_next, std = _rows("precise", 3)
    x, v, z = (torch.randn(3, 10, generator=gen, dtype=torch.float64) for _ in range(3))
    out = reference_step(x, v, s, s_next, std, kind="precise", noise=z)
    torch.testing.assert_close(out.prev_sample, out.mean + std[:, None] * z, rtol=0, atol=1e-15)
    # Per element log density at prev = mean + std z is -z^2/2 - log std - log(2 pi)/2.
    expected = (-0.5 * z**2).mean(1) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-12, atol=1e-12)


def test_math_runs_in_float32_for_low_precision_inputs(gen):
    # bf16 products of large latents would overflow/round badly; the spec casts first.
    s, s_next, std = _rows("flow_grpo", 2, torch.float32)
    x = torch.randn(2, 64, generator=gen)
    v = torch.randn(2, 64, generator=gen)
    low = step(x.bfloat16(), v.bfloat16(), s, s_next, std, kind="flow_grpo", noise=torch.zeros(2, 64).bfloat16())
    high = step(x.bfloat16().float(), v.bfloat16().float(), s, s_next, std, kind="flow_grpo", noise=torch.zeros(2, 64))
    assert low.mean.dtype == torch.float32
    assert torch.equal(low.mean, high.mean)


def test_scalar_and_per_row_schedules_agree(gen):
    sigmas = flux2_sigmas(20, 1024)
    std = noise_std(sigmas, "precise", 1.5)
    x, v, z = (torch.randn(4, 12, generator=gen) for _ in range(3))
    scalar = step(x, v, sigmas[5].item(), sigmas[6].item(), std[5].item(), kind="precise", noise=z)
    rows = step(x, v, sigmas[5].expand(4), sigmas[6].expand(4), std[5].expand(4), kind="precise", noise=z)
    for a, b in zip(scalar, rows):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_ode_is_deterministic_euler_with_zero_log_prob(gen):
    x, v = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    out = step(x, v, 0.8, 0.5, 0.0, kind="ode", generator=gen)
    torch.testing.assert_close(out.prev_sample, x + (0.5 - 0.8) * v)
    assert torch.count_nonzero(out.log_prob) == 0


def test_non_contiguous_inputs_match_contiguous(gen):
    s, s_next, std = _rows("cps", 3, torch.float32)
    base_x = torch.randn(3, 16, 10, generator=gen)
    base_v = torch.randn(3, 10, 16, generator=gen)
    z = torch.randn(3, 10, 16, generator=gen)
    x, v = base_x.transpose(1, 2), base_v[:, :, :]
    assert not x.is_contiguous()
    a = step(x, v, s, s_next, std, kind="cps", noise=z)
    b = step(x.contiguous(), v, s, s_next, std, kind="cps", noise=z)
    for left, right in zip(a, b):
        assert torch.equal(left, right)
