"""``step``: the public sampler step, dispatched to a backend.

Only the reference backend exists until the fused kernels land; ``backend="auto"`` then
picks the fast path for the tensors' device.
"""

from __future__ import annotations

import torch

from .reference import StepOutput, reference_step

BACKENDS = ("auto", "reference")


def step(
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
    backend: str = "auto",
) -> StepOutput:
    """One sampler step ``sigma -> next_sigma``; see :func:`reference_step` for the math.

    Returns ``StepOutput(prev_sample, log_prob, mean)``: with ``prev_sample`` given it only
    scores it (no noise drawn). ``log_prob`` is per row, the mean over non-batch elements.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    return reference_step(
        x, v, sigma, next_sigma, std, kind=kind, noise=noise, prev_sample=prev_sample, generator=generator
    )
