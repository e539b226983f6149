"""SAMPLERS.md's theory, by Monte Carlo through the fused kernels (sample mode, Philox noise).

With Gaussian data x0 ~ N(0, q) the denoiser is analytic, so every step is x' = c x + std z
and the exact marginal variance after each step can be propagated in float64; the true
marginal is (1 - t)^2 q + t^2. The kernel's empirical variances must match the exact
propagation within sampling error, and show the laws: point-mass data keeps the variance
exact for the coefficient-preserving kinds (and ode) while Flow-GRPO / Dance-GRPO inject
excess noise; precise converges to the true marginal as steps grow while cps stays biased.
"""

from __future__ import annotations

import pytest
import torch

from .device_backends import CPU_CPP, CUDA_CPP, CUDA_TRITON
from precise_fast.sde import linear_sigmas, mean_coefficients, noise_std, philox_normal, sample_step
from precise_fast.sde.kinds import DEFAULT_ETA

# A million elements per law: the interpreter would take minutes, so Triton runs here on GPU only.
CASES = [CPU_CPP, CUDA_CPP, CUDA_TRITON]


def _denoiser_gain(t: float, q: float) -> float:
    """k(t) with v = k x for the analytic denoiser of x0 ~ N(0, q): E[x0 | x_t] = a x_t."""
    a = (1 - t) * q / ((1 - t) ** 2 * q + t**2)
    return (1 - (1 - t) * a) / t - a


def _run(case, kind: str, num_steps: int, q: float, rows: int, row_elems: int, seed: int):
    """(empirical variance after each step, exact variance after each step, sigmas)."""
    device, backend = case
    sigmas = linear_sigmas(num_steps)
    std = noise_std(sigmas, kind, DEFAULT_ETA[kind])
    seeds = (torch.arange(rows, dtype=torch.int64) + 1000 * seed).to(device)
    # x at t = 1 is pure noise: the stream's own normals, at a step index no step uses.
    x = philox_normal(seeds, -1, (rows, row_elems))
    exact, var = [], 1.0
    empirical = []
    for i in range(num_steps):
        t, t_next = sigmas[i].item(), sigmas[i + 1].item()
        k = _denoiser_gain(t, q)
        v = x * k
        x, _, _ = sample_step(
            x, v, t, t_next, std[i].item(), kind=kind, seeds=seeds, step_index=i, backend=backend
        )
        c_x, c_v = mean_coefficients(t, t_next, std[i], kind)
        var = (c_x + c_v * k) ** 2 * var + std[i].item() ** 2
        exact.append(float(var))
        empirical.append(x.to(torch.float64).var().item())
    return empirical, exact, sigmas


def _true_var(t: float, q: float) -> float:
    return (1 - t) ** 2 * q + t**2


N_POINT = 1 << 20  # a million elements: relative sampling error of a variance sqrt(2 / n) = 1.4e-3


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["cps", "precise", "dance_precise", "ode", "flow_grpo", "dance_grpo"])
def test_point_mass_data(case, kind):
    empirical, exact, sigmas = _run(case, kind, 10, 0.0, 8, N_POINT // 8, seed=1)
    tol = 6 * (2 / N_POINT) ** 0.5
    for i in range(9):  # every non-terminal step (the last one lands on t = 0, variance 1e-12)
        assert empirical[i] / exact[i] - 1 == pytest.approx(0, abs=tol), f"step {i}: kernel vs exact propagation"
    last = _true_var(sigmas[9].item(), 0.0)
    rel = empirical[8] / last - 1
    if kind in ("flow_grpo", "dance_grpo"):
        assert rel > 0.5, f"{kind} should inject > +50% excess variance, got {rel:+.3f}"
    else:
        for i in range(9):
            truth = _true_var(sigmas[i + 1].item(), 0.0)
            assert empirical[i] / truth - 1 == pytest.approx(0, abs=tol), f"{kind} step {i} marginal"


@pytest.mark.parametrize("case", CASES)
def test_precise_is_sde_consistent_and_cps_is_not(case):
    rows, row_elems = 2, 1 << 17
    n = rows * row_elems
    tol = 6 * (2 / n) ** 0.5
    errors = {}
    for kind, steps in [("precise", 10), ("precise", 100), ("precise", 1000), ("cps", 1000)]:
        empirical, exact, _ = _run(case, kind, steps, 1.0, rows, row_elems, seed=steps)
        assert empirical[-1] / exact[-1] - 1 == pytest.approx(0, abs=tol), f"{kind} {steps}: kernel vs exact"
        errors[(kind, steps)] = empirical[-1] / _true_var(0.0, 1.0) - 1
    p10, p100, p1000 = (abs(errors[("precise", s)]) for s in (10, 100, 1000))
    assert p10 > p100 > p1000, errors
    assert p1000 < 0.015, errors
    assert errors[("cps", 1000)] < -0.2, errors  # about -28%: coefficient preservation alone is biased
