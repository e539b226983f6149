"""What the trainer trains on: per sample, its T trained transitions ``x_t -> x_{t+1}``.

Every algorithm reduces to this shape. GRPO and the SDE window take the trained steps of
a full trajectory (:func:`from_rollout`); G2RPO takes, for each group member, its single
stochastic step at each branching step, all leaving the prompt's shared ODE anchor
(:func:`from_g2rpo`). Training then never needs to know which algorithm sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch

from ...kinds import ODE
from ...sde import mean_jacobian


@dataclass
class Transitions:
    x: torch.Tensor  # (B, T, S, C) latent before the step
    x_next: torch.Tensor  # (B, T, S, C) sampled latent after it (data)
    old_log_prob: torch.Tensor  # (B, T) float32
    old_mean: torch.Tensor  # (B, T, S, C) float32 transition mean at sampling time
    sigma: torch.Tensor  # (B, T) float32
    next_sigma: torch.Tensor  # (B, T)
    std: torch.Tensor  # (B, T)
    timestep: torch.Tensor  # (B, T) transformer input
    jacobian: torch.Tensor  # (B, T) d mean / d v
    step_index: torch.Tensor  # (B, T) int64 schedule index (logging)
    prompt_embeds: torch.Tensor  # (B, L, D)
    text_ids: torch.Tensor  # (B, L, 4)
    latent_ids: torch.Tensor  # (B, S, 4)
    kind: str
    advantages: torch.Tensor | None = None  # (B, T) float32, after the rewards
    weight: torch.Tensor | None = None  # (B,) 1 for real samples, 0 for padding

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def num_steps(self) -> int:
        return self.x.shape[1]

    def _tensor_fields(self):
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)]

    def select(self, rows) -> "Transitions":
        index = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, **{n: getattr(self, n).index_select(0, index.to(getattr(self, n).device)) for n in self._tensor_fields()})


def concat(parts: Sequence[Transitions]) -> Transitions:
    first = parts[0]
    if any(p.kind != first.kind for p in parts):
        raise ValueError("cannot concatenate transitions of different sampler kinds")
    names = first._tensor_fields()
    return replace(first, **{n: torch.cat([getattr(p, n) for p in parts]) for n in names})


def _jacobian(sigma, next_sigma, std, kind) -> torch.Tensor:
    return mean_jacobian(sigma, next_sigma, std, kind).to(torch.float32)


def from_rollout(rollout, steps: Sequence[int]) -> Transitions:
    """The transitions of ``rollout`` (a :class:`precise_fast.rollout.Rollout`) at schedule ``steps``."""
    steps = list(steps)
    kinds = {rollout.kinds[i] for i in steps}
    if len(kinds) != 1 or ODE in kinds:
        raise ValueError(f"trained steps {steps} must all be stochastic steps of one kind, got {sorted(kinds)}")
    idx = torch.tensor(steps, device=rollout.latents.device)
    nxt = idx + 1
    sigma = rollout.sigmas[:, idx]
    next_sigma = rollout.sigmas[:, nxt]
    std = rollout.stds[:, idx]
    kind = kinds.pop()
    return Transitions(
        x=rollout.latents[:, idx],
        x_next=rollout.latents[:, nxt],
        old_log_prob=rollout.log_probs[:, idx],
        old_mean=rollout.means[:, idx],
        sigma=sigma,
        next_sigma=next_sigma,
        std=std,
        timestep=rollout.timesteps[:, idx],
        jacobian=_jacobian(sigma, next_sigma, std, kind),
        step_index=idx.unsqueeze(0).expand(rollout.batch_size, -1).clone(),
        prompt_embeds=rollout.prompt_embeds,
        text_ids=rollout.text_ids,
        latent_ids=rollout.latent_ids,
        kind=kind,
    )


def from_g2rpo(g2) -> Transitions:
    """Rows (prompt-major, then member) of a :class:`precise_fast.rollout.G2RPORollout`; T = its K steps."""
    p, k, g = g2.log_probs.shape
    rows = p * g
    steps = torch.tensor(g2.steps, device=g2.samples.device)
    anchor = g2.anchor.latents[:, steps]  # (P, K, S, C): every member leaves the same latent
    per_row = lambda t: t.unsqueeze(0).expand(rows, -1).clone()  # noqa: E731  (K,) -> (rows, K)
    members_first = lambda t: t.transpose(1, 2).reshape(rows, k, *t.shape[3:])  # noqa: E731  (P, K, G, ...) -> (P*G, K, ...)
    sigma, next_sigma, std = per_row(g2.sigmas), per_row(g2.next_sigmas), per_row(g2.stds)
    return Transitions(
        x=anchor.repeat_interleave(g, dim=0),
        x_next=members_first(g2.samples),
        old_log_prob=members_first(g2.log_probs),
        old_mean=members_first(g2.means),
        sigma=sigma,
        next_sigma=next_sigma,
        std=std,
        timestep=per_row(g2.timesteps),
        jacobian=_jacobian(sigma, next_sigma, std, g2.kind),
        step_index=per_row(steps),
        prompt_embeds=g2.anchor.prompt_embeds.repeat_interleave(g, dim=0),
        text_ids=g2.anchor.text_ids.repeat_interleave(g, dim=0),
        latent_ids=g2.anchor.latent_ids.repeat_interleave(g, dim=0),
        kind=g2.kind,
    )
