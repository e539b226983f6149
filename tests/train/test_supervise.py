"""The supervisor behind ``make train`` (train/supervise.py) on a stand-in job with the same
process tree as DeepSpeed's (runner -> per-node launcher -> 2 ranks; tests/train/fake_job):
fast checks of the signal paths the slow 2-rank test (test_signals.py) cannot all afford."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .process_tree import assert_none_left

FAKE = Path(__file__).parent / "fake_job"


def _start(tmp_path: Path, mode: str, grace: float = 30, in_process: bool = False) -> subprocess.Popen:
    job = [sys.executable, str(FAKE / "fake_deepspeed.py"), str(tmp_path), mode]
    if in_process:  # as precise-fast train / eval supervise their launch: run_job in their own process
        cmd = [sys.executable, "-c", f"import sys; from precise_fast.train.supervise import run_job; sys.exit(run_job({job!r}))"]
    else:
        cmd = [sys.executable, "-m", "precise_fast.train.supervise", "--grace", str(grace), "--", *job]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 60
    while not all((tmp_path / f"started-{r}").exists() for r in (0, 1)):
        assert time.monotonic() < end and proc.poll() is None, "the stand-in ranks did not start"
        time.sleep(0.05)
    time.sleep(1.2)  # the supervisor looks for ranks once a second
    return proc


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def _runner(family: list[psutil.Process]) -> psutil.Process:
    return next(p for p in family if "fake_deepspeed.py" in " ".join(p.cmdline()))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_supervisor_reaches_the_ranks(tmp_path, sig):
    proc = _start(tmp_path, "graceful")
    family = _tree(proc)
    assert len(family) == 4
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 128 + sig
    assert [(tmp_path / f"stopped-{r}").read_text() for r in (0, 1)] == [str(int(sig))] * 2  # each rank stopped itself
    assert_none_left(family)


def test_precise_fast_train_and_eval_supervise_their_launch_in_process(tmp_path, monkeypatch):
    """``precise-fast train`` / ``eval`` run their deepspeed launch through ``run_job``: a TERM to
    them reaches the ranks (before, it killed the CLI alone and the ranks trained on)."""
    proc = _start(tmp_path, "graceful", in_process=True)
    family = _tree(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert [(tmp_path / f"stopped-{r}").read_text() for r in (0, 1)] == [str(int(signal.SIGTERM))] * 2
    assert_none_left(family)

    from precise_fast import cli, launch
    from precise_fast.eval import cli as eval_cli

    ran = []
    for module in (launch, eval_cli):
        monkeypatch.setattr(module, "run_job", lambda cmd: ran.append(cmd) or 0)
    monkeypatch.setenv(launch.AUTO_START_ENV, "0")
    assert cli.main(["train", "--reward", "pickscore", "--sde", "precise", "--num-gpus", "2"]) == 0
    monkeypatch.setattr(eval_cli, "plan", lambda args: (None, []))  # the jobs' checks, tested in tests/eval
    assert cli.main(["eval", str(tmp_path), "--num-gpus", "2"]) == 0
    assert [cmd[1:3] for cmd in ran] == [["--num_gpus", "2"]] * 2
    assert [cmd[cmd.index("--module") + 1] for cmd in ran] == ["precise_fast.train", "precise_fast.eval"]


def test_term_to_the_runner_alone_still_stops_its_orphaned_ranks(tmp_path):
    """The issue's case: the runner dies of the TERM, its launcher and ranks are re-parented."""
    proc = _start(tmp_path, "graceful")
    family = _tree(proc)
    _runner(family).send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert all((tmp_path / f"stopped-{r}").exists() for r in (0, 1))
    assert_none_left(family)


def test_ranks_that_do_not_stop_are_killed_after_the_grace(tmp_path):
    proc = _start(tmp_path, "stubborn", grace=1)
    family = _tree(proc)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    err = proc.stderr.read()
    assert rc == 143 and "SIGKILL" in err and time.monotonic() - start < 10
    assert not any((tmp_path / f"stopped-{r}").exists() for r in (0, 1))
    assert_none_left(family)


def test_a_job_that_ends_by_itself_passes_its_status_through(tmp_path):
    cmd = [sys.executable, "-m", "precise_fast.train.supervise", "--", sys.executable, "-c", "import sys; sys.exit(5)"]
    assert subprocess.run(cmd, timeout=60).returncode == 5
