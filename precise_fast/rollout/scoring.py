"""Score mode over stored transitions: the trainer's side of the on-policy contract.

:func:`score_transitions` is the one place where a stored transition ``x -> x_next`` is
re-scored under a transformer: the velocity through the same
:func:`~precise_fast.models.predict_velocity` the engine sampled with, then the stored
next latent scored by ``precise_fast.sde.score_step`` (the fused op the engine sampled
with, in score mode). Training runs it for the policy and for the frozen reference
(``precise_fast.train.phases.rescore``), so with unchanged weights its log-probs equal the
rollout's own (ratio exactly 1 on CPU, where the tests pin it; on a GPU to within the rounding of
the matmul and attention kernels chosen for each batch shape and grad mode, which differ between
a captured no-grad rollout and a re-scoring minibatch): a larger deviation means the sampling and
training paths differ.

It lives in the rollout layer, beside the engine whose forward and step op it must match;
the trainer decides which transitions to score and batches them (:class:`TransitionRows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..models.flux2 import predict_velocity
from ..sde import score_step


@dataclass(frozen=True)
class TransitionRows:
    """N stored transitions ``x -> x_next``, one row each, with everything the transformer
    and the step op need per row (every row carries its own timestep, sigmas and std, so
    rows of different timesteps share one forward)."""

    x: torch.Tensor  # (N, S, C) latent before the step
    timestep: torch.Tensor  # (N,) transformer input
    prompt_embeds: torch.Tensor  # (N, L, D)
    text_ids: torch.Tensor  # (N, L, 4)
    latent_ids: torch.Tensor  # (N, S, 4)
    x_next: torch.Tensor  # (N, S, C) the sampled latent after the step (data)
    sigma: torch.Tensor  # (N,)
    next_sigma: torch.Tensor  # (N,)
    std: torch.Tensor  # (N,)
    kind: str  # the sampler kind of every row's step


class Score(NamedTuple):
    velocity: torch.Tensor  # (N, S, C) in the transformer's dtype
    log_prob: torch.Tensor  # (N,)
    mean: torch.Tensor | None  # (N, S, C) with return_mean
    guard_bias: torch.Tensor | None  # (N,) with old_mean


def score_transitions(
    transformer,
    rows: TransitionRows,
    *,
    old_mean: torch.Tensor | None = None,
    return_mean: bool = False,
    backend: str = "auto",
) -> Score:
    """``rows`` re-scored under ``transformer`` (anything :func:`predict_velocity` calls: a
    module, the trainer's engine, a reference wrapper).

    ``old_mean`` (N, S, C), the mean at sampling time, adds GRPO-Guard's bias term.
    Gradients flow into the transformer's trainable weights through ``velocity`` when grad
    mode is on.
    """
    v = predict_velocity(transformer, rows.x, rows.timestep, rows.prompt_embeds, rows.text_ids, rows.latent_ids)
    log_prob, mean, guard_bias = score_step(
        rows.x, v, rows.x_next, rows.sigma, rows.next_sigma, rows.std, kind=rows.kind, old_mean=old_mean,
        return_mean=return_mean, backend=backend,
    )
    return Score(v, log_prob, mean, guard_bias)
