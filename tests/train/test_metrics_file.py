"""metrics.jsonl survives a kill at any moment of a resume's rewrite, and a torn last line
does not stop a resume (issue 25 item 8; train/report/tracking.py).

The issue saw a kill -9 in the first epoch after a resume empty the file: it was reopened
for writing (truncated) while the kept lines still waited in Python's buffer."""

import json
import logging
import subprocess
import sys
import types

from precise_fast.train.report.tracking import RunLogger

from ..child_env import child_env
from .conftest import REPO

CFG = types.SimpleNamespace(log=types.SimpleNamespace(wandb=False))
LINES = [json.dumps({"epoch": e, "reward_mean": 0.1 * e}) for e in (1, 2, 3)]

# A resumed logger (epoch 2 done) in a child that then dies by SIGKILL: right after the
# logger opened the file ("after_open"), or inside the rewrite just before the new file
# replaces the old one ("before_replace").
CHILD = """
import os, signal, sys, types
from precise_fast.train.report import tracking
cfg = types.SimpleNamespace(log=types.SimpleNamespace(wandb=False))
if sys.argv[2] == "before_replace":
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
logger = tracking.RunLogger(sys.argv[1], cfg, enabled=True, resumed_epoch=2)  # kept alive: no close() flushes it
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_child(out, when):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out), when], env=child_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]


def test_a_kill_right_after_the_resumed_logger_opens_keeps_the_kept_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(LINES) + "\n")
    _killed_child(tmp_path, "after_open")
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == LINES[:2]


def test_a_kill_inside_the_rewrite_leaves_the_old_file_whole(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(LINES) + "\n")
    _killed_child(tmp_path, "before_replace")
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == LINES


def test_a_torn_last_line_is_dropped_with_a_note(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text("\n".join(LINES[:2]) + '\n{"epoch": 3, "rew')
    with caplog.at_level(logging.WARNING, logger="precise_fast.train"):
        logger = RunLogger(tmp_path, CFG, enabled=True, resumed_epoch=2)
    logger.log({"reward_mean": 0.5}, 3)
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert any("metrics.jsonl" in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
