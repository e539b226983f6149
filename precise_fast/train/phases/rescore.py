"""Re-score stored transitions under the current policy and form the per-row GRPO loss.

Timestep batching: the trained timesteps ``cols`` of a minibatch are folded into the batch
dimension, so one transformer forward/backward covers ``rows x len(cols)`` transitions
instead of one call per timestep. Every row carries its own timestep, sigma and std (the
transformer and the fused score op take per-row values), so the loss, and therefore the
gradient, is the same sum of per-transition terms as the per-timestep loop; only the float
rounding of batched matmuls differs (tests/train/test_timestep_batching.py).

The forward is :func:`precise_fast.models.predict_velocity`, the one the rollout engine
sampled with, and the score op is the same fused op in score mode, so with unchanged
weights the ratio is exactly 1 (the on-policy check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ...models import lora_disabled, predict_velocity
from ...sde import score_step
from ..grpo.loss import LossRows, grpo_loss_rows
from ..grpo.transitions import Transitions
from ..policy.guard import NonFiniteGuard


def _fold(t: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) at ``cols`` -> (B * len(cols), ...), sample-major."""
    return t[:, cols].flatten(0, 1)


def transition_losses(
    policy: Callable,
    batch: Transitions,
    cols: Sequence[int],
    *,
    clip_range: float,
    ratio_kind: str,
    beta: float = 0.0,
    reference: Callable | None = None,
    guard: NonFiniteGuard | None = None,
    step_backend: str = "auto",
) -> LossRows:
    """Per-row losses for ``batch`` at timestep columns ``cols`` (rows are sample-major).

    ``policy`` is called like the transformer (the DeepSpeed engine or a module);
    ``reference(kwargs)`` gives the frozen base's velocity when ``beta > 0``.
    """
    cols_t = torch.as_tensor(list(cols), dtype=torch.long, device=batch.x.device)
    repeat = len(cols)
    x = _fold(batch.x, cols_t)
    x_next = _fold(batch.x_next, cols_t)
    sigma, next_sigma, std = (_fold(t, cols_t) for t in (batch.sigma, batch.next_sigma, batch.std))
    timestep = _fold(batch.timestep, cols_t)
    embeds = batch.prompt_embeds.repeat_interleave(repeat, dim=0)
    text_ids = batch.text_ids.repeat_interleave(repeat, dim=0)
    latent_ids = batch.latent_ids.repeat_interleave(repeat, dim=0)
    old_mean = _fold(batch.old_mean, cols_t) if ratio_kind == "guard" else None

    v = predict_velocity(policy, x, timestep, embeds, text_ids, latent_ids)
    log_prob, mean, guard_bias = score_step(
        x, v, x_next, sigma, next_sigma, std, kind=batch.kind, old_mean=old_mean,
        return_mean=beta > 0, backend=step_backend,
    )
    if guard is not None:
        guard.check("model_output", v)
        guard.check("log_prob", log_prob)
    kl = None
    if beta > 0:
        if reference is None:
            raise ValueError("beta > 0 needs a reference model")
        with torch.no_grad():
            v_ref = reference(x, timestep, embeds, text_ids, latent_ids)
            _, mean_ref, _ = score_step(x, v_ref, x_next, sigma, next_sigma, std, kind=batch.kind,
                                        return_mean=True, backend=step_backend)
        kl = (mean - mean_ref).pow(2).flatten(1).mean(dim=1)
    return grpo_loss_rows(
        log_prob,
        _fold(batch.old_log_prob, cols_t),
        _fold(batch.advantages, cols_t),
        clip_range=clip_range,
        ratio_kind=ratio_kind,
        std=std,
        guard_bias=guard_bias,
        jacobian=_fold(batch.jacobian, cols_t),
        kl=kl,
        beta=beta,
    )


def lora_reference(policy: Callable, module: torch.nn.Module) -> Callable:
    """The frozen base of a LoRA policy: the same forward with the adapters switched off."""

    def reference(x, timestep, embeds, text_ids, latent_ids):
        with lora_disabled(module):
            return predict_velocity(policy, x, timestep, embeds, text_ids, latent_ids)

    return reference


def module_reference(frozen: torch.nn.Module) -> Callable:
    """The frozen base of a full fine-tune: a copy of the initial weights."""

    def reference(x, timestep, embeds, text_ids, latent_ids):
        return predict_velocity(frozen, x, timestep, embeds, text_ids, latent_ids)

    return reference
