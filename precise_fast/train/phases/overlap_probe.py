"""Measure what overlapping rewards with sampling saves: one sampling phase with a reward that
takes as long as a rollout batch, once overlapped (worker thread) and once inline.

Shared by tests/train/test_overlap.py (asserts the ordering) and bench/bench_overlap.py
(reports the ratio). The slow reward is the real JPEG scorer padded with a sleep up to the
measured rollout time, standing in for a reward model on another device or a remote server.
"""

from __future__ import annotations

import time

import torch

from ...rewards import RewardExecutor, build_reward
from .prompt_groups import GroupSampler
from .sample import SampleSettings, TimedReward, sample_epoch
from .trajectories import Rollouts


class PaddedReward:
    """``reward`` then sleep until ``seconds`` have passed since the call began."""

    def __init__(self, reward, seconds: float):
        self.reward = reward
        self.seconds = seconds

    def __call__(self, images, prompts, metadata):
        start = time.perf_counter()
        result = self.reward(images, prompts, metadata)
        time.sleep(max(0.0, self.seconds - (time.perf_counter() - start)))
        return result


def measure_overlap(pipeline, cfg, prompts: list[str], *, num_batches: int = 4) -> dict[str, dict[str, float]]:
    """Sampling-phase timings with the reward overlapped ("thread") and not ("inline")."""
    rollouts = Rollouts(pipeline, cfg)
    sampler = GroupSampler(len(prompts), group_size=cfg.sampler.images_per_prompt, batch_size=cfg.sampler.batch_size,
                           num_batches=num_batches, world_size=1, rank=0, seed=cfg.run.seed)
    _, batches, _ = sampler.next_epoch()
    meta = [{} for _ in prompts]
    warm = [prompts[s.prompt_index] for s in batches[0]]
    rollouts.sample(warm, list(range(len(warm))), list(range(len(warm))), mode="sde")  # warm-up (allocations, caches)
    start = time.perf_counter()
    rollouts.sample(warm, list(range(len(warm))), list(range(len(warm))), mode="sde")
    if rollouts.engine.device.type == "cuda":  # the GPU's work, not only its launches
        torch.cuda.synchronize(rollouts.engine.device)
    per_batch = time.perf_counter() - start
    reward = PaddedReward(build_reward("jpeg_incompressibility"), per_batch)
    out = {}
    for mode in ("thread", "inline"):
        timed = TimedReward(reward)
        with RewardExecutor(timed, mode=mode, max_pending=2) as executor:
            er = sample_epoch(rollouts, executor, timed, batches, prompts=prompts, metadata=meta, settings=SampleSettings.from_config(cfg), epoch_key=0)
        t = er.timings
        out[mode] = {
            "rollout_batch_s": per_batch,
            "rollout_s": t["rollout_s"],
            "reward_s": t["reward_s"],
            "phase_s": t["sampling_phase_s"],
            "ratio_phase_to_sum": t["sampling_phase_s"] / (t["rollout_s"] + t["reward_s"]),
        }
    return out
