"""The GPU benchmarks' code runs: each in its ``--smoke`` mode on the CPU (tiny sizes, as
scripts/gpu_check.sh calls them, ``python bench/X.py --out FILE``), then bench/gpu_report.py
folds their JSONs. On the GPU they time the real sizes; here only that every path executes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import precise_fast.sde.ops as ops

ROOT = Path(__file__).resolve().parents[1]
BENCHES = ("gpu_fused_step", "gpu_rollout", "gpu_train_step")
pytestmark = pytest.mark.slow


def _run(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_smoke")
    for name in BENCHES:
        done = _run(f"bench/{name}.py", "--smoke", "--out", str(out / f"{name}.json"))
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    return out


def _load(out, name):
    report = json.loads((out / f"{name}.json").read_text())
    assert report["smoke"] is True and report["gpu"]["device"] == "cpu"
    assert all("needs CUDA" in why for why in report["skipped"]), report["skipped"]
    return report


def test_fused_step_smoke(smoke_out):
    report = _load(smoke_out, "gpu_fused_step")
    impls = (["cpu"] if ops.native_available() else []) + ["eager", "compiled"]
    want = {f"bf16/{mode}/{impl}" for mode in ("sample", "score_fwd", "score_fwd_bwd") for impl in impls}
    assert set(report["results"]) == want
    for r in report["results"].values():
        assert r["median_ms"] > 0 and r["gbs"] > 0 and r["repeats"] == 5


def test_rollout_smoke(smoke_out):
    report = _load(smoke_out, "gpu_rollout")
    assert set(report["results"]) == {"engine_eager", "paper_loop"}
    assert report["skipped"] == ["engine_cuda_graph (needs CUDA)"]
    assert report["results"]["engine_eager"]["finite"]
    # Same seeds, same initial latents: the paper loop's reference step lands where the fused op does.
    assert report["results"]["paper_loop"]["max_abs_diff_vs_engine_eager"] < 1e-3
    assert report["config"]["flops_per_rollout"] > 0 and "4 B H L^2 d" in report["mfu_formula"]


def test_train_step_smoke(smoke_out):
    report = _load(smoke_out, "gpu_train_step")
    assert set(report["results"]) == {"timestep_batched", "per_timestep_loop"}
    assert report["config"]["rows"] == report["config"]["samples"] * report["config"]["trained_timesteps"]
    assert report["config"]["lora_params"] > 0 and report["config"]["flops_per_update"] > 0


def test_report_folds_the_three(smoke_out):
    (smoke_out / "steps.tsv").write_text("".join(f"{name}\t0\t1\n" for name in BENCHES))
    done = _run("bench/gpu_report.py", str(smoke_out))
    assert done.returncode == 0, done.stdout + done.stderr
    md = (smoke_out / "gpu_report.md").read_text()
    for heading in ("## Fused step", "## Rollout", "## One GRPO-Guard update"):
        assert heading in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_a_gpu_one_line_and_status_2(tmp_path):
    done = _run("bench/gpu_rollout.py", "--out", str(tmp_path / "x.json"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "this benchmark needs a CUDA GPU (use --smoke for a tiny CPU run of its code path)"
    assert not (tmp_path / "x.json").exists()


def test_real_size_transformer_is_flux2_klein_4b():
    """The benchmarks' model: the 4B architecture (built on the meta device: no memory)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_timing import flux2_klein_4b_transformer

    tr = flux2_klein_4b_transformer("meta")
    c = tr.config
    assert (len(tr.transformer_blocks), len(tr.single_transformer_blocks)) == (5, 20)
    assert (c.num_attention_heads, c.attention_head_dim, c.in_channels, c.joint_attention_dim) == (24, 128, 128, 7680)
    assert tr.dtype == torch.bfloat16
    assert 3.5e9 < sum(p.numel() for p in tr.parameters()) < 4.5e9
