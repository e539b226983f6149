"""scripts/gpu_check.sh without a GPU: its dry run (what CPU CI runs) and what it refuses, the
real run's stop at the preflight, a step cut at its limit, the GPU benchmarks' ``--smoke`` code
paths, and the report that decides the check's exit status."""

import json
import os
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PRECISE_FAST_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable}


def test_dry_run_collects_every_named_gpu_test_and_imports_every_benchmark(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[gpu_check] dry run ok: shares 480/480 s, 8/8 files in OUT" in run.stdout
    assert "GPU tests collect with 0 errors, 3 benchmarks import" in run.stdout
    collected = (tmp_path / "out" / "gpu_collect.txt").read_text()
    assert "tests/rollout/test_capture_gpu.py::" in collected and "tests/rewards/test_executor_gpu.py::" in collected


def test_usage_error_without_out():
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "usage: scripts/gpu_check.sh [--dry-run | --setup-only] OUT" in run.stderr


def _script_copy(root: Path, *edits: tuple[str, str]) -> Path:
    """scripts/gpu_check.sh in a folder of its own (its ROOT), with text replaced, and the
    repo's bench/ beside it (bench/gpu_report.py writes the report)."""
    text = SCRIPT.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "gpu_check.sh").write_text(text)
    (root / "bench").symlink_to(REPO / "bench")
    return root / "scripts" / "gpu_check.sh"


def test_dry_run_refuses_step_shares_over_the_budget(tmp_path):
    script = _script_copy(tmp_path / "root", ("BUDGET_S=480", "BUDGET_S=400"))
    run = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 1
    assert run.stdout.strip() == "[gpu_check] FAIL: the step shares add up to 480 s, over the 400 s budget"


def test_dry_run_refuses_more_files_than_the_device_brings_back(tmp_path):
    script = _script_copy(tmp_path / "root", ("[gpu_train_step]=gpu_train_step.json)",
                                              "[gpu_train_step]=gpu_train_step.json [build]=build.json)"))
    run = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 1
    assert run.stdout.strip() == "[gpu_check] FAIL: 9 files would land in OUT; the device brings back 8"


def test_dry_run_refuses_a_first_test_that_does_not_exist(tmp_path):
    """A renamed test would silently lose its place at the front of the GPU run."""
    block = _gpu_tests_first_block()
    script = _script_copy(tmp_path / "root", (block, block.replace("  tests/train\n", "  tests/train/test_gone.py\n")))
    for name in ("tests", "scripts/gpu_preflight.py", "pytest.ini"):
        (tmp_path / "root" / name).symlink_to(REPO / name)
    run = subprocess.run(["bash", str(script), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1] == ("[gpu_check] FAIL: GPU_TESTS_FIRST names tests/train/test_gone.py, "
                                                   "which no collected GPU test starts with")


def test_without_a_gpu_the_check_stops_at_the_preflight_with_one_line(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300,
                         env={**_env(tmp_path), "GPU_CHECK_SKIP_SETUP": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 1, run.stdout + run.stderr
    stops = [line for line in run.stdout.splitlines() if line.startswith("[gpu_check] STOP")]
    assert stops == ["[gpu_check] STOP: no CUDA GPU visible to torch (torch.cuda.is_available() is False): "
                     "the rest of the check needs one"], run.stdout
    assert "gpu_tests" not in run.stdout  # nothing ran after the stop
    assert sorted(p.name for p in out.iterdir()) == ["gpu_report.json", "gpu_report.md", "logs.tar.gz"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        steps = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("steps.tsv"))).read().decode()
    assert {"preflight.log", "steps.tsv", "nvidia-smi.txt"} <= names
    assert steps.split("\t")[:2] == ["preflight", "1"]
    assert (out / "gpu_report.md").read_text().startswith("# GPU check (FAIL)")


def test_a_second_call_names_only_steps_and_files_that_exist(tmp_path):
    for env, why in (({"GPU_CHECK_ONLY": "gpu_tests gpu_bogus"}, "GPU_CHECK_ONLY names 'gpu_bogus'; the steps after "
                       "the setup are: gpu_tests triton_on_gpu gpu_fused_step gpu_rollout gpu_train_step"),
                     ({"GPU_TESTS_FROM": str(tmp_path / "gone.json")}, f"GPU_TESTS_FROM={tmp_path / 'gone.json'} is not a file")):
        run = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                             env={**_env(tmp_path), **env})
        assert run.returncode == 2 and run.stdout.strip() == f"[gpu_check] STOP: {why}", run.stdout + run.stderr


def test_preflight_names_every_missing_package_in_one_line():
    """No site-packages (python -S): the preflight lists what did not travel, before any import."""
    run = subprocess.run([sys.executable, "-S", str(REPO / "scripts" / "gpu_preflight.py"), "--no-gpu"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr == "", run.stderr
    assert run.stdout.startswith("[gpu_check] STOP: not installed: torch, torchvision, diffusers, transformers, peft, "
                                 "deepspeed, open-clip-torch,") and run.stdout.count("\n") == 1, run.stdout
    assert "pytest-timeout" in run.stdout


HANGING_TEST = """
import os
import time
from pathlib import Path
import pytest

@pytest.mark.gpu
def test_quick():  # as tests/train/end_to_end.py reports its figures
    (Path(os.environ["GPU_REPORT_DIR"]) / "trainer_end_to_end.json").write_text("{}")

@pytest.mark.gpu
def test_hangs():
    time.sleep(120)

@pytest.mark.gpu
def test_named_first():  # GPU_TESTS_FIRST names it: it runs before the two above
    pass

@pytest.mark.gpu
def test_never_reached():
    pass
"""

# Stands for the device's python3: the preflight passes, the benchmarks do nothing, the rest
# (pytest, the report) is the real interpreter.
FAKE_PYTHON = """#!/usr/bin/env bash
case "$*" in
  *gpu_preflight.py*) echo "[preflight] ok"; exit 0 ;;
  *bench/gpu_*_step.py*|*bench/gpu_rollout.py*) exit 0 ;;
esac
exec {python} "$@"
"""


def _gpu_tests_first_block() -> str:
    text = SCRIPT.read_text()
    start = text.index("GPU_TESTS_FIRST=(\n")
    return text[start:text.index("\n)\n", start) + 3]


def test_a_step_cut_at_its_limit_gets_int_so_pytest_writes_its_junit_xml(tmp_path):
    """Shares of 3 s (budget 24 s): the hanging GPU test is cut by INT at the step's limit, the
    JUnit XML holds the tests that finished, the test GPU_TESTS_FIRST names ran first (the
    repo's tests/conftest.py orders them), the report names the two that never finished, and
    the check stays within its budget."""
    root = tmp_path / "root"
    script = _script_copy(root, ("BUDGET_S=480", "BUDGET_S=24"),
                          (_gpu_tests_first_block(), "GPU_TESTS_FIRST=(tests/test_hang.py::test_named_first)\n"),
                          ("[wheels]=15 [build]=90 [preflight]=20 [gpu_tests]=165 [triton_on_gpu]=20",
                           "[wheels]=3 [build]=3 [preflight]=3 [gpu_tests]=3 [triton_on_gpu]=3"),
                          ("[gpu_fused_step]=50 [gpu_rollout]=60 [gpu_train_step]=60",
                           "[gpu_fused_step]=3 [gpu_rollout]=3 [gpu_train_step]=3"),
                          ("KILL_AFTER_S=15", "KILL_AFTER_S=5"))
    (root / "tests").mkdir()
    (root / "tests" / "test_hang.py").write_text(HANGING_TEST)
    conftest = (REPO / "tests" / "conftest.py").read_text()
    assert "if torch.cuda.is_available():" in conftest
    (root / "tests" / "conftest.py").write_text(conftest.replace("if torch.cuda.is_available():", "if True:  # as on a GPU"))
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "out"
    start = time.monotonic()
    run = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=120,
                         env={**_env(tmp_path), "PYTHON": str(fake), "GPU_CHECK_SKIP_SETUP": "1"})
    elapsed = time.monotonic() - start
    assert run.returncode == 1, run.stdout + run.stderr
    assert elapsed < 24 + 5 + 10, elapsed  # the budget, one KILL_AFTER, the report
    junit = ET.parse(out / "gpu_tests.xml").getroot()
    cases = [c.get("name") for c in junit.iter("testcase") if c.get("name")]
    assert cases == ["test_named_first", "test_quick"], ET.tostring(junit)
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["tests"]["unfinished"] == ["tests/test_hang.py::test_hangs", "tests/test_hang.py::test_never_reached"]
    md = (out / "gpu_report.md").read_text()
    assert "- not finished (the step's time ran out) x2:" in md, md
    assert "- a second call reruns these 2: GPU_TESTS_FROM=<this gpu_report.json> GPU_CHECK_ONLY=gpu_tests" in md, md
    assert "  - tests/test_hang.py::test_never_reached x1" in md, md
    assert not (out / "gpu_tests_collected.txt").exists()  # a report input, not one of the 8 files
    assert report["tests"]["rerun"] == ["tests/test_hang.py::test_hangs", "tests/test_hang.py::test_never_reached"]

    # A second call: the tests named in a report's rerun list, the gpu_tests step alone.
    rerun = tmp_path / "rerun.json"
    rerun.write_text(json.dumps({"tests": {"rerun": ["tests/test_hang.py::test_never_reached"]}}))
    second = tmp_path / "second"
    run = subprocess.run(["bash", str(script), str(second)], capture_output=True, text=True, timeout=120,
                         env={**_env(tmp_path), "PYTHON": str(fake), "GPU_CHECK_SKIP_SETUP": "1",
                              "GPU_TESTS_FROM": str(rerun), "GPU_CHECK_ONLY": "gpu_tests"})
    assert run.returncode == 0, run.stdout + run.stderr
    cases = [c.get("name") for c in ET.parse(second / "gpu_tests.xml").getroot().iter("testcase")]
    assert cases == ["test_never_reached"]
    assert [s["step"] for s in json.loads((second / "gpu_report.json").read_text())["steps"]] == ["preflight", "gpu_tests"]
    assert (out / "trainer_end_to_end.json").is_file()  # GPU_REPORT_DIR is OUT
    with tarfile.open(out / "logs.tar.gz") as tar:
        steps = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("steps.tsv"))).read().decode()
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in steps.splitlines()}
    assert rows["preflight"] == "0" and rows["gpu_tests"] == "124", steps  # 124: timeout cut it
    assert len(list(out.iterdir())) <= 8


@pytest.mark.slow
def test_smoke_benchmarks_feed_the_report_and_a_failed_step_fails_it(tmp_path):
    # Each benchmark in a process of its own, as gpu_check.sh runs it: their time caps count
    # from process start (bench/gpu_timing.py), so a long-lived test process would leave them
    # none (the whole suite ran 12 minutes before this test: every case was cut, no results).
    out = tmp_path / "out"
    out.mkdir()
    steps = []
    for name in ("gpu_fused_step", "gpu_rollout", "gpu_train_step"):
        run = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--smoke", "--out", str(out / f"{name}.json")],
                             capture_output=True, text=True, timeout=300, env=_env(tmp_path), cwd=REPO)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        steps.append(f"{name}\t0\t1")
    (out / "steps.tsv").write_text("\n".join(steps) + "\n")
    report = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_report.py"), str(out)], capture_output=True, text=True,
                            timeout=60)
    assert report.returncode == 0, report.stdout + report.stderr
    data = json.loads((out / "gpu_report.json").read_text())
    assert data["ok"] and set(data["benchmarks"]) == {"gpu_fused_step", "gpu_rollout", "gpu_train_step"}
    fused = data["benchmarks"]["gpu_fused_step"]["results"]
    assert {"bf16/sample/eager", "bf16/score_fwd_bwd/cpu"} <= set(fused) and all(r["gbs"] > 0 for r in fused.values())
    train = data["benchmarks"]["gpu_train_step"]["results"]
    assert all(train[k]["transitions_per_s"] > 0 and train[k]["seconds_per_update"] > 0
               for k in ("timestep_batched", "per_timestep_loop"))
    rollout = data["benchmarks"]["gpu_rollout"]["results"]
    assert rollout["engine_eager"]["images_per_s"] > 0 and rollout["paper_loop"]["images_per_s"] > 0
    md = (out / "gpu_report.md").read_text()
    assert md.startswith("# GPU check (PASS)") and "## One GRPO-Guard update" in md and "## Rollout" in md
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


def test_the_report_lists_failed_then_unfinished_tests_as_node_ids(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "steps.tsv").write_text("gpu_tests\t1\t9\n")
    (out / "gpu_tests_collected.txt").write_text(
        "tests/kernels/test_x.py::test_y[a]\ntests/a/test_b.py::TestC::test_z\ntests/a/test_b.py::test_ok\ntests/c.py::test_late\n")
    failure = '<failure message="boom"/>'
    (out / "gpu_tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="2" errors="0" skipped="0">'
        f'<testcase classname="tests.kernels.test_x" name="test_y[a]">{failure}</testcase>'
        f'<testcase classname="tests.a.test_b.TestC" name="test_z">{failure}</testcase>'
        '<testcase classname="tests.a.test_b" name="test_ok"/></testsuite></testsuites>')
    run = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_report.py"), str(out)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1
    tests = json.loads((out / "gpu_report.json").read_text())["tests"]
    assert tests["rerun"] == ["tests/kernels/test_x.py::test_y[a]", "tests/a/test_b.py::TestC::test_z", "tests/c.py::test_late"]
    assert tests["unfinished"] == ["tests/c.py::test_late"] and tests["passed"] == 1
