"""Deterministic crash injection for the resume tests (inert unless the variable is set).

``PRECISE_FAST_CRASH_AT=<point>:<n>`` makes rank 0 SIGKILL the whole process group the
n-th time (1-based, counted from process start) it reaches ``<point>``: a hard crash of the
job with no chance to clean up, at a chosen place, so "killed mid-epoch" and "killed while
writing a checkpoint" are reproducible rather than timing races. ``<point>:<n>@<r>`` makes
global rank ``r`` do it instead: started as its own process group (one launcher per node,
its own session), that is the loss of the node running rank ``r`` while the others go on.
Points:
``train_step`` (after an applied optimizer step) and ``checkpoint_write`` (checkpoint files
partly written into the temporary folder, before it is published); ``eval_batch`` (the standalone
evaluator, after a batch's records are written: precise_fast/eval/runner.py).
"""

from __future__ import annotations

import os
import signal

ENV = "PRECISE_FAST_CRASH_AT"
_counts: dict[str, int] = {}


def crash_point(name: str, rank: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    spec, _, who = spec.partition("@")
    if rank != int(who or 0):
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(count or 1):
        os.killpg(os.getpgid(0), signal.SIGKILL)
