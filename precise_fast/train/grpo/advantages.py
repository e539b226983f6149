"""Group-relative advantages (GRPO), G2RPO's multi-granularity advantages, and the tracker.

GRPO (Shao et al., arXiv 2402.03300) as the Precise recipe states it (shared/SAMPLERS.md):
per prompt group, ``A = (r - mean_group) / (std_group + eps)`` over the group's valid
samples (population std, as Flow-GRPO's ``np.std`` stat tracker), invalid samples get 0,
then ``A`` is clipped to ``[-clip, clip]``. A group with one valid sample, or with equal
rewards, gives 0 everywhere: it carries no learning signal and those samples are dropped.

G2RPO (Zhou et al., arXiv 2510.01982) scores, for every branching step and every ODE
completion granularity, the group members' images; the advantage of a member at a step is
the SUM over granularities of its reward z-scored within the (prompt, step, granularity)
group.

Everything is vectorised over groups (``index_add``), with no Python loop over prompts.
"""

from __future__ import annotations

from collections import defaultdict

import torch


def group_zscore(
    rewards: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, eps: float, *, global_std: bool = False,
    unbiased: bool = False,
) -> torch.Tensor:
    """``(r - mean_g) / (std_g + eps)`` within groups along dim 0; 0 for invalid entries.

    ``global_std``: the std is taken over every valid entry instead of the group's (the
    paper's ``sample.global_std``, precise_sde/core/stat_tracking.py); the mean stays per group.
    ``unbiased``: the group std divides by ``n - 1`` (``torch.std``'s default, which G2RPO's code uses).

    ``rewards``/``valid``: (n, ...) with any trailing dims (each trailing position is its own
    group family, e.g. G2RPO's steps x granularities); ``group_ids``: (n,) integers.
    Non-finite rewards count as invalid. float64 accumulation: the statistics of a large
    global batch are exact to float32 output precision.
    """
    if rewards.shape != valid.shape or rewards.shape[0] != group_ids.shape[0]:
        raise ValueError(f"rewards {tuple(rewards.shape)}, valid {tuple(valid.shape)} and group_ids {tuple(group_ids.shape)} disagree")
    r = rewards.to(torch.float64)
    ok = valid.to(torch.bool) & torch.isfinite(r)
    r = torch.where(ok, r, torch.zeros_like(r))
    w = ok.to(torch.float64)
    ids, inverse = torch.unique(group_ids, return_inverse=True)
    shape = (len(ids),) + tuple(r.shape[1:])
    count = torch.zeros(shape, dtype=torch.float64).index_add_(0, inverse, w)
    total = torch.zeros(shape, dtype=torch.float64).index_add_(0, inverse, r * w)
    mean = total / count.clamp_min(1.0)
    dev = (r - mean[inverse]) * w
    dof = (count - 1.0) if unbiased else count
    var = torch.zeros(shape, dtype=torch.float64).index_add_(0, inverse, dev * dev) / dof.clamp_min(1.0)
    if global_std:
        n_all = w.sum(dim=0).clamp_min(1.0)
        mean_all = (r * w).sum(dim=0) / n_all
        std_all = ((((r - mean_all) * w) ** 2).sum(dim=0) / n_all).sqrt()
        z = dev / (std_all + eps)
    else:
        z = dev / (var.sqrt()[inverse] + eps)
    # A group of equal rewards has no signal, but its float mean is not always exactly the
    # common value (0.1 + 0.1 + 0.1 != 0.3), which would leave ~1e-13 advantages that keep
    # the samples alive. Decide "all equal" exactly, from the group's min and max.
    index = inverse.view((-1,) + (1,) * (r.dim() - 1)).expand_as(r)
    inf = torch.full_like(r, float("inf"))
    high = torch.full(shape, -float("inf"), dtype=torch.float64).scatter_reduce(0, index, torch.where(ok, r, -inf), "amax")
    low = torch.full(shape, float("inf"), dtype=torch.float64).scatter_reduce(0, index, torch.where(ok, r, inf), "amin")
    flat = (high == low)[inverse]
    return torch.where(ok & ~flat, z, torch.zeros_like(z)).to(torch.float32)


def grpo_advantages(
    rewards: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-4, clip: float = 5.0,
    global_std: bool = False,
) -> torch.Tensor:
    """Per-sample GRPO advantages (n,) from combined rewards (n,)."""
    return group_zscore(rewards, valid, group_ids, eps, global_std=global_std).clamp(-clip, clip)


def g2rpo_advantages(
    rewards: torch.Tensor, valid: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-8, clip: float = 5.0,
    unbiased: bool = True,
) -> torch.Tensor:
    """Per-(sample, step) advantages (n, K) from rewards (n, K, n_g) of K steps x n_g granularities.

    Z-scored within each (group, step, granularity), summed over granularities (G2RPO's
    multi-granularity advantage integration), then clipped like GRPO's. Defaults are its
    authors' (github.com/bcmi/Granular-GRPO fastvideo/train_g2rpo_hps.py, train_one_step):
    ``(r - mean) / (std + 1e-8)`` with the unbiased std.
    """
    if rewards.dim() != 3:
        raise ValueError(f"G2RPO rewards must be (samples, steps, granularities), got {tuple(rewards.shape)}")
    return group_zscore(rewards, valid, group_ids, eps, unbiased=unbiased).sum(dim=2).clamp(-clip, clip)


def keep_mask(advantages: torch.Tensor) -> torch.Tensor:
    """Samples to train on: an advantage that is non-zero at some step. (n,) or (n, T) -> (n,)."""
    nonzero = advantages != 0
    return nonzero if nonzero.dim() == 1 else nonzero.any(dim=1)


class AdvantageTracker:
    """Running statistics of rewards and advantages across epochs (checkpointed).

    Per prompt (dataset index): how often it was sampled and its latest mean reward; totals of
    samples seen, invalid and dropped. It informs logging (coverage of the prompt set,
    how much of each epoch carried no signal) and survives resume so those curves continue.
    """

    def __init__(self):
        self.visits: dict[int, int] = defaultdict(int)
        self.last_mean: dict[int, float] = {}
        self.samples = 0
        self.invalid = 0
        self.dropped = 0

    def update(self, prompts: list[int], rewards: torch.Tensor, valid: torch.Tensor, kept: torch.Tensor) -> dict[str, float]:
        """Record one epoch's global batch; returns this epoch's fractions for logging."""
        rewards, valid, kept = rewards.detach().cpu(), valid.detach().cpu(), kept.detach().cpu()
        sums: dict[int, list[float]] = defaultdict(list)
        for prompt, r, ok in zip(prompts, rewards.reshape(len(prompts), -1).tolist(), valid.reshape(len(prompts), -1).tolist()):
            for value, good in zip(r, ok):
                if good:
                    sums[prompt].append(value)
        for prompt in dict.fromkeys(prompts):
            self.visits[prompt] += 1
            if sums[prompt]:
                self.last_mean[prompt] = sum(sums[prompt]) / len(sums[prompt])
        n = len(prompts)
        n_invalid = int((~valid.reshape(n, -1).all(dim=1)).sum())
        n_dropped = int((~kept).sum())
        self.samples += n
        self.invalid += n_invalid
        self.dropped += n_dropped
        return {
            "invalid_fraction": n_invalid / max(n, 1),
            "dropped_fraction": n_dropped / max(n, 1),
            "unique_prompts_seen": float(len(self.visits)),
        }

    def state_dict(self) -> dict:
        return {
            "visits": dict(self.visits),
            "last_mean": dict(self.last_mean),
            "samples": self.samples,
            "invalid": self.invalid,
            "dropped": self.dropped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.visits = defaultdict(int, state["visits"])
        self.last_mean = dict(state["last_mean"])
        self.samples, self.invalid, self.dropped = state["samples"], state["invalid"], state["dropped"]
