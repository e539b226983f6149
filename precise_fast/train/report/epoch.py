"""The report phase of an epoch (the fourth, after sample, credit and update in train/phases/): the numbers and lines that say what the epoch did.

The epoch's metrics (rewards and advantages over the global batch, the update's statistics
averaged over ranks, timings, throughput, guard skips), the one-line epoch summary rank 0
prints, and the run's closing summary. The trainer writes them through ``tracking`` and ``plots``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..phases.credit import Credit
from ..phases.update import TrainStats
from ..policy.distributed import all_reduce_
from .throughput import throughput_line

# Update statistics averaged over every rank's real rows, and those taken from this rank as they are.
_ROW_MEANS = ("ratio", "clipfrac", "approx_kl", "policy_loss", "kl_loss")
_AS_IS = ("ratio_min", "ratio_max", "first_ratio_abs_dev", "grad_norm", "updates", "applied_updates")


def update_metrics(stats: TrainStats) -> dict[str, float]:
    """``train/*`` of the update phase; every rank calls this (row-weighted means are all-reduced)."""
    summary = stats.summary()
    rows = all_reduce_(torch.tensor([summary["rows"]], dtype=torch.float64), "sum")
    out = {}
    for key in _ROW_MEANS:
        total = all_reduce_(torch.tensor([summary.get(key, 0.0) * summary["rows"]], dtype=torch.float64), "sum")
        out[f"train/{key}"] = float(total / rows.clamp_min(1.0))
    for key in _AS_IS:
        if key in summary:
            out[f"train/{key}"] = summary[key]
    return out


def reward_metrics(credit: Credit, tracked: dict) -> dict[str, float]:
    """Rewards (raw, valid samples only) and advantages of the global batch, and the tracker's statistics."""
    out = {}
    valid = credit.global_valid
    raw = credit.global_raw[valid].double()
    out["reward_mean"] = float(raw.mean()) if raw.numel() else float("nan")
    out["reward_std"] = float(raw.std(unbiased=False)) if raw.numel() else float("nan")
    out["reward/invalid_fraction"] = 1.0 - float(valid.double().mean())
    for name, values in credit.global_components.items():
        ok = credit.global_component_valid[name]
        out[f"reward/{name}"] = float(values[ok].double().mean()) if bool(ok.any()) else float("nan")
    adv = credit.global_advantages
    out["advantage/abs_mean"] = float(adv.abs().mean())
    out["advantage/std"] = float(adv.std())
    out["advantage/kept_fraction"] = float(credit.global_keep.double().mean())
    out.update({f"advantage/{k}": v for k, v in tracked.items()})
    return out


def guard_metrics(guard) -> dict[str, float]:
    """Updates the non-finite guard skipped so far, in all and by cause."""
    out = {"guard/skipped_updates": float(guard.skipped_updates)}
    for cause, count in guard.skipped.items():
        out[f"guard/skipped_{cause}"] = float(count)
    return out


def epoch_line(epoch: int, epochs: int, m: dict) -> str:
    """The line rank 0 prints after each epoch."""
    parts = [
        f"epoch {epoch}/{epochs}",
        f"reward {m['reward_mean']:.4f}±{m['reward_std']:.4f}",
        f"kept {m['advantage/kept_fraction']:.0%}",
    ]
    if "train/ratio" in m:
        parts += [f"ratio {m['train/ratio']:.6f}", f"clip {m['train/clipfrac']:.3f}", f"kl {m['train/approx_kl']:.2e}"]
    if "eval/reward_mean" in m:
        parts.append(f"eval {m['eval/reward_mean']:.4f}")
    parts.append(
        f"| rollout {m['time/rollout_s']:.1f}s reward {m['time/reward_s']:.1f}s (hidden {m['time/overlap_saved_s']:.1f}s) "
        f"train {m['time/train_s']:.1f}s epoch {m['time/epoch_s']:.1f}s"
    )
    rates = throughput_line(m)
    if rates:
        parts.append(f"| {rates}")
    if m.get("guard/skipped_updates"):
        parts.append(f"| non-finite skips {int(m['guard/skipped_updates'])}")
    return "  ".join(parts)


def run_summary(history: list[dict], *, name: str, out_dir: Path) -> dict:
    """The run's closing lines (training reward, and the held-out eval reward when evaluated twice or more)."""
    train = [h for h in history if "reward_mean" in h]
    if not train:
        return {"line": "no epoch ran", "first": None, "last": None}
    first, last = train[0], train[-1]
    verb = "rose" if last["reward_mean"] > first["reward_mean"] else "did not rise"
    line = (f"[precise_fast] done: {name}, {last['epoch']} epochs; reward {verb} from "
            f"{first['reward_mean']:.4f} (epoch {first['epoch']}) to {last['reward_mean']:.4f} (epoch {last['epoch']}); "
            f"checkpoints in {out_dir / 'checkpoints'}, TensorBoard logs in {out_dir / 'tensorboard'}")
    out = {"line": line, "first": first["reward_mean"], "last": last["reward_mean"], "rose": verb == "rose"}
    evals = [h for h in history if "eval_reward_mean" in h]
    if len(evals) >= 2:  # held-out prompts, fixed seeds: the number that shows learning
        base, final = evals[0]["eval_reward_mean"], evals[-1]["eval_reward_mean"]
        eval_verb = "rose" if final > base else "did not rise"
        out["line"] += (f"\n[precise_fast] eval reward {eval_verb} from {base:.4f} to {final:.4f} "
                        f"(held-out prompts, epoch {evals[0]['epoch']} -> {evals[-1]['epoch']})")
        out.update(eval_first=base, eval_last=final, eval_rose=eval_verb == "rose")
    return out
