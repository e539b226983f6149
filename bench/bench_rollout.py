"""Rollout throughput: the engine vs the plain per-row loop, on the tiny FLUX.2 Klein model.

Workload (the issue's): B = 8 images, 20 steps, 64x64, 128 text tokens, kind ``precise``
(eta 1.5), from prompt embeddings to decoded images (text encoding is excluded from both:
the engine's prompt cache would otherwise win on repeated prompts alone).

- ``plain``: :func:`precise_fast.rollout.plain_rollout` with ``per_row=True``: the stock
  pipeline's components, batched transformer, then the reference step one row at a time
  with its per-sample log-prob (how the research trainers' sampling loops step).
- ``engine``: :class:`RolloutEngine`, eager (fused C++ op on CPU).
- ``engine_compiled``: the same with the step function under ``torch.compile`` (inductor);
  its one-time compile cost is reported separately.

Run: ``python bench/bench_rollout.py [--threads 1] [--repeats 15]`` (writes
``bench/results/rollout_cpu.json``), or ``pytest bench/bench_rollout.py --benchmark-only``.
Timings alternate between the variants so load from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bandwidth import machine_info  # noqa: E402

from precise_fast.models import PromptEncoder, load_pipeline, tiny_pipeline_path, unpack_latents  # noqa: E402
from precise_fast.rollout import RolloutEngine, plain_rollout  # noqa: E402

BATCH, STEPS, SIZE, TEXT_LEN, KIND = 8, 20, 64, 128, "precise"
TARGET_SPEEDUP = 1.3
PROMPTS = [
    "a photo of a cat on a red chair", "an astronaut riding a horse", "a bowl of fruit on a table",
    "a city street at night with neon signs", "three blue birds on a branch", "a castle on a hill",
    "a cup of coffee and a book", "a small boat on a calm sea",
]


def setup(compile_step: bool | str = False):
    pipe = load_pipeline(tiny_pipeline_path(0))
    embeds = PromptEncoder(pipe, max_length=TEXT_LEN)(PROMPTS[:BATCH])
    engine = RolloutEngine(pipe, kind=KIND, num_steps=STEPS, height=SIZE, width=SIZE, compile_step=compile_step)
    seeds = torch.arange(BATCH, dtype=torch.int64) + 1000
    return pipe, embeds, engine, seeds


def run_engine(engine, embeds, seeds):
    return engine.sample(embeds, seeds=seeds).images


def run_plain(pipe, engine, embeds, seeds, start):
    return plain_rollout(
        pipe, embeds, start, seeds, kinds=(KIND,) * STEPS, eta=engine.eta, height=SIZE, width=SIZE, per_row=True
    )["images"]


def _time(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds). With one intra-op thread the CPU time is
    the work itself; on a shared machine it is far less sensitive to other processes' load."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: 2 shared cores)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "rollout_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe, embeds, engine, seeds = setup()
    start = unpack_latents(engine.sample(embeds, seeds=seeds, decode=False).latents[:, 0], engine.layout)
    variants = {
        "plain": lambda: run_plain(pipe, engine, embeds, seeds, start),
        "engine": lambda: run_engine(engine, embeds, seeds),
    }
    compile_seconds = None
    if not args.no_compile:
        compiled = RolloutEngine(pipe, kind=KIND, num_steps=STEPS, height=SIZE, width=SIZE, compile_step=True)
        compile_seconds = _time(lambda: run_engine(compiled, embeds, seeds))[0]
        variants["engine_compiled"] = lambda: run_engine(compiled, embeds, seeds)
        torch.testing.assert_close(variants["engine_compiled"](), variants["engine"](), rtol=0, atol=1e-4)
    torch.testing.assert_close(variants["plain"](), variants["engine"](), rtol=0, atol=1e-4)

    times = {name: [] for name in variants}
    for _ in range(2):  # warm-up
        for fn in variants.values():
            fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(_time(fn))

    def summary(ts):
        wall, cpu = [w for w, _ in ts], [c for _, c in ts]
        q = statistics.quantiles(wall, n=10)
        med, cpu_med = statistics.median(wall), statistics.median(cpu)
        return {"median_s": round(med, 4), "p20_s": round(q[1], 4), "p80_s": round(q[7], 4),
                "images_per_s": round(BATCH / med, 2), "cpu_median_s": round(cpu_med, 4),
                "images_per_cpu_s": round(BATCH / cpu_med, 2)}

    results = {name: summary(ts) for name, ts in times.items()}
    base, base_cpu = results["plain"]["median_s"], results["plain"]["cpu_median_s"]
    for name, r in results.items():
        r["speedup_vs_plain"] = round(base / r["median_s"], 3)
        r["cpu_speedup_vs_plain"] = round(base_cpu / r["cpu_median_s"], 3)
    report = {
        "benchmark": "rollout images/s, tiny FLUX.2 Klein, prompt embeddings -> decoded images",
        "config": {"batch": BATCH, "steps": STEPS, "height": SIZE, "width": SIZE, "text_tokens": TEXT_LEN,
                   "kind": KIND, "eta": engine.eta, "repeats": args.repeats, "threads": args.threads,
                   "op_backend": "cpu (precise_fast._C)"},
        "results": results,
        "engine_compiled_first_call_s": None if compile_seconds is None else round(compile_seconds, 2),
        "target_speedup": TARGET_SPEEDUP,
        "meets_target_eager_wall": results["engine"]["speedup_vs_plain"] >= TARGET_SPEEDUP,
        "meets_target_eager_cpu": results["engine"]["cpu_speedup_vs_plain"] >= TARGET_SPEEDUP,
        "meets_target_compiled_wall": (
            "engine_compiled" in results and results["engine_compiled"]["speedup_vs_plain"] >= TARGET_SPEEDUP
        ),
        "machine": machine_info(),
        "load_average_1m": os.getloadavg()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


# ----------------------------------------------------------------------------- pytest-benchmark


def test_rollout_engine(benchmark):
    _, embeds, engine, seeds = setup()
    images = benchmark(lambda: run_engine(engine, embeds, seeds))
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.median, 2)
    assert images.shape == (BATCH, 3, SIZE, SIZE)


def test_plain_per_row_loop(benchmark):
    pipe, embeds, engine, seeds = setup()
    start = unpack_latents(engine.sample(embeds, seeds=seeds, decode=False).latents[:, 0], engine.layout)
    images = benchmark(lambda: run_plain(pipe, engine, embeds, seeds, start))
    benchmark.extra_info["images_per_s"] = round(BATCH / benchmark.stats.stats.median, 2)
    assert images.shape == (BATCH, 3, SIZE, SIZE)


if __name__ == "__main__":
    main()
