"""scripts/gpu_check.sh without a GPU: its dry run (what CPU CI runs), the GPU benchmarks'
``--smoke`` code paths, and the report that decides the check's exit status."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PRECISE_FAST_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable}


def test_dry_run_collects_every_named_gpu_test_and_imports_every_benchmark(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[gpu_check] dry run ok" in run.stdout
    collected = (tmp_path / "out" / "gpu_collect.txt").read_text()
    assert "tests/rollout/test_capture_gpu.py::" in collected and "tests/rewards/test_executor_gpu.py::" in collected


def test_usage_error_without_out():
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "usage: scripts/gpu_check.sh [--dry-run] OUT" in run.stderr


def _bench_main(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.slow
def test_smoke_benchmarks_feed_the_report_and_a_failed_step_fails_it(tmp_path, monkeypatch):
    # In this process (one import of torch and diffusers), one intra-op thread: shared 2 cores.
    monkeypatch.setenv("PRECISE_FAST_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / "out"
    out.mkdir()
    steps = []
    try:
        for name in ("gpu_fused_step", "gpu_rollout", "gpu_train_step"):
            monkeypatch.setattr(sys, "argv", [name, "--smoke", "--out", str(out / f"{name}.json")])
            _bench_main(name)()
            steps.append(f"{name}\t0\t1")
    finally:
        torch.set_num_threads(threads)
    (out / "steps.tsv").write_text("\n".join(steps) + "\n")
    report = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_report.py"), str(out)], capture_output=True, text=True,
                            timeout=60)
    assert report.returncode == 0, report.stdout + report.stderr
    data = json.loads((out / "gpu_report.json").read_text())
    assert data["ok"] and set(data["benchmarks"]) == {"gpu_fused_step", "gpu_rollout", "gpu_train_step"}
    fused = data["benchmarks"]["gpu_fused_step"]["results"]
    assert {"fp32/sample/eager", "bf16/score_fwd_bwd/cpu"} <= set(fused) and all(r["gbs"] > 0 for r in fused.values())
    update = data["benchmarks"]["gpu_train_step"]["results"]["update"]
    assert update["tokens_per_s"] > 0 and update["flops_per_update"] > 0
    assert data["benchmarks"]["gpu_rollout"]["results"]["eager"]["images_per_s"] > 0
    md = (out / "gpu_report.md").read_text()
    assert md.startswith("# GPU check (PASS)") and "## One training update" in md
    junit = '<testsuites><testsuite tests="2" failures="0" errors="0" skipped="{s}">{cases}</testsuite></testsuites>'
    skipped = '<testcase classname="t" name="{n}"><skipped message="needs a CUDA GPU"/></testcase>'
    (out / "gpu_tests.xml").write_text(junit.format(s=2, cases=skipped.format(n="a") + skipped.format(n="b")))
    all_skipped = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_report.py"), str(out)], capture_output=True,
                                 text=True, timeout=60)
    assert all_skipped.returncode == 1 and "skipped x2: needs a CUDA GPU" in (out / "gpu_report.md").read_text()
    (out / "gpu_tests.xml").write_text(junit.format(s=1, cases=skipped.format(n="a") + '<testcase classname="t" name="b"/>'))
    one_passed = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_report.py"), str(out)], capture_output=True,
                                text=True, timeout=60)
    assert one_passed.returncode == 0, one_passed.stdout
    (out / "steps.tsv").write_text("\n".join(steps + ["gpu_tests\t1\t5"]) + "\n")
    failed = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_report.py"), str(out)], capture_output=True, text=True,
                            timeout=60)
    assert failed.returncode == 1 and (out / "gpu_report.md").read_text().startswith("# GPU check (FAIL)")
    assert "| gpu_tests | FAILED (1) |" in (out / "gpu_report.md").read_text()
