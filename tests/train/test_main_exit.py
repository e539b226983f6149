"""A finished ``python -m precise_fast.train`` ends its process group before it exits.

Left to interpreter exit, gloo's threads can abort a rank whose peer already closed its
sockets ("terminate called without an active exception", seen once in the 2-rank resume
test: tests/train/test_distributed.py); precise_fast/train/policy/distributed.py:finish_distributed.
"""

from __future__ import annotations

import subprocess
import sys

from ..child_env import child_env
from .conftest import REPO, SMALL, TINY_CONFIG

PROBE = """
import sys, torch.distributed
from precise_fast.train.main import main
rc = main(sys.argv[1:])
print("rc", rc, "group left", torch.distributed.is_initialized())
"""


def _run_probe(probe: str, tmp_path) -> subprocess.CompletedProcess:
    """``main`` on the small config in a fresh interpreter (the group is the process's own)."""
    overrides = [a for o in (*SMALL, f"run.output_dir={tmp_path / 'run'}") for a in ("--set", o)]
    return subprocess.run([sys.executable, "-c", probe, "--config", str(TINY_CONFIG), *overrides], env=child_env(),
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_a_finished_run_destroys_the_process_group_it_made(tmp_path):
    proc = _run_probe(PROBE, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rc 0 group left False" in proc.stdout, proc.stdout[-2000:]


# The same run, stopped at its first safe point as a TERM would stop it.
STOPPED_PROBE = PROBE.replace(
    "from precise_fast.train.main import main",
    "import signal\n"
    "import precise_fast.train.lifecycle.signals as signals\n"
    "class Termed(signals.StopRequest):\n"
    "    def __init__(self, *a, **k):\n"
    "        super().__init__(*a, **k)\n"
    "        self.signum = signal.SIGTERM\n"
    "signals.StopRequest = Termed\n"
    "from precise_fast.train.main import main",
)


def test_a_stopped_run_destroys_the_process_group_it_made(tmp_path):
    """A stop is agreed on every rank at one safe point, so it ends the group as a finished
    run does (it used to return before, and a 2-rank TERM run once aborted at exit)."""
    proc = _run_probe(STOPPED_PROBE, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "stopped by SIGTERM" in proc.stderr, proc.stderr[-2000:]
    assert "rc 143 group left False" in proc.stdout, proc.stdout[-2000:]


def test_an_in_process_caller_keeps_its_own_group(tmp_path, dist1):
    """Tests (and notebooks) that bring a process group keep it after main() returns."""
    import torch.distributed

    from precise_fast.train.main import main

    overrides = [a for o in (*SMALL, f"run.output_dir={tmp_path / 'run'}") for a in ("--set", o)]
    assert main(["--config", str(TINY_CONFIG), *overrides]) == 0
    assert torch.distributed.is_initialized()
