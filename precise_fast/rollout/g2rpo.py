"""G2RPO's singular stochastic sampling (Zhou et al., arXiv 2510.01982; github.com/bcmi/Granular-GRPO).

Per prompt, one deterministic ODE anchor trajectory. Then, for each chosen step k and each
group member, a single stochastic step ``x_k -> x_{k+1}`` from the anchor latent (so the
member's reward is attributable to that one noise draw), followed by deterministic ODE
completion to sigma = 0; with several granularities g the completion strides g sigmas at a
time, on the path its authors' code takes (one ODE step ``k+1 -> k+2``, then strides of g
from ``k+2``; :func:`precise_fast.rollout.plan.granular_path`, ``completion``), and G2RPO's
multi-granularity advantage integration scores each.

Every piece is a static plan of the engine (the anchor; per k the stochastic hop; per
(k, g) the completion), batched over prompts x members and captured on CUDA like any
other rollout. The member noise at step k is Philox stream ``1 + k`` of the member's seed:
the same draw a full SDE rollout with that seed would make at step k.

:func:`sample_g2rpo` takes the engine as an argument (it is not an engine method): it uses
only the engine's public pieces (``sample``, ``run_plan``, ``plans``), so this module
depends on the engine and the engine knows nothing of G2RPO.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..sde.kinds import ODE, STOCHASTIC
from .engine import Rollout, RolloutEngine
from .plan import Hop, granular_path
from .scoring import TransitionRows
from .seeds import as_seed_tensor


@dataclass
class G2RPORollout:
    """Result of :func:`sample_g2rpo` for P prompts, K steps, G members, n_g granularities.

    The step-k transition of member m of prompt p goes ``anchor.latents[p, k] ->
    samples[p, ki, m]`` with mean ``means[p, ki, m]``, log-prob ``log_probs[p, ki, m]``,
    sigma ``sigmas[ki] -> next_sigmas[ki]``, std ``stds[ki]`` and transformer input
    ``timesteps[ki]``; ``images[p, ki, m, gi]`` is its completion at granularity
    ``granularities[gi]``.
    """

    anchor: Rollout  # P rows, deterministic
    steps: tuple[int, ...]
    granularities: tuple[int, ...]
    group_size: int
    samples: torch.Tensor  # (P, K, G, S, C)
    means: torch.Tensor  # (P, K, G, S, C) float32
    log_probs: torch.Tensor  # (P, K, G) float32
    sigmas: torch.Tensor  # (K,)
    next_sigmas: torch.Tensor  # (K,)
    stds: torch.Tensor  # (K,)
    timesteps: torch.Tensor  # (K,)
    final_latents: torch.Tensor  # (P, K, G, n_g, S, C)
    member_seeds: torch.Tensor  # (P, G) int64
    kind: str
    images: torch.Tensor | None = None  # (P, K, G, n_g, 3, H, W)

    def step_rows(self, ki: int) -> TransitionRows:
        """Step ``steps[ki]``'s transitions, P * G rows prompt-major, as :func:`score_transitions` re-scores
        them (their log-probs are ``log_probs[:, ki]`` flattened the same way)."""
        p, _, g = self.log_probs.shape
        rows = p * g
        return TransitionRows(
            x=self.anchor.latents[:, self.steps[ki]].repeat_interleave(g, dim=0),
            timestep=self.timesteps[ki].expand(rows),
            prompt_embeds=self.anchor.prompt_embeds.repeat_interleave(g, dim=0),
            text_ids=self.anchor.text_ids.repeat_interleave(g, dim=0),
            latent_ids=self.anchor.latent_ids.repeat_interleave(g, dim=0),
            x_next=self.samples[:, ki].reshape(rows, *self.samples.shape[3:]),
            sigma=self.sigmas[ki].expand(rows),
            next_sigma=self.next_sigmas[ki].expand(rows),
            std=self.stds[ki].expand(rows),
            kind=self.kind,
        )


@torch.no_grad()
def sample_g2rpo(
    engine: RolloutEngine,
    prompt_embeds: torch.Tensor | None = None,
    *,
    prompts: Sequence[str] | None = None,
    init_seeds,
    member_seeds,
    steps: Sequence[int],
    granularities: Sequence[int] = (1,),
    initial_latents: torch.Tensor | None = None,
    decode: bool = True,
    completion: str = "paper",
) -> G2RPORollout:
    """G2RPO singular stochastic sampling with ``engine``'s kind and eta.

    Args:
        prompt_embeds / prompts: P prompts (one row each).
        init_seeds: (P,) seeds of the anchors' initial latents.
        member_seeds: (P, G) seeds of the group members' stochastic steps.
        steps: schedule indices k (0 <= k < N) at which a member takes its stochastic step.
        granularities: ODE completion strides g >= 1 (1 = every sigma).
        completion: the completion path form of :func:`~precise_fast.rollout.plan.granular_path`.
    """
    if engine.kind not in STOCHASTIC:
        raise ValueError(f"G2RPO needs a stochastic kind, the engine samples with {engine.kind!r}")
    steps = tuple(int(k) for k in steps)
    granularities = tuple(int(g) for g in granularities)
    n = engine.num_steps
    if not steps or any(not 0 <= k < n for k in steps) or len(set(steps)) != len(steps):
        raise ValueError(f"steps must be distinct schedule indices in [0, {n}), got {steps}")
    if not granularities or any(g < 1 for g in granularities) or len(set(granularities)) != len(granularities):
        raise ValueError(f"granularities must be distinct integers >= 1, got {granularities}")

    anchor = engine.sample(
        prompt_embeds, prompts=prompts, seeds=init_seeds, init_seeds=init_seeds,
        initial_latents=initial_latents, mode=ODE, decode=False,
    )
    num_prompts = anchor.batch_size
    members = torch.as_tensor(member_seeds)
    if members.dim() != 2 or members.shape[0] != num_prompts:
        raise ValueError(f"member_seeds must be (P={num_prompts}, G), got {tuple(members.shape)}")
    group = members.shape[1]
    flat_seeds = as_seed_tensor(members.reshape(-1), "member_seeds", engine.device)
    embeds = anchor.prompt_embeds.repeat_interleave(group, dim=0)
    rows = num_prompts * group
    layout = engine.layout

    samples, means, log_probs, finals = [], [], [], []
    for k in steps:
        start = anchor.latents[:, k].repeat_interleave(group, dim=0)
        sde = engine.run_plan(engine.plans.plan([Hop(k, k + 1, engine.kind)]), embeds, flat_seeds, start)
        sample = sde.latents[:, 1]
        samples.append(sample)
        means.append(sde.means[:, 0])
        log_probs.append(sde.log_probs[:, 0])
        per_g = []
        for g in granularities:
            path = granular_path(k + 1, n, g, completion)
            if len(path) == 1:  # k is the last step: the stochastic hop already reached sigma = 0
                per_g.append(sample)
                continue
            plan = engine.plans.plan([Hop(a, b, ODE) for a, b in zip(path, path[1:])])
            per_g.append(engine.run_plan(plan, embeds, flat_seeds, sample).latents[:, -1])
        finals.append(torch.stack(per_g, dim=1))  # (rows, n_g, S, C)

    num_k, num_g = len(steps), len(granularities)
    shape = (layout.seq_len, layout.channels)
    final = torch.stack(finals, dim=1)  # (rows, K, n_g, S, C)
    images = None
    if decode:
        flat = engine.decode(final.reshape(rows * num_k * num_g, *shape))
        images = flat.reshape(num_prompts, group, num_k, num_g, *flat.shape[1:]).transpose(1, 2)
    idx = torch.tensor(steps)
    sched = engine.schedule
    std_table = engine.plans.std(engine.kind)
    return G2RPORollout(
        anchor=anchor,
        steps=steps,
        granularities=granularities,
        group_size=group,
        samples=torch.stack(samples, dim=1).reshape(num_prompts, group, num_k, *shape).transpose(1, 2),
        means=torch.stack(means, dim=1).reshape(num_prompts, group, num_k, *shape).transpose(1, 2),
        log_probs=torch.stack(log_probs, dim=1).reshape(num_prompts, group, num_k).transpose(1, 2),
        sigmas=sched.sigmas[idx].to(engine.device),
        next_sigmas=sched.sigmas[idx + 1].to(engine.device),
        stds=std_table[idx].to(engine.device),
        timesteps=sched.timesteps[idx].to(engine.device),
        final_latents=final.reshape(num_prompts, group, num_k, num_g, *shape).transpose(1, 2),
        member_seeds=flat_seeds.reshape(num_prompts, group),
        kind=engine.kind,
        images=images,
    )
