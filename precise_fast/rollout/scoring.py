"""Score mode over a stored rollout: the trainer's side of the on-policy contract.

:func:`rescore_step` recomputes one step's transition with the current policy through the
same :func:`~precise_fast.models.predict_velocity` the engine sampled with, and scores the
stored next latent with ``precise_fast.sde.score_step``. With unchanged weights the
log-probs equal the rollout's own (ratio exactly 1): a deviation means the sampling and
training paths differ.
"""

from __future__ import annotations

import torch

from ..models.flux2 import predict_velocity
from ..sde import score_step
from .engine import Rollout


def rescore_step(
    transformer: torch.nn.Module,
    rollout: Rollout,
    step: int,
    *,
    rows=None,
    old_mean: torch.Tensor | None = None,
    return_mean: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(log_prob (B,), mean or None, guard_bias or None)`` of step ``step`` under ``transformer``.

    ``rows`` selects a minibatch (index tensor or list; default all rows). Gradients flow
    into the transformer's trainable weights through ``v`` when grad mode is on.
    """
    part = rollout if rows is None else rollout.select(rows)
    x = part.latents[:, step]
    v = predict_velocity(
        transformer, x, part.timesteps[:, step], part.prompt_embeds, part.text_ids, part.latent_ids
    )
    return score_step(
        x,
        v,
        part.latents[:, step + 1],
        part.sigmas[:, step],
        part.sigmas[:, step + 1],
        part.stds[:, step],
        kind=part.kinds[step],
        old_mean=old_mean,
        return_mean=return_mean,
        backend=backend,
    )
