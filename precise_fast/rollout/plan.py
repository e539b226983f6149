"""Schedules and static step plans of the rollout engine.

A :class:`Schedule` is the pipeline's own sigma / timestep schedule for (steps, image size),
computed once. A :class:`Plan` is a static sequence of hops over it - ``sigmas[start] ->
sigmas[end]`` with a sampler kind - together with its per-hop tables on the device
(transformer timestep, sigma, next sigma, std, Philox step index). Every sampling mode is a
plan: the full SDE, an SDE window, the ODE, and each G2RPO branch (one stochastic hop, then
ODE hops that may skip sigmas). The engine runs (and on CUDA captures) a plan without any
data-dependent Python, so the tables are built once per plan and never per step.

Noise streams (``precise_fast.sde.philox``, keyed by ``(seed, step_index, element)``):
stream ``INIT_NOISE_STEP = 0`` draws a row's initial latent, and the hop leaving
``sigmas[i]`` draws from stream ``1 + i``. A row's noise therefore depends only on its
seed and the schedule position, never on the batch layout or on which other hops ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..sde import noise_std
from ..sde.kinds import ODE, STOCHASTIC, check_eta, check_kind

INIT_NOISE_STEP = 0


def noise_step_index(schedule_index: int) -> int:
    """Philox step index of the hop leaving ``sigmas[schedule_index]`` (stream 0 is the initial latent)."""
    return 1 + int(schedule_index)


@dataclass(frozen=True)
class Schedule:
    """The N + 1 sigmas and N transformer timesteps the pipeline walks (float32, CPU).

    ``timesteps[i]`` is what the pipeline feeds the transformer at step i: the scheduler
    timestep (sigma * 1000) rounded to the latent dtype, divided by 1000.
    """

    num_steps: int
    image_seq_len: int
    sigmas: torch.Tensor
    timesteps: torch.Tensor


def pipeline_schedule(pipeline, num_steps: int, image_seq_len: int, latent_dtype=torch.float32) -> Schedule:
    """The pipeline's schedule, computed as ``Flux2KleinPipeline.__call__`` does, on a scheduler copy.

    ``linspace(1, 1/N, N)`` through the pipeline's scheduler config with dynamic shift
    ``mu = compute_empirical_mu(image_seq_len, N)``; the pipeline's scheduler is not touched.
    """
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    num_steps, image_seq_len = int(num_steps), int(image_seq_len)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    base = np.linspace(1.0, 1.0 / num_steps, num_steps)
    mu = compute_empirical_mu(image_seq_len=image_seq_len, num_steps=num_steps)
    scheduler.set_timesteps(sigmas=base, mu=mu, device="cpu")
    sigmas = scheduler.sigmas.to(torch.float32)
    if sigmas.shape != (num_steps + 1,) or sigmas[-1] != 0:
        raise ValueError(f"scheduler gave {tuple(sigmas.shape)} sigmas ending at {sigmas[-1].item()}, expected N + 1 ending at 0")
    timesteps = scheduler.timesteps.to(latent_dtype) / 1000
    return Schedule(num_steps, image_seq_len, sigmas, timesteps.to(torch.float32))


@dataclass(frozen=True)
class Hop:
    """One transition ``sigmas[start] -> sigmas[end]`` (``end > start``) with sampler ``kind``."""

    start: int
    end: int
    kind: str


class Plan:
    """A static hop sequence and its device tables (built once, reused by every run/replay)."""

    def __init__(self, schedule: Schedule, hops: Sequence[Hop], std_table: torch.Tensor, device):
        self.schedule = schedule
        self.hops = tuple(hops)
        if not self.hops:
            raise ValueError("a plan needs at least one hop")
        for hop in self.hops:
            check_kind(hop.kind)
            if not 0 <= hop.start < hop.end <= schedule.num_steps:
                raise ValueError(f"hop {hop} is outside the {schedule.num_steps}-step schedule")
            if hop.kind in STOCHASTIC and hop.end != hop.start + 1:
                raise ValueError(f"stochastic hop {hop} must be a single schedule step (its std is per step)")
        for a, b in zip(self.hops, self.hops[1:]):
            if b.start != a.end:
                raise ValueError(f"hops {a} and {b} do not chain")
        starts = torch.tensor([h.start for h in self.hops])
        ends = torch.tensor([h.end for h in self.hops])
        stochastic = torch.tensor([h.kind in STOCHASTIC for h in self.hops])
        std = torch.where(stochastic, std_table.to(torch.float32)[starts.clamp_max(len(std_table) - 1)], 0.0)
        self.device = torch.device(device)
        self.timestep = schedule.timesteps[starts].to(self.device)
        self.sigma = schedule.sigmas[starts].to(self.device)
        self.next_sigma = schedule.sigmas[ends].to(self.device)
        self.std = std.to(self.device)
        self.noise_step = (starts + 1).to(torch.int64).to(self.device)
        self.stochastic = stochastic

    def __len__(self) -> int:
        return len(self.hops)

    @property
    def key(self) -> tuple:
        return self.hops

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(h.kind for h in self.hops)


def trajectory_kinds(num_steps: int, kind: str, mode: str, window: tuple[int, int] | None) -> tuple[str, ...]:
    """Per-step kinds of a full trajectory.

    - ``"sde"``: every step uses ``kind``;
    - ``"ode"``: every step is deterministic;
    - ``"window"``: steps ``window[0] <= i < window[1]`` use ``kind``, the rest are ODE
      (Flow-GRPO-Fast, the fast variant in github.com/yifan123/flow_grpo, and MixGRPO,
      arXiv 2507.21802: the policy is explored and trained only inside the window).
    """
    check_kind(kind)
    if mode == "sde":
        if window is not None:
            raise ValueError("window= is only valid with mode='window'")
        return (kind,) * num_steps
    if mode == ODE:
        return (ODE,) * num_steps
    if mode == "window":
        if window is None or len(window) != 2:
            raise ValueError("mode='window' needs window=(start, stop)")
        start, stop = int(window[0]), int(window[1])
        if not 0 <= start < stop <= num_steps:
            raise ValueError(f"window {window} must satisfy 0 <= start < stop <= {num_steps}")
        return tuple(kind if start <= i < stop else ODE for i in range(num_steps))
    raise ValueError(f"mode={mode!r} is not one of 'sde', 'window', 'ode'")


G2RPO_COMPLETIONS = ("paper", "exact_end", "stride")


def granular_path(start: int, num_steps: int, granularity: int, form: str = "paper") -> list[int]:
    """Schedule indices of G2RPO's ODE completion from ``start`` (= k + 1, after the stochastic step).

    ``paper``: as its authors' code runs it (github.com/bcmi/Granular-GRPO
    fastvideo/train_g2rpo_hps.py, ``sample_reference_model``): the schedule ``sigmas[:k+2] +
    sigmas[k+2::g]``, i.e. one fine ODE step ``k+1 -> k+2`` then strides of g from ``k+2``; the
    image is the x0-prediction of the last step taken, which equals an Euler jump to sigma = 0
    from the second-to-last point. So when the stride does not land on ``num_steps`` its last
    point is computed and discarded and the final jump is longer than g (up to 2g - 1).
    ``exact_end``: the same path, but the stride's last point is kept and a shorter last jump
    lands on sigma = 0 (the corrected form). ``stride``: strides of g straight from ``k + 1``
    (our earlier reading of the paper's text).
    """
    g, start, n = int(granularity), int(start), int(num_steps)
    if g < 1:
        raise ValueError(f"granularity must be >= 1, got {granularity}")
    if form not in G2RPO_COMPLETIONS:
        raise ValueError(f"G2RPO completion must be one of {G2RPO_COMPLETIONS}, got {form!r}")
    if start >= n:  # the stochastic hop already reached sigma = 0
        return [n]
    if form == "stride":
        return list(range(start, n, g)) + [n]
    if form == "exact_end":
        return [start] + list(range(start + 1, n, g)) + [n]
    return [start] + list(range(start + 1, n + 1, g))[:-1] + [n]


class PlanCache:
    """Std tables per (kind, eta) and plans per hop sequence, built once per schedule."""

    def __init__(self, schedule: Schedule, eta: float, device):
        self.schedule = schedule
        self.eta = float(eta)
        self.device = torch.device(device)
        self._std: dict[str, torch.Tensor] = {}
        self._plans: dict[tuple, Plan] = {}

    def std(self, kind: str) -> torch.Tensor:
        if kind not in self._std:
            eta = check_eta(kind, self.eta) if kind != ODE else 0.0
            self._std[kind] = noise_std(self.schedule.sigmas, kind, eta).to(torch.float32)
        return self._std[kind]

    def plan(self, hops: Sequence[Hop]) -> Plan:
        hops = tuple(hops)
        if hops not in self._plans:
            kinds = {h.kind for h in hops if h.kind in STOCHASTIC}
            if len(kinds) > 1:
                raise ValueError(f"a plan uses one stochastic kind, got {sorted(kinds)}")
            table = self.std(kinds.pop()) if kinds else torch.zeros(self.schedule.num_steps)
            self._plans[hops] = Plan(self.schedule, hops, table, self.device)
        return self._plans[hops]

    def trajectory(self, kinds: Sequence[str]) -> Plan:
        return self.plan(Hop(i, i + 1, k) for i, k in enumerate(kinds))

    def branch(self, step: int, kind: str, granularity: int, form: str = "paper") -> Plan:
        """G2RPO branch: the stochastic hop ``step -> step + 1``, then the ODE completion (:func:`granular_path`)."""
        path = granular_path(int(step) + 1, self.schedule.num_steps, granularity, form)
        hops = [Hop(int(step), int(step) + 1, kind)]
        hops += [Hop(a, b, ODE) for a, b in zip(path, path[1:])]
        return self.plan(hops)
