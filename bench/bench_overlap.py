"""Overlapped rewards: how much of the reward time hides behind sampling.

Run: ``python bench/bench_overlap.py`` (prints JSON, writes bench/results/overlap_cpu.json)
or ``pytest bench/bench_overlap.py --benchmark-only``. One sampling phase of the tiny
FLUX.2 Klein (4 batches of 4 images, 64x64, 10 Precise steps) with a reward padded to take
as long as one rollout batch. Perfect overlap gives phase / (rollout + reward) -> (n + 1) / 2n
= 0.625 for n = 4 batches (the last batch's reward cannot hide); no overlap gives 1.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from precise_fast.models import load_pipeline, tiny_pipeline_path  # noqa: E402
from precise_fast.train.config import load_config  # noqa: E402
from precise_fast.train.phases.overlap_probe import measure_overlap  # noqa: E402

PROMPTS = [f"a photo of object number {i}" for i in range(8)]


def run(threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [f"run.output_dir={tmp}", "sampler.batch_size=4",
                                                               "sampler.images_per_prompt=4"])
    pipe = load_pipeline(tiny_pipeline_path())
    result = measure_overlap(pipe, cfg, PROMPTS, num_batches=4)
    result["machine"] = {"cpus": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__}
    return result


def test_overlap(benchmark):
    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in result["thread"].items()})
    benchmark.extra_info["inline_ratio_phase_to_sum"] = result["inline"]["ratio_phase_to_sum"]
    assert result["thread"]["phase_s"] < result["thread"]["rollout_s"] + result["thread"]["reward_s"]


if __name__ == "__main__":
    out = run()
    text = json.dumps(out, indent=2)
    print(text)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "overlap_cpu.json").write_text(text + "\n")
