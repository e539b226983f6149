"""The eval folder's reports: ``summary.json``, ``summary.md`` and ``reward_vs_step.png``.

One summary per (target, checkpoint step), computed from the per-item records alone
(:func:`precise_fast.train.report.stats.summarize`), so the reports always agree with ``items.jsonl``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from ..train.report.plots import pyplot
from ..train.report.stats import summarize


def build_summary(records: list[dict], settings: dict, weights: dict | None = None) -> dict:
    """``weights``: target name -> its reward's component weights (for ``aggregated``)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:  # two checkpoints of one step (two runs' epoch 5) are two results
        groups[(r["target"], int(r["step"]), r.get("checkpoint_sha256", ""))].append(r)
    results = []
    for (target, step, identity), items in sorted(groups.items()):
        results.append({"target": target, "step": step, "checkpoint": items[0]["checkpoint"],
                        "checkpoint_sha256": identity,
                        **summarize(sorted(items, key=lambda r: r["index"]), weights=(weights or {}).get(target))})
    return {"settings": settings, "results": results}


def _fmt(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    ci = f" ± {stats['ci95']:.4f}" if stats["ci95"] is not None else ""
    return f"{stats['mean']:.4f}{ci} (sd {stats['std']:.4f})"


def markdown(summary: dict) -> str:
    """One table per target: a row per checkpoint step, a column per reward (mean ± 95% CI, std)."""
    by_target: dict[str, list[dict]] = defaultdict(list)
    for res in summary["results"]:
        by_target[res["target"]].append(res)
    lines = ["# Evaluation", "", "Each cell: mean ± half-width of the 95% CI of the mean (sd: population std). "
             "PickScore on the paper's scale (x26); aggregated: the paper's weighted mean of the raw component means.",
             ""]
    for target, rows in by_target.items():
        names = list(dict.fromkeys(n for r in rows for n in r["components"]))
        extras = list(dict.fromkeys(n for r in rows for n in r["extras"]))
        lines += [f"## {target}", "", "| step | n | reward (weighted sum) | aggregated | " + " | ".join(names + extras)
                  + " |", "|---" * (4 + len(names) + len(extras)) + "|"]
        for r in rows:
            agg = r.get("aggregated")
            cells = ["n/a" if agg is None else f"{agg:.4f}"]
            cells += [_fmt(r["components"][n]) if n in r["components"] else "" for n in names]
            cells += [_fmt(r["extras"][n]) if n in r["extras"] else "" for n in extras]
            lines.append(f"| {r['step']} | {r['count']} | {_fmt(r['reward'])} | " + " | ".join(cells) + " |")
        tagged = [r for r in rows if "per_tag" in r]
        if tagged:
            tags = list(dict.fromkeys(t for r in tagged for t in r["per_tag"]))
            metric = "geneval_correct" if "geneval_correct" in tagged[0]["tag_mean"] else next(iter(tagged[0]["tag_mean"]))
            lines += ["", f"GenEval view of `{metric}`: overall = mean over tasks.", "",
                      "| step | overall | " + " | ".join(tags) + " |", "|---" * (2 + len(tags)) + "|"]
            for r in tagged:
                def num(v):
                    return "n/a" if v is None else f"{v:.4f}"

                cells = [num(r["per_tag"].get(t, {}).get(metric)) for t in tags]
                lines.append(f"| {r['step']} | {num(r['tag_mean'].get(metric))} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> Path:
    """Reward (and each component) vs checkpoint step, one panel per target, 95% CI as error bars."""
    plt = pyplot()
    targets = list(dict.fromkeys(r["target"] for r in summary["results"]))
    fig, axes = plt.subplots(len(targets), 1, figsize=(7, 3.6 * len(targets)), squeeze=False)
    for ax, target in zip(axes[:, 0], targets):
        rows = sorted((r for r in summary["results"] if r["target"] == target), key=lambda r: r["step"])
        series = {"reward": [r["reward"] for r in rows]}
        names = dict.fromkeys(n for r in rows for n in r["components"])
        if len(names) > 1:
            series.update({n: [r["components"].get(n, {"mean": None}) for r in rows] for n in names})
        for label, values in series.items():
            pts = [(r["step"], v["mean"], v.get("ci95") or 0.0) for r, v in zip(rows, values) if v["mean"] is not None]
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("checkpoint step (epoch; 0 = base model)")
        ax.set_ylabel("mean score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(folder: Path, records: list[dict], settings: dict, weights: dict | None = None) -> dict:
    folder = Path(folder)
    summary = build_summary(records, settings, weights)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False))
    (folder / "summary.md").write_text(markdown(summary))
    if summary["results"]:
        plot(summary, folder / "reward_vs_step.png")
    return summary
