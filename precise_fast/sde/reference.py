"""The plain-PyTorch reference of every sampler: the specification all backends meet.

Written to be read next to ``shared/SAMPLERS.md``; never fast. Notation: flow matching
``x_t = (1 - t) x0 + t eps``, the model predicts ``v = eps - x0``, and one step goes from
sigma ``s`` to ``s' < s`` with ``dt = s' - s``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .arguments import check_latent_pair, check_latents, check_step_values
from .kinds import COEFFICIENT_PRESERVING, EULER_MARUYAMA, MIN_STD, STOCHASTIC, check_eta, check_kind
from .philox import philox_normal
from .schedules import as_schedule

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class StepOutput(NamedTuple):
    """Result of one sampler step.

    prev_sample: the latent at ``s'`` in ``x``'s dtype (sample mode), or the given one (score mode).
    log_prob:    per-row Gaussian log density, the MEAN over non-batch elements, in the
                 compute dtype (float32; ``reference_step`` alone keeps float64 for float64
                 inputs). Zero for ``ode``.
    mean:        the transition mean, in the compute dtype.
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """``reference_step``'s default arithmetic: float32 (bf16 overflows), float64 for float64.

    float64 math is the spec's exact form, the truth the tests measure every backend
    against; the public step API (``step``, ``sample_step``, ``score_step``) asks for
    float32 on every input dtype, as all its backends compute.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- noise scale


def noise_std(sigmas, kind: str, eta: float) -> torch.Tensor:
    """Per-step noise scale ``std[i]`` for the step ``sigmas[i] -> sigmas[i + 1]``.

    ``sigmas`` holds N + 1 values strictly decreasing from 1 to 0; the result has N entries
    (dtype of ``sigmas``, at least float32). With ``s = sigmas[i]``, ``s' = sigmas[i+1]``,
    ``dt = s' - s``:

    - ode:           0 (deterministic)
    - flow_grpo:     eta * sqrt(s / (1 - s~)) * sqrt(-dt), s~ = s except s~ = sigmas[1] where s == 1
    - dance_grpo:    eta * sqrt(-dt)
    - cps:           s' * sin(eta * pi / 2)                                  (needs eta <= 1)
    - precise:       s' * sqrt(1 - r ** eta**2), r = s' (1 - s) / (s (1 - s'))
                     (r = exp(-(lambda' - lambda)), lambda = log((1 - t) / t): even in log-SNR)
    - dance_precise: s' * sqrt(clamp(1 - rho**2, 0, 1)), rho = exp(-eta**2 / 2 * (1/s' - 1/s)),
                     s and s' clamped to >= 1e-6

    Every stochastic std is then clamped to at least 1e-6.
    """
    kind = check_kind(kind)
    eta = check_eta(kind, eta)
    sig = as_schedule(sigmas)
    if sig.dtype != torch.float64:
        sig = sig.to(torch.float32)
    s, s_next = sig[:-1], sig[1:]
    dt = s_next - s
    if kind == "ode":
        return torch.zeros_like(s)
    if kind == "flow_grpo":
        s_tilde = torch.where(s == 1.0, sig[1], s)
        std = eta * torch.sqrt(s / (1.0 - s_tilde)) * torch.sqrt(-dt)
    elif kind == "dance_grpo":
        std = eta * torch.sqrt(-dt)
    elif kind == "cps":
        std = s_next * math.sin(eta * math.pi / 2.0)
    elif kind == "precise":
        r = s_next * (1.0 - s) / (s * (1.0 - s_next))
        std = s_next * torch.sqrt(1.0 - r ** (eta**2))
    else:  # dance_precise
        s_c, s_next_c = s.clamp_min(MIN_STD), s_next.clamp_min(MIN_STD)
        rho = torch.exp(-0.5 * eta**2 * (1.0 / s_next_c - 1.0 / s_c))
        std = s_next_c * torch.sqrt(torch.clamp(1.0 - rho**2, 0.0, 1.0))
    return std.clamp_min(MIN_STD)


# ----------------------------------------------------------------------------- affine form


def _scalar_tensor(value, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(value)
    if dtype is not None:
        return t.to(dtype)
    return t if t.is_floating_point() else t.to(torch.float64)


def mean_coefficients(sigma, next_sigma, std, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_x, c_v)`` with ``mean = c_x * x + c_v * v`` (the mean is affine in x and v).

    - Euler-Maruyama:          c_x = 1 - std**2 / (2 s),         c_v = dt - std**2 (1 - s) / (2 s)
    - coefficient-preserving:  c_x = (1 - s') + c,               c_v = -s (1 - s') + (1 - s) c,
                               c = sqrt(max(s'**2 - std**2, 0))
    - ode:                     c_x = 1,                          c_v = dt

    Arguments are floats or broadcastable tensors; results broadcast them.
    """
    kind = check_kind(kind)
    s, s_next, sd = (_scalar_tensor(a) for a in (sigma, next_sigma, std))
    dt = s_next - s
    if kind in EULER_MARUYAMA:
        c_x = 1.0 - 0.5 * sd**2 / s
        c_v = dt - 0.5 * sd**2 * (1.0 - s) / s
    elif kind in COEFFICIENT_PRESERVING:
        c = torch.sqrt(torch.clamp(s_next**2 - sd**2, min=0.0))
        c_x = (1.0 - s_next) + c
        c_v = -s * (1.0 - s_next) + (1.0 - s) * c
    else:
        c_x = torch.ones_like(dt)
        c_v = dt
    return torch.broadcast_tensors(c_x, c_v)


def mean_jacobian(sigma, next_sigma, std, kind: str) -> torch.Tensor:
    """``J = d mean / d v`` of one step (a per-row scalar; the GRPO-Guard loss divides by |J|).

    Euler-Maruyama: ``dt - std**2 (1 - s) / (2 s)``; coefficient-preserving:
    ``-s (1 - s') + (1 - s) sqrt(max(s'**2 - std**2, 0))``; ode: ``dt``.
    """
    return mean_coefficients(sigma, next_sigma, std, kind)[1]


# ----------------------------------------------------------------------------- the step


def reference_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    next_sigma,
    std,
    *,
    kind: str,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    math_dtype: torch.dtype | None = None,
) -> StepOutput:
    """One sampler step from ``sigma`` to ``next_sigma``, written as SAMPLERS.md states it.

    Sample mode (``prev_sample=None``): ``prev = mean + std * z`` with ``z`` = ``noise`` or
    ``randn(generator=generator)``; ``prev`` is rounded to ``x.dtype`` and the log-prob is
    that of the rounded value, so re-scoring a stored rollout reproduces it exactly.
    Score mode: the log-prob of the given ``prev_sample``; nothing is drawn.

        x0_hat  = x - s v                  eps_hat = x + (1 - s) v
        Euler-Maruyama:           mean = x + dt v + std**2 / 2 * (-eps_hat / s)
        coefficient-preserving:   mean = (1 - s') x0_hat + sqrt(max(s'**2 - std**2, 0)) eps_hat
        ode:                      mean = x + dt v
        log_prob[row] = mean_i( -(prev_i - mean_i)**2 / (2 std**2) - log std - log(2 pi) / 2 )

    ``sigma``, ``next_sigma``, ``std`` are floats or per-row tensors of shape (B,). The math
    runs in ``math_dtype``: by default float32, float64 for float64 inputs (see
    :func:`compute_dtype`); gradients flow through ``v`` and ``x``.
    """
    check_latents(x, v, kind)
    if prev_sample is not None:
        check_latent_pair(x, prev_sample, "prev_sample")
    if noise is not None:
        check_latent_pair(x, noise, "noise")

    batch, device = x.shape[0], x.device
    cdt = compute_dtype(x.dtype) if math_dtype is None else math_dtype
    s, s_next, sd = check_step_values(sigma, next_sigma, std, kind, batch, device, cdt)

    def rows(t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, ..., 1) to broadcast over x
        return t.view((batch,) + (1,) * (x.dim() - 1))

    s, s_next, sd = rows(s), rows(s_next), rows(sd)
    x32, v32 = x.to(cdt), v.to(cdt)
    dt = s_next - s
    x0_hat = x32 - s * v32
    eps_hat = x32 + (1.0 - s) * v32

    if kind in EULER_MARUYAMA:
        score = -eps_hat / s
        mean = x32 + dt * v32 + 0.5 * sd**2 * score
    elif kind in COEFFICIENT_PRESERVING:
        mean = (1.0 - s_next) * x0_hat + torch.sqrt(torch.clamp(s_next**2 - sd**2, min=0.0)) * eps_hat
    else:
        mean = x32 + dt * v32

    if prev_sample is None:
        if kind == "ode":
            prev_sample = mean.detach().to(x.dtype)
        else:
            z = noise.to(cdt) if noise is not None else torch.randn(x.shape, generator=generator, dtype=cdt, device=device)
            # The drawn sample is data, not a function of the policy: no gradient through it.
            prev_sample = (mean + sd * z).detach().to(x.dtype)

    if kind == "ode":
        log_prob = torch.zeros(batch, dtype=cdt, device=device)
    else:
        prev32 = prev_sample.to(cdt)
        elementwise = -((prev32 - mean) ** 2) / (2.0 * sd**2) - torch.log(sd) - _HALF_LOG_2PI
        log_prob = elementwise.reshape(batch, -1).mean(dim=1)
    return StepOutput(prev_sample, log_prob, mean)


# ----------------------------------------------------------------------------- the reference backend
# What ``sample_step`` / ``score_step`` run for backend="reference", after their rules: the
# step above in float32 math, with the Philox stream of the fused backends.


def reference_sample(x, v, s, s_next, sd, *, kind: str, seeds, step_index, noise, return_mean: bool, out=None):
    """``sample_step`` on (B,) float32 rows: noise from ``noise`` or ``philox_normal(seeds,
    step_index)``; results in new tensors or written into ``out``."""
    if kind in STOCHASTIC and noise is None:
        noise = philox_normal(seeds, step_index, x.shape)
    res = reference_step(x, v, s, s_next, sd, kind=kind, noise=noise, math_dtype=torch.float32)
    prev, log_prob, mean = res.prev_sample, res.log_prob.detach(), res.mean.detach()
    if out is None:
        return prev, log_prob, (mean if return_mean else None)
    out[0].copy_(prev)
    out[1].copy_(log_prob)
    if return_mean:
        out[2].copy_(mean)
    return out[0], out[1], out[2]


def reference_score(x, v, prev_sample, s, s_next, sd, *, kind: str, old_mean, return_mean: bool):
    """``score_step`` on (B,) float32 rows: ``(log_prob, mean or None, guard_bias or None)``,
    the bias ``mean((mean - old_mean)**2)`` per row."""
    res = reference_step(x, v, s, s_next, sd, kind=kind, prev_sample=prev_sample, math_dtype=torch.float32)
    bias = None
    if old_mean is not None:
        diff = res.mean - old_mean.to(res.mean.dtype)
        bias = (diff * diff).reshape(x.shape[0], -1).mean(dim=1)
    return res.log_prob, (res.mean if return_mean else None), bias
