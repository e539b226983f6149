"""The reference reproduces SAMPLERS.md's golden schedule, std and |J| values."""

import numpy as np
import pytest
import torch

from precise_fast.sde import flux2_mu, flux2_sigmas, mean_jacobian, noise_std

from .golden import (
    FLUX2_MU_20_1024,
    FLUX2_SIGMAS_20_1024,
    GOLDEN_ABS_J_PRECISE_15,
    GOLDEN_STD,
    GOLDEN_STD_POINTS,
)

# The golden values are printed to 6 significant digits.
GOLDEN_ATOL = 2e-6


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def sigmas(request):
    # The pipeline's schedule is float32; the golden values were computed in float32 too,
    # which shows in dance_precise's 1 - rho**2 cancellation (2e-5 relative at step 0).
    return flux2_sigmas(20, 1024).to(request.param)


def test_flux2_schedule_matches_golden(sigmas):
    assert flux2_mu(20, 1024) == pytest.approx(FLUX2_MU_20_1024, abs=1e-5)
    np.testing.assert_allclose(sigmas.double().numpy(), FLUX2_SIGMAS_20_1024, atol=GOLDEN_ATOL, rtol=0)


@pytest.mark.parametrize("num_steps,image_seq_len", [(20, 1024), (8, 256), (28, 4096), (1, 64)])
def test_flux2_schedule_equals_the_diffusers_pipeline(num_steps, image_seq_len):
    # What Flux2KleinPipeline.__call__ does: linspace sigmas, empirical mu, retrieve_timesteps.
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu, retrieve_timesteps

    from precise_fast.sde.schedules import FLUX2_SCHEDULER_CONFIG

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLUX2_SCHEDULER_CONFIG)
    base = np.linspace(1.0, 1 / num_steps, num_steps)
    mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps)
    timesteps, _ = retrieve_timesteps(scheduler, num_steps, "cpu", sigmas=base, mu=mu)
    ours = flux2_sigmas(num_steps, image_seq_len)
    assert torch.equal(ours, scheduler.sigmas.to(torch.float32))
    # The transformer is fed timestep / 1000, which is the sigma itself.
    torch.testing.assert_close(timesteps / 1000, ours[:-1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind,eta", sorted(GOLDEN_STD))
def test_std_matches_golden_vector(sigmas, kind, eta):
    std = noise_std(sigmas, kind, eta)
    assert std.shape == (20,)
    np.testing.assert_allclose(std.double().numpy(), GOLDEN_STD[(kind, eta)], atol=GOLDEN_ATOL, rtol=0)


@pytest.mark.parametrize("kind,eta", sorted(GOLDEN_STD_POINTS))
def test_std_matches_golden_points(sigmas, kind, eta):
    std = noise_std(sigmas, kind, eta)
    for index, expected in GOLDEN_STD_POINTS[(kind, eta)].items():
        rel = 1e-5 if sigmas.dtype == torch.float32 else 5e-5
        assert std[index].item() == pytest.approx(expected, abs=GOLDEN_ATOL / 10, rel=rel)


def test_abs_jacobian_matches_golden(sigmas):
    std = noise_std(sigmas, "precise", 1.5)
    jac = mean_jacobian(sigmas[:-1], sigmas[1:], std, "precise").abs()
    for index, expected in GOLDEN_ABS_J_PRECISE_15.items():
        assert jac[index].item() == pytest.approx(expected, rel=2e-5)


def test_ode_std_is_zero_and_stochastic_std_is_clamped(sigmas):
    assert torch.count_nonzero(noise_std(sigmas, "ode", 0.0)) == 0
    for kind in ("flow_grpo", "dance_grpo", "cps", "precise", "dance_precise"):
        # eta = 0 would give zero noise; the clamp keeps every log-prob finite.
        assert noise_std(sigmas, kind, 0.0).min().item() == pytest.approx(1e-6)


def test_precise_first_step_redraws_all_noise(sigmas):
    # r = 0 at s = 1, so std = s': the whole noise is replaced at the first step.
    std = noise_std(sigmas, "precise", 1.5)
    assert std[0].item() == pytest.approx(sigmas[1].item(), rel=1e-12)


def test_precise_with_eta_squared_two_is_dpm_solver_pp_sde(sigmas):
    # First-order DPM-Solver++ SDE (Lu et al. 2022): std = s' sqrt(1 - exp(-2 h)), h = lambda' - lambda.
    lam = torch.log((1 - sigmas[:-1]) / sigmas[:-1])
    lam_next = torch.log((1 - sigmas[1:-1]) / sigmas[1:-1])
    h = lam_next - lam[:-1]
    expected = sigmas[1:-1] * torch.sqrt(1 - torch.exp(-2 * h))
    std = noise_std(sigmas, "precise", 2**0.5)[:-1]
    tol = 1e-6 if sigmas.dtype == torch.float64 else 2e-5
    torch.testing.assert_close(std, expected, rtol=tol, atol=1e-9)
