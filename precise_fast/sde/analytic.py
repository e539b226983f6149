"""The analytic Gaussian denoiser of SAMPLERS.md, for proving the samplers' marginal laws.

For data ``x0 ~ N(0, q)`` per element, ``E[x0 | x_t] = a x_t`` with
``a = (1 - t) q / ((1 - t)**2 q + t**2)``, so the ideal velocity is linear in ``x``:
``v = k x`` with ``k = (1 - (1 - t) a) / t - a``. Every sampler step is then
``x' = C x + std z`` with ``C = c_x + c_v k``, which propagates the variance exactly:
``var' = C**2 var + std**2``. The true marginal variance at ``t`` is ``(1 - t)**2 q + t**2``.
"""

from __future__ import annotations

import torch

from .kinds import STOCHASTIC, check_kind
from .reference import mean_coefficients, noise_std
from .schedules import as_schedule


def posterior_gain(t, q: float):
    """``a`` in ``E[x0 | x_t] = a x_t`` for Gaussian data of variance ``q``."""
    return (1.0 - t) * q / ((1.0 - t) ** 2 * q + t**2)


def velocity_gain(t, q: float):
    """``k`` in the ideal velocity ``v = k x_t`` (needs ``t > 0``)."""
    a = posterior_gain(t, q)
    return (1.0 - (1.0 - t) * a) / t - a


def gaussian_velocity(x: torch.Tensor, t, q: float) -> torch.Tensor:
    """Ideal velocity ``E[eps - x0 | x_t]`` for Gaussian data ``N(0, q)``; ``t`` a float or (B,)."""
    k = torch.as_tensor(velocity_gain(torch.as_tensor(t, dtype=torch.float64), q), device=x.device)
    k = k.reshape((-1,) + (1,) * (x.dim() - 1)) if k.dim() else k
    return (k * x.double()).to(x.dtype)


def true_variance(t, q: float):
    """The marginal variance of ``x_t = (1 - t) x0 + t eps`` for ``x0 ~ N(0, q)``."""
    return (1.0 - t) ** 2 * q + t**2


def propagate_variance(sigmas, kind: str, eta: float, q: float) -> torch.Tensor:
    """Exact variance of the sampler's latent after each step (N values, float64).

    Starts from ``x_1 = eps`` (variance 1) and applies ``var' = C**2 var + std**2`` with the
    step's own affine coefficients, so it is what infinitely many samples would show.
    """
    kind = check_kind(kind)
    sig = as_schedule(sigmas).to(torch.float64)
    std = noise_std(sig, kind, eta).to(torch.float64)
    var = torch.tensor(1.0, dtype=torch.float64)
    out = []
    for i in range(sig.numel() - 1):
        s, s_next = sig[i], sig[i + 1]
        c_x, c_v = mean_coefficients(s, s_next, std[i], kind)
        gain = c_x + c_v * velocity_gain(s, q)
        var = gain**2 * var + (std[i] ** 2 if kind in STOCHASTIC else 0.0)
        out.append(var)
    return torch.stack(out)
