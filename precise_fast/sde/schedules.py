"""Sigma schedules: validation, a linear schedule for the laws, and FLUX.2 Klein's.

A schedule is a 1-D tensor of N + 1 sigmas, strictly decreasing from 1 to 0; step i goes
from ``sigmas[i]`` to ``sigmas[i + 1]``.
"""

from __future__ import annotations

import numpy as np
import torch

# FLUX.2 Klein's scheduler settings (the `scheduler/scheduler_config.json` of the
# diffusers repositories): dynamic exponential shift whose mu comes from
# diffusers' `compute_empirical_mu`, no terminal stretch.
FLUX2_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}

_SCHEDULE_ATOL = 1e-6


def as_schedule(sigmas, *, name: str = "sigmas") -> torch.Tensor:
    """Return ``sigmas`` as a float tensor after checking it is a valid schedule.

    Raises ``ValueError`` naming ``name`` unless it is 1-D with at least two entries,
    starts at 1, ends at 0, and is strictly decreasing.
    """
    t = torch.as_tensor(sigmas)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"{name} must be a 1-D schedule of N + 1 >= 2 sigmas, got shape {tuple(t.shape)}")
    values = t.detach().to("cpu", torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains non-finite values")
    if abs(values[0].item() - 1.0) > _SCHEDULE_ATOL or abs(values[-1].item()) > _SCHEDULE_ATOL:
        raise ValueError(
            f"{name} must run from 1 to 0, got first={values[0].item():.6g}, last={values[-1].item():.6g}"
        )
    steps = values[1:] - values[:-1]
    if not (steps < 0).all():
        bad = int(torch.nonzero(steps >= 0)[0])
        raise ValueError(
            f"{name} must be strictly decreasing, but {name}[{bad}]={values[bad].item():.6g} "
            f"<= {name}[{bad + 1}]={values[bad + 1].item():.6g}"
        )
    return t


def linear_sigmas(num_steps: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The unshifted schedule ``linspace(1, 0, num_steps + 1)`` used by the laws' tests."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=dtype)


def flux2_mu(num_steps: int, image_seq_len: int) -> float:
    """Dynamic-shift ``mu`` of the FLUX.2 pipelines (diffusers' own helper)."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    return float(compute_empirical_mu(image_seq_len=int(image_seq_len), num_steps=int(num_steps)))


def flux2_sigmas(num_steps: int, image_seq_len: int) -> torch.Tensor:
    """The N + 1 sigmas ``Flux2KleinPipeline`` walks for ``num_steps`` steps (float32).

    ``linspace(1, 1/N, N)`` shifted by diffusers' flow-match Euler scheduler with dynamic
    exponential shifting at ``mu = compute_empirical_mu(image_seq_len, N)``, with the
    terminal 0 appended. The transformer's timestep input is the sigma itself.
    For 512x512 (image_seq_len 1024) and N = 20, mu = 1.91635.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if int(image_seq_len) < 1:
        raise ValueError(f"image_seq_len must be >= 1, got {image_seq_len}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLUX2_SCHEDULER_CONFIG)
    base = np.linspace(1.0, 1.0 / num_steps, num_steps)
    scheduler.set_timesteps(sigmas=base, mu=flux2_mu(num_steps, image_seq_len), device="cpu")
    return as_schedule(scheduler.sigmas.to(torch.float32), name="flux2 sigmas")
