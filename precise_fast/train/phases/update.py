"""The training phase of an epoch: minibatches, accumulation windows, guarded DeepSpeed steps.

Two schedules (``train.update_schedule``):

- ``paper`` (Tencent-Hunyuan/Precise, precise_sde/train/rl_trainer.py, "rebatch for
  training"): a rank's kept samples, padded with zero-advantage samples to a multiple of
  ``sampler.num_batches_per_epoch`` (credit.py), are shuffled and reshaped into exactly that
  many minibatches of ``rows / num_batches_per_epoch`` each (``train.batch_size`` plays no
  part); ``gradient_accumulation_steps`` minibatches x T timesteps make one optimizer step,
  each microstep's loss being its minibatch MEAN divided by ``gradient_accumulation_steps * T``
  (accelerate's accumulation; DeepSpeed then averages over ranks as DDP does). So an epoch
  always makes the same number of optimizer steps, and the padding rows dilute the mean.
- ``fixed_size``: minibatches of ``train.batch_size`` rows; an optimizer step minimises the
  MEAN of the per-transition losses over every real (sample, timestep) row of its window on
  every rank, as Flow-GRPO's accumulation over batches x timesteps does. A rank's microbatch
  loss is therefore ``sum(weight * loss) * world / N_window`` with ``N_window`` the global
  count of real rows (one all-reduce per window): DeepSpeed averages gradients over ranks, so
  the result is the global mean however the samples fall on ranks; padding rows (weight 0,
  added so that every rank runs the same number of backward passes, which ZeRO's reduce hooks
  need) contribute nothing. Hence 2 ranks make the same update as 1 rank over the same samples.
  Dropped samples change the number of steps and a short last window gets a full step.

G2RPO under ``paper`` trains as its authors do (github.com/bcmi/Granular-GRPO
fastvideo/train_g2rpo_hps.py, ``train_one_step``): one optimizer step per branching step, its
loss the global mean over every member's transition at that step; ``fixed_size`` folds the
branching steps into windows like any other timesteps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..config import Config, g2rpo_step_per_column, paper_schedule
from ..grpo.transitions import Transitions
from ..lifecycle.faults import crash_point
from ..policy.distributed import all_reduce_
from ..state.rng import Stream, stream_generator
from .rescore import transition_losses



@dataclass
class TrainStats:
    """Weighted sums over real rows: device tensors until :meth:`summary`, so that adding a
    minibatch never waits for the GPU (the next forward is queued while this backward runs)."""

    rows: float | torch.Tensor = 0.0
    sums: dict = field(default_factory=dict)
    ratio_min: float | torch.Tensor = float("inf")
    ratio_max: float | torch.Tensor = -float("inf")
    first_ratio_dev: float | None = None  # max |ratio - 1| before the first update of the epoch
    updates: int = 0
    applied: int = 0
    grad_norms: list = field(default_factory=list)

    def add(self, rows, weight: torch.Tensor) -> None:
        w = weight.to(rows.ratio.dtype)
        for name, value in (("ratio", rows.ratio), ("clipfrac", rows.clipped.to(w.dtype)), ("approx_kl", rows.approx_kl),
                            ("policy_loss", rows.policy), ("kl_loss", rows.kl)):
            self.sums[name] = self.sums.get(name, 0.0) + (value * w).sum().detach()
        real = w > 0
        ratio = rows.ratio.detach()
        inf = ratio.new_full((), float("inf"))  # a fill on the device: no host copy, no wait
        # Padding rows (weight 0) count in neither extreme: +-inf where they sit.
        lo, hi = torch.where(real, ratio, inf).min(), torch.where(real, ratio, -inf).max()
        self.ratio_min = lo if isinstance(self.ratio_min, float) else torch.minimum(self.ratio_min, lo)
        self.ratio_max = hi if isinstance(self.ratio_max, float) else torch.maximum(self.ratio_max, hi)
        self.rows = self.rows + w.sum().detach()

    def summary(self) -> dict[str, float]:
        rows = float(self.rows)
        out = {name: float(value) / max(rows, 1.0) for name, value in self.sums.items()}
        out.update(rows=rows, updates=float(self.updates), applied_updates=float(self.applied))
        if rows:
            out.update(ratio_min=float(self.ratio_min), ratio_max=float(self.ratio_max))
        if self.first_ratio_dev is not None:
            out["first_ratio_abs_dev"] = self.first_ratio_dev
        norms = [n for n in self.grad_norms if n is not None]
        if norms:
            out["grad_norm"] = sum(norms) / len(norms)
        return out


def column_chunks(num_cols: int, per_forward: int) -> list[list[int]]:
    per = num_cols if per_forward <= 0 else min(per_forward, num_cols)
    return [list(range(i, min(i + per, num_cols))) for i in range(0, num_cols, per)]


@dataclass
class Window:
    """Minibatches (row indices) accumulated into one optimizer step, the timestep columns they
    train (None: all) and, for the paper's schedule, the per-row loss scale (None: the global
    mean over the window's real rows)."""

    minibatches: list
    columns: list[int] | None = None
    scale: float | None = None


@dataclass(frozen=True)
class UpdateSettings:
    """What the update phase reads of a run config (built once per run: :meth:`from_config`)."""

    seed: int  # minibatch and timestep shuffles are keyed by it
    schedule: Literal["paper", "g2rpo_per_column", "fixed_size"]  # train.update_schedule as it applies
    num_batches: int  # the paper schedule's minibatches per inner epoch (sampler.num_batches_per_epoch)
    batch_size: int
    gradient_accumulation_steps: int
    num_inner_epochs: int
    shuffle_timesteps: bool
    clip_range: float
    ratio: str  # the GRPO ratio: plain or GRPO-Guard's normalisation
    beta: float  # KL weight against the reference policy
    step_backend: str  # the sde score op's backend
    largest_minibatch: int  # rows of the largest minibatch the schedule forms: the memory probe's size

    @classmethod
    def from_config(cls, cfg: Config) -> UpdateSettings:
        t = cfg.train
        schedule = "g2rpo_per_column" if g2rpo_step_per_column(cfg) else "paper" if paper_schedule(cfg) else "fixed_size"
        return cls(seed=cfg.run.seed, schedule=schedule, num_batches=cfg.sampler.num_batches_per_epoch,
                   batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
                   num_inner_epochs=t.num_inner_epochs, shuffle_timesteps=t.shuffle_timesteps, clip_range=t.clip_range,
                   ratio=t.ratio, beta=t.beta, step_backend=cfg.sampler.step_backend,
                   # The paper's minibatches are a rank's rows over num_batches: at most one
                   # sampling batch (train.batch_size plays no part there).
                   largest_minibatch=cfg.sampler.batch_size if schedule == "paper" else t.batch_size)


def minibatch_plan(num_rows: int, num_cols: int, settings: UpdateSettings, gen: torch.Generator) -> list[Window]:
    """One inner epoch's optimizer steps under the run's ``train.update_schedule``."""
    t = settings
    order = torch.randperm(num_rows, generator=gen)
    gas = t.gradient_accumulation_steps
    fixed = [order[i : i + t.batch_size] for i in range(0, num_rows, t.batch_size)]
    if t.schedule == "g2rpo_per_column":
        return [Window(fixed, [c]) for c in range(num_cols)]
    if t.schedule == "paper":
        count = t.num_batches
        if num_rows % count:
            raise ValueError(f"{num_rows} rows do not split into {count} minibatches (credit.py pads them to a multiple)")
        size = num_rows // count
        minibatches = list(order.reshape(count, size))
        scale = 1.0 / (size * gas)
        return [Window(minibatches[i : i + gas], None, scale) for i in range(0, count, gas)]
    return [Window(fixed[i : i + gas]) for i in range(0, len(fixed), gas)]


def count_minibatches(data: Transitions, settings: UpdateSettings) -> int:
    """Minibatch passes per epoch (all inner epochs), for the progress bar."""
    t = settings
    per_inner = t.num_batches if t.schedule == "paper" else -(-data.batch_size // t.batch_size)
    if t.schedule == "g2rpo_per_column":
        per_inner *= data.num_steps
    return per_inner * t.num_inner_epochs


def train_epoch(
    policy,
    data: Transitions,
    *,
    settings: UpdateSettings,
    epoch_key: int,
    rank: int,
    world_size: int,
    per_forward: int,
    reference: Callable | None,
    on_update: Callable[[bool], None],
    on_minibatch: Callable[[], None] | None = None,
    progress=None,
) -> TrainStats:
    """Train on this rank's (kept, padded) ``data``. ``on_update(applied)`` runs after each
    optimizer step, ``on_minibatch()`` after each minibatch (after the step that ends a window),
    where the paper steps its EMA."""
    t = settings
    stats = TrainStats()
    n, num_cols = data.batch_size, data.num_steps
    all_chunks = column_chunks(num_cols, per_forward)
    for inner in range(t.num_inner_epochs):
        gen = stream_generator(t.seed, Stream.SHUFFLE, epoch_key, inner, rank)
        for plan in minibatch_plan(n, num_cols, t, gen):
            window, step_cols = plan.minibatches, plan.columns
            width = num_cols if step_cols is None else len(step_cols)
            chunks = all_chunks if step_cols is None else [step_cols]
            if plan.scale is None:
                real = torch.tensor([float(data.weight[mb].sum()) * width for mb in window]).sum().reshape(1)
                real_rows = float(all_reduce_(real, "sum"))
                scale = world_size / max(real_rows, 1.0)
            else:
                scale = plan.scale / num_cols
            for position, mb in enumerate(window):
                batch = data.select(mb)
                if step_cols is not None:
                    cols_order = None  # the window's own column
                elif t.shuffle_timesteps:
                    perm_gen = stream_generator(t.seed, Stream.SHUFFLE, epoch_key, inner, rank, int(mb[0]))
                    cols_order = torch.randperm(num_cols, generator=perm_gen).tolist()
                else:
                    cols_order = list(range(num_cols))
                for chunk in chunks:
                    cols = list(chunk) if cols_order is None else [cols_order[c] for c in chunk]
                    rows = transition_losses(
                        policy, batch, cols, clip_range=t.clip_range, ratio_kind=t.ratio, beta=t.beta,
                        reference=reference, guard=policy.guard, step_backend=t.step_backend,
                    )
                    weight = batch.weight.repeat_interleave(len(cols))
                    loss = (rows.loss * weight).sum() * scale
                    policy.guard.check("loss", loss)
                    policy.backward(loss)
                    if stats.updates == 0:
                        real_rows_mask = weight > 0
                        if bool(real_rows_mask.any()):
                            dev = float((rows.ratio[real_rows_mask] - 1.0).abs().max())
                            stats.first_ratio_dev = max(stats.first_ratio_dev or 0.0, dev)
                    stats.add(rows, weight)
                if progress is not None:
                    progress.update(1)
                if position == len(window) - 1:
                    applied, norm = policy.step()
                    stats.updates += 1
                    stats.applied += int(applied)
                    stats.grad_norms.append(norm if applied else None)
                    on_update(applied)
                    crash_point("train_step", rank)
                if on_minibatch is not None:
                    on_minibatch()
    return stats


def probe_per_forward(policy, data: Transitions, settings: UpdateSettings) -> int:
    """CUDA "auto": how many timesteps fit in one forward/backward, from a one-timestep probe.

    Measures the peak memory a one-column forward of the schedule's largest minibatch adds
    while its graph is alive (the activations backward needs), then fits as many columns as 60%
    of the free memory holds (the rest for backward's transient buffers). The minimum over ranks
    is used, and the result is checkpointed, so a resumed run folds timesteps the same way.
    """
    t = settings
    device = data.x.device
    # Rows repeat where this epoch kept fewer: a later epoch's minibatch may be that large.
    batch = data.select(torch.arange(t.largest_minibatch) % data.batch_size)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    rows = transition_losses(policy, batch, [0], clip_range=t.clip_range, ratio_kind=t.ratio, beta=0.0,
                             guard=None, step_backend=t.step_backend)
    per_column = max(torch.cuda.max_memory_allocated(device) - base, 1)
    del rows
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    fit = torch.tensor([-max(1, min(data.num_steps, int(0.6 * free) // per_column))], dtype=torch.int64)
    return int(-all_reduce_(fit, "max"))
