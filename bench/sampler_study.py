"""Sampler study on the shapes world: the five SDE kinds under one matched recipe.

    python bench/sampler_study.py                       # `make study`: 5 kinds x 3 seeds
    python bench/sampler_study.py --epochs 8 --seeds 0  # a quick look

Every run is the main job's config (configs/toy/shapes_precise.yaml) on one rank doing the
main job's epoch (64 rollouts, 4 optimizer steps of 16), with only ``sampler.kind`` and
``run.seed`` changed: same prompts, eval images (``eval.seed=0``, 62 held-out prompts x 2),
epochs, learning rate, group size and steps; each kind runs at its paper noise level (the kind
table's DEFAULT_ETA, precise_fast/kinds.py; shared/SAMPLERS.md).
Runs go ``--parallel`` at a time (one thread each). Out: ``<out>.json`` (every curve and the
table) and ``<out>.png`` (held-out eval reward vs epoch and vs training wall-clock, mean and
min..max over seeds), plus the table on stdout.

Table columns: final eval reward (mean +- std over seeds); time to reach the best baseline's
final reward (seconds of training, on the seed-mean curve; baselines are every kind except
``precise``); stability: the mean over seeds of the summed epoch-to-epoch drops of the
training reward, and the largest single drop.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bandwidth import machine_info  # noqa: E402

from precise_fast.kinds import STOCHASTIC_KINDS as KINDS  # noqa: E402 - the kinds a run trains with
from precise_fast.toy.protocol import MAIN_JOB_CONFIG as CONFIG, fixed_eval, one_rank_epoch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDIED = "precise"  # the paper's sampler; every other kind is a baseline


def run_one(kind: str, seed: int, epochs: int, eval_every: int, out_dir: Path, extra: list[str]) -> Path:
    run_dir = out_dir / f"{kind}_seed{seed}"
    if (run_dir / "done.json").is_file():
        return run_dir
    cmd = [sys.executable, "-m", "precise_fast.train", "--config", str(CONFIG),
           "--set", f"sampler.kind={kind}", "--set", f"run.seed={seed}", "--set", f"run.epochs={epochs}",
           "--set", f"run.output_dir={run_dir}", "--set", f"run.name={kind}_seed{seed}",
           # One rank doing the main job's epoch (64 images, 4 optimizer steps of 16); every run
           # seed evaluated on the same images.
           *(x for o in one_rank_epoch() + fixed_eval() for x in ("--set", o)),
           "--set", f"eval.every={eval_every}", "--set", "eval.at_start=true",
           "--set", "checkpoint.every=0", "--set", "checkpoint.export_lora=false",
           "--set", "log.image_every=0", "--set", "log.progress=false", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = (out_dir / f"{kind}_seed{seed}.log").open("w")
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    (run_dir / "done.json").write_text(json.dumps({"wall_s": time.perf_counter() - started}))
    return run_dir


def read_run(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward_mean" in r]
    elapsed = np.cumsum([r["time/epoch_s"] for r in train])
    clock = {r["epoch"]: float(t) for r, t in zip(train, elapsed)}
    clock[0] = 0.0
    evals = [(r["epoch"], r["eval/reward_mean"]) for r in rows if "eval/reward_mean" in r]
    reward = [r["reward_mean"] for r in train]
    drops = [max(0.0, a - b) for a, b in zip(reward, reward[1:])]
    return {
        "eval_epoch": [e for e, _ in evals],
        "eval_reward": [v for _, v in evals],
        "eval_time_s": [clock[e] for e, _ in evals],
        "train_reward": reward,
        "sum_drops": float(sum(drops)),
        "max_drop": float(max(drops, default=0.0)),
        "train_s": float(elapsed[-1]) if len(elapsed) else 0.0,
    }


def summarise(results: dict[str, list[dict]]) -> dict:
    table = {}
    for kind, runs in results.items():
        finals = [r["eval_reward"][-1] for r in runs]
        table[kind] = {
            "final_mean": float(np.mean(finals)),
            "final_std": float(np.std(finals)),
            "base_mean": float(np.mean([r["eval_reward"][0] for r in runs])),
            "sum_drops": float(np.mean([r["sum_drops"] for r in runs])),
            "max_drop": float(np.max([r["max_drop"] for r in runs])),
            "train_s": float(np.mean([r["train_s"] for r in runs])),
        }
    baselines = [k for k in table if k != STUDIED]
    target = max(table[k]["final_mean"] for k in baselines) if baselines else None
    for kind, runs in results.items():
        mean_curve = np.mean([r["eval_reward"] for r in runs], axis=0)
        times = np.mean([r["eval_time_s"] for r in runs], axis=0)
        hit = np.nonzero(mean_curve >= target)[0] if target is not None else []
        table[kind]["time_to_best_baseline_s"] = float(times[hit[0]]) if len(hit) else None
    return {"best_baseline_final": target, "table": table}


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for kind, runs in results.items():
        curves = np.array([r["eval_reward"] for r in runs])
        epochs = runs[0]["eval_epoch"]
        times = np.mean([r["eval_time_s"] for r in runs], axis=0)
        for ax, x in ((axes[0], epochs), (axes[1], times)):
            (line,) = ax.plot(x, curves.mean(0), marker="o", ms=3, label=kind, lw=2.2 if kind == STUDIED else 1.4)
            ax.fill_between(x, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training wall-clock (s, mean over seeds)")
    axes[0].set_ylabel("held-out eval reward (toy GenEval)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(title=f"mean, min..max over {len(next(iter(results.values())))} seeds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(summary: dict) -> None:
    best = summary["best_baseline_final"]
    print("best baseline final eval reward: " + ("none (no baseline kind ran)" if best is None else f"{best:.4f}"))
    print(f"{'kind':15s} {'base':>7s} {'final':>15s} {'t->best base (s)':>17s} {'sum drops':>10s} {'max drop':>9s} {'train s':>8s}")
    for kind, row in summary["table"].items():
        t = row["time_to_best_baseline_s"]
        print(f"{kind:15s} {row['base_mean']:7.4f} {row['final_mean']:8.4f}±{row['final_std']:.4f} "
              f"{'never' if t is None else f'{t:.0f}':>17s} {row['sum_drops']:10.4f} {row['max_drop']:9.4f} {row['train_s']:8.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    from precise_fast.train.config import load_config

    parser.add_argument("--epochs", type=int, default=load_config(CONFIG).run.epochs, help="default: the main job's")
    parser.add_argument("--eval-every", type=int, default=2, help="epochs between evals (default 2: 6 points over 10 epochs)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--runs", default=str(REPO / "runs" / "sampler_study"), help="folder of the runs")
    parser.add_argument("--out", default=str(REPO / "docs" / "sampler_study"), help="output stem (.json, .png)")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="a config override for every run")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs)
    runs_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(k, s) for s in args.seeds for k in args.kinds]
    extra = [x for o in args.extra for x in ("--set", o)]
    from tqdm import tqdm

    started = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool, tqdm(total=len(jobs), desc="study runs") as bar:
        futures = {pool.submit(run_one, k, s, args.epochs, args.eval_every, runs_dir, extra): (k, s) for k, s in jobs}
        dirs = {}
        for fut in futures:
            dirs[futures[fut]] = fut.result()
            bar.update(1)
    results = {k: [read_run(dirs[(k, s)]) for s in args.seeds] for k in args.kinds}
    summary = summarise(results)
    load = os.getloadavg()
    info = machine_info()
    machine = f"{info['cpu']}, {info['logical_cores']} cores, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"shapes world, {len(args.seeds)} seeds x {args.epochs} epochs, 1 rank, 64 images/epoch (4 steps of 16), "
             f"matched recipe (configs/toy/shapes_precise.yaml)")
    plot(results, out.with_suffix(".png"), title)
    payload = {"config": str(CONFIG.relative_to(REPO)), "epochs": args.epochs, "seeds": args.seeds,
               "eval_every": args.eval_every, "overrides": args.extra, "machine": machine,
               "study_wall_s": round(time.perf_counter() - started, 1), **summary, "runs": results}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    print_table(summary)
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.json')} ({machine})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
