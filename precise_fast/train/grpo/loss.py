"""The clipped GRPO policy loss, plain or with GRPO-Guard's ratio normalisation (per row).

shared/SAMPLERS.md, "The GRPO objective used by the Precise recipe":

- plain ratio ``exp(logp - logp_old)``;
- GRPO-Guard's ratio normalisation ("rationorm"): with the step's std ``sigma`` and
  ``bias = mean((mean - mean_old)**2) / (2 sigma**2)``, ``ratio = exp((logp - logp_old +
  bias) * sigma)`` and the clipped loss of the step is divided by ``mean(|J|)``, ``J = d
  mean / d v``. The log-ratio then equals ``mean(z * (mean - mean_old))``: no 1/sigma
  blow-up at low-noise steps;
- ``loss = max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps)) [+ beta mean((mean - mean_ref)**2)]``.

One row is one (sample, timestep) transition; the caller weights and normalises rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossRows:
    """Per-row terms (R,): the loss to minimise and what the logs report."""

    loss: torch.Tensor  # differentiable
    ratio: torch.Tensor  # detached
    clipped: torch.Tensor  # bool, detached: the clip took the gradient away
    approx_kl: torch.Tensor  # 0.5 (logp - logp_old)^2, detached
    policy: torch.Tensor  # detached policy term
    kl: torch.Tensor  # detached KL term (0 when beta == 0)


def grpo_loss_rows(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    ratio_kind: str = "plain",
    std: torch.Tensor | None = None,
    guard_bias: torch.Tensor | None = None,
    jacobian: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
) -> LossRows:
    """Clipped GRPO loss per row. ``guard`` needs ``std``, ``guard_bias`` (mean squared mean shift) and ``jacobian``."""
    old = old_log_prob.to(log_prob.dtype)
    adv = advantages.to(log_prob.dtype)
    diff = log_prob - old
    if ratio_kind == "plain":
        log_ratio = diff
        scale = None
    elif ratio_kind == "guard":
        if std is None or guard_bias is None or jacobian is None:
            raise ValueError("the guard ratio needs std, guard_bias and jacobian per row")
        sigma = std.to(log_prob.dtype)
        log_ratio = (diff + guard_bias / (2.0 * sigma * sigma)) * sigma
        scale = jacobian.to(log_prob.dtype).abs()
    else:
        raise ValueError(f"ratio_kind must be 'plain' or 'guard', got {ratio_kind!r}")
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    policy = torch.maximum(unclipped, clipped)
    if scale is not None:
        policy = policy / scale
    loss = policy
    kl_term = torch.zeros_like(policy)
    if beta > 0:
        if kl is None:
            raise ValueError("beta > 0 needs the per-row KL term")
        kl_term = beta * kl.to(policy.dtype)
        loss = loss + kl_term
    with torch.no_grad():
        was_clipped = (ratio - 1.0).abs() > clip_range
    return LossRows(
        loss=loss,
        ratio=ratio.detach(),
        clipped=was_clipped,
        approx_kl=(0.5 * diff * diff).detach(),
        policy=policy.detach(),
        kl=kl_term.detach(),
    )
