"""PNG outputs of a run: a grid of sample images with their prompts and rewards, and the reward curve."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def save_sample_grid(path: Path, images: torch.Tensor, prompts: Sequence[str], rewards: Sequence[float], title: str = "") -> Path:
    """``images`` (n, 3, H, W) in [0, 1]; each tile is captioned with its reward and prompt."""
    plt = pyplot()
    n = images.shape[0]
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        caption = textwrap.shorten(prompts[i], width=60, placeholder="...")
        ax.set_title(f"r={rewards[i]:.3f}\n" + "\n".join(textwrap.wrap(caption, 30)), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_reward_curve(path: Path, history: Sequence[dict], title: str = "") -> Path:
    """Per-epoch training reward (mean +- std over the global batch) and the eval means."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [h for h in history if "reward_mean" in h]
    if train:
        x = [h["epoch"] for h in train]
        mean = [h["reward_mean"] for h in train]
        std = [h.get("reward_std", 0.0) for h in train]
        ax.plot(x, mean, marker="o", label="train reward (epoch mean)")
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2,
                        label="+-1 std over the epoch's samples")
    evals = [h for h in history if "eval_reward_mean" in h]
    if evals:
        ax.plot([h["epoch"] for h in evals], [h["eval_reward_mean"] for h in evals], marker="s", label="eval reward (held-out prompts, EMA weights)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
