"""The sampling phase of an epoch: rollouts, with each batch's rewards scored while the next samples.

Batch b's images go to a :class:`~precise_fast.rewards.RewardExecutor` (a worker thread;
on CUDA it scores on a side stream after an event recorded on the sampling stream) the
moment they are decoded, and the loop goes on to sample batch b + 1. The executor's
queue is bounded (``reward.max_pending``), so a slow reward throttles sampling instead of
piling up images. Timing kept per epoch: rollout seconds, reward seconds (the worker's
scoring time), reward wait (time this thread blocked on rewards: submitting into a full
queue or collecting results) and the overlap saved, reward seconds minus the wait.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..config import AlgorithmConfig, Config
from ..grpo.transitions import Transitions, concat, from_g2rpo, from_rollout
from ..state.rng import Stream, stream_generator
from .prompt_groups import Slot
from .trajectories import Rollouts, slot_seeds



@dataclass(frozen=True)
class SampleSettings:
    """What the sampling phase reads of a run config (built once per run: :meth:`from_config`)."""

    seed: int  # the run seed every sample seed derives from
    algorithm: AlgorithmConfig  # which steps are trained: GRPO's fraction, the SDE window, G2RPO's branches
    num_steps: int
    images_per_prompt: int
    same_initial_latent: bool

    @classmethod
    def from_config(cls, cfg: Config) -> SampleSettings:
        s = cfg.sampler
        return cls(seed=cfg.run.seed, algorithm=cfg.algorithm, num_steps=s.num_steps,
                   images_per_prompt=s.images_per_prompt, same_initial_latent=s.same_initial_latent)


def trained_steps(settings: SampleSettings, epoch_key: int) -> tuple[str, tuple[int, int] | None, list[int]]:
    """``(rollout mode, SDE window or None, trained schedule steps)`` for GRPO / the SDE window."""
    a, n = settings.algorithm, settings.num_steps
    if a.name == "grpo":
        return "sde", None, list(range(max(1, int(n * a.timestep_fraction))))
    if a.name == "sde_window":
        gen = stream_generator(settings.seed, Stream.SDE_WINDOW, epoch_key)
        start = int(torch.randint(a.window_start_min, a.window_start_max + 1, (1,), generator=gen))
        return "window", (start, start + a.window_size), list(range(start, start + a.window_size))
    raise ValueError(f"trained_steps does not serve algorithm {a.name!r}")


def g2rpo_steps(settings: SampleSettings, epoch_key: int, batch_index: int) -> list[int]:
    """The branching steps G2RPO samples (and trains) in batch ``batch_index`` of an epoch."""
    a = settings.algorithm
    steps = sorted(a.g2rpo_steps)
    if a.g2rpo_steps_per_batch in (0, len(steps)):
        return steps
    gen = stream_generator(settings.seed, Stream.G2RPO_STEPS, epoch_key, batch_index)
    pick = torch.randperm(len(steps), generator=gen)[: a.g2rpo_steps_per_batch]
    return sorted(steps[i] for i in pick.tolist())


class TimedReward:
    """The reward function with its scoring time summed (runs on the executor's worker)."""

    def __init__(self, fn):
        self.fn = fn
        self.seconds = 0.0
        self._lock = threading.Lock()

    def __call__(self, images, prompts, metadata):
        start = time.perf_counter()
        try:
            return self.fn(images, prompts, metadata)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - start


@dataclass
class EpochRollouts:
    transitions: Transitions
    group_ids: torch.Tensor  # (n,) int64, epoch-global group of each row
    prompt_index: torch.Tensor  # (n,) int64, dataset index of each row's prompt
    prompts: list[str]  # (n,)
    rewards: dict[str, torch.Tensor]  # raw per component: (n,) or, for G2RPO, (n, K, n_g)
    valid: dict[str, torch.Tensor]
    preview_images: torch.Tensor | None = None  # a few images of this rank, CPU
    preview_rows: list[int] = field(default_factory=list)  # which rows / images they are
    timings: dict[str, float] = field(default_factory=dict)


def sample_epoch(
    rollouts: Rollouts,
    executor,
    timed_reward: TimedReward,
    batches: Sequence[Sequence[Slot]],
    *,
    prompts: Sequence[str],
    metadata: Sequence[dict],
    settings: SampleSettings,
    epoch_key: int,
    keep_preview: int = 0,
    progress=None,
    reward_progress=None,
    gathered=None,
) -> EpochRollouts:
    """Sample every batch of this rank, rewards overlapped; returns the epoch's raw material."""
    algo = settings.algorithm.name
    timed_reward.seconds = 0.0
    rollout_s = wait_s = 0.0
    parts: list[Transitions] = []
    futures, group_ids, prompt_index, row_prompts = [], [], [], []
    # No reward work may run on another thread while a CUDA graph is captured: drain it first.
    rollouts.engine.before_capture = lambda: concurrent.futures.wait(futures)
    preview, preview_rows = [], []
    reward_shapes = []
    epoch_start = time.perf_counter()
    for b, slots in enumerate(batches):
        texts = [prompts[s.prompt_index] for s in slots]
        meta = [metadata[s.prompt_index] for s in slots]
        noise, init = slot_seeds(settings.seed, epoch_key, slots, settings.same_initial_latent)
        start = time.perf_counter()
        with gathered() if gathered is not None else contextlib.nullcontext():
            if algo == "g2rpo":
                k = settings.images_per_prompt
                heads = slots[::k]  # batches hold whole groups, members in order
                member_seeds = torch.tensor(noise, dtype=torch.int64).reshape(len(heads), k)
                _, anchor_seeds = slot_seeds(settings.seed, epoch_key, heads, same_initial_latent=True)
                steps = g2rpo_steps(settings, epoch_key, b)
                g2 = rollouts.sample_g2rpo([prompts[s.prompt_index] for s in heads], anchor_seeds, member_seeds,
                                           steps=steps, granularities=settings.algorithm.g2rpo_granularities)
                part = from_g2rpo(g2)
                # (P, K, G, n_g, 3, H, W) -> rows (P*G) x K x n_g images, row-major like the transitions
                images = g2.images.transpose(1, 2).flatten(0, 3)
                shape = (part.batch_size, len(steps), len(settings.algorithm.g2rpo_granularities))
                img_prompts = [t for t in texts for _ in range(shape[1] * shape[2])]
                img_meta = [m for m in meta for _ in range(shape[1] * shape[2])]
            else:
                mode, window, steps = trained_steps(settings, epoch_key)
                ro = rollouts.sample(texts, noise, init, mode=mode, window=window)
                part = from_rollout(ro, steps)
                images, shape, img_prompts, img_meta = ro.images, (part.batch_size,), texts, meta
        if images.is_cuda:
            # Honest rollout time: wait for this (sampling) stream only, never for the
            # reward worker's side stream, which would serialise the two.
            torch.cuda.current_stream(images.device).synchronize()
        rollout_s += time.perf_counter() - start
        parts.append(part)
        group_ids += [s.group for s in slots]
        prompt_index += [s.prompt_index for s in slots]
        row_prompts += texts
        reward_shapes.append(shape)
        if len(preview) < keep_preview:
            per_row = images.shape[0] // part.batch_size
            take = min(keep_preview - len(preview), part.batch_size)
            preview += [images[i * per_row].detach().float().cpu() for i in range(take)]
            preview_rows += [len(row_prompts) - part.batch_size + i for i in range(take)]
        start = time.perf_counter()
        future = executor.submit(images, img_prompts, img_meta)
        if reward_progress is not None:
            future.add_done_callback(lambda _: reward_progress.update(1))
        futures.append(future)
        wait_s += time.perf_counter() - start  # a full queue blocks here
        if progress is not None:
            progress.update(1)
    start = time.perf_counter()
    results = [f.result() for f in futures]
    wait_s += time.perf_counter() - start
    rewards = {name: torch.cat([r.per_component[name].detach().cpu().reshape(s) for r, s in zip(results, reward_shapes)])
               for name in results[0].per_component}
    valid = {name: torch.cat([r.component_valid[name].detach().cpu().reshape(s) for r, s in zip(results, reward_shapes)])
             for name in results[0].component_valid}
    total = time.perf_counter() - epoch_start
    return EpochRollouts(
        transitions=concat(parts),
        group_ids=torch.tensor(group_ids, dtype=torch.int64),
        prompt_index=torch.tensor(prompt_index, dtype=torch.int64),
        prompts=row_prompts,
        rewards=rewards,
        valid=valid,
        preview_images=torch.stack(preview) if preview else None,
        preview_rows=preview_rows,
        timings={
            "rollout_s": rollout_s,
            "reward_s": timed_reward.seconds,
            "reward_wait_s": wait_s,
            "overlap_saved_s": max(0.0, timed_reward.seconds - wait_s),
            "sampling_phase_s": total,
        },
    )
