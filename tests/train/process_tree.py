"""What the signal tests assert about a launched process tree: nothing of it is left running."""

from __future__ import annotations

import psutil


def assert_none_left(family: list[psutil.Process]) -> None:
    """Every process of ``family`` has exited (a zombie awaiting its reaper counts as exited)."""
    left = []
    for p in family:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    assert not left, f"processes left behind: {left}"
