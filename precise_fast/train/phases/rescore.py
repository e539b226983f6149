"""Re-score stored transitions under the current policy and form the per-row GRPO loss.

Timestep batching: the trained timesteps ``cols`` of a minibatch are folded into the batch
dimension, so one transformer forward/backward covers ``rows x len(cols)`` transitions
instead of one call per timestep. Every row carries its own timestep, sigma and std (the
transformer and the fused score op take per-row values), so the loss, and therefore the
gradient, is the same sum of per-transition terms as the per-timestep loop; only the float
rounding of batched matmuls differs (tests/train/test_timestep_batching.py).

Scoring itself is :func:`precise_fast.rollout.score_transitions`, the rollout layer's one
re-scoring primitive (the engine's forward and the same fused op in score mode), for the
policy and for the frozen reference alike, so with unchanged weights the ratio is exactly 1
on CPU (the on-policy check, tests/rollout/test_policy_and_seeds.py) and 1 to within kernel
rounding on a GPU (``train/first_ratio_abs_dev`` reports how far).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ...rollout import Score, TransitionRows, score_transitions
from ..grpo.loss import LossRows, grpo_loss_rows
from ..grpo.transitions import Transitions
from ..policy.guard import NonFiniteGuard


def _fold(t: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) at ``cols`` -> (B * len(cols), ...), sample-major."""
    return t[:, cols].flatten(0, 1)


def rescore(
    policy: Callable,
    batch: Transitions,
    cols: torch.Tensor,
    *,
    guard_mean: bool = False,
    return_mean: bool = False,
    backend: str = "auto",
) -> tuple[TransitionRows, Score]:
    """The transitions of ``batch`` at timestep columns ``cols`` (a long tensor) folded into
    rows for one forward (sample-major, each sample's conditioning repeated per column), and
    their :class:`~precise_fast.rollout.Score` under ``policy``.

    ``guard_mean`` passes each row's mean at sampling time, for GRPO-Guard's bias term.
    """
    repeat = len(cols)
    rows = TransitionRows(
        x=_fold(batch.x, cols),
        timestep=_fold(batch.timestep, cols),
        prompt_embeds=batch.prompt_embeds.repeat_interleave(repeat, dim=0),
        text_ids=batch.text_ids.repeat_interleave(repeat, dim=0),
        latent_ids=batch.latent_ids.repeat_interleave(repeat, dim=0),
        x_next=_fold(batch.x_next, cols),
        sigma=_fold(batch.sigma, cols),
        next_sigma=_fold(batch.next_sigma, cols),
        std=_fold(batch.std, cols),
        kind=batch.kind,
    )
    old_mean = _fold(batch.old_mean, cols) if guard_mean else None
    return rows, score_transitions(policy, rows, old_mean=old_mean, return_mean=return_mean, backend=backend)


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
    ``reference``, needed when ``beta > 0``, is the frozen base called the same way
    (``train.policy.reference``).
    """
    cols_t = torch.as_tensor(list(cols), dtype=torch.long, device=batch.x.device)
    rows, (v, log_prob, mean, guard_bias) = rescore(
        policy, batch, cols_t, guard_mean=ratio_kind == "guard", return_mean=beta > 0, backend=step_backend,
    )
    if guard is not None:
        guard.check("model_output", v)
        guard.check("log_prob", log_prob)
    kl = None
    if beta > 0:
        if reference is None:
            raise ValueError("beta > 0 needs a reference model")
        with torch.no_grad():
            mean_ref = score_transitions(reference, rows, return_mean=True, backend=step_backend).mean
        kl = (mean - mean_ref).pow(2).flatten(1).mean(dim=1)
    return grpo_loss_rows(
        log_prob,
        _fold(batch.old_log_prob, cols_t),
        _fold(batch.advantages, cols_t),
        clip_range=clip_range,
        ratio_kind=ratio_kind,
        std=rows.std,
        guard_bias=guard_bias,
        jacobian=_fold(batch.jacobian, cols_t),
        kl=kl,
        beta=beta,
    )
