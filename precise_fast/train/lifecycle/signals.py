"""Stop a rank at a safe point on SIGTERM / SIGINT (a scheduler's TERM, a Ctrl-C, the launcher).

The handler only records the signal; the trainer asks :meth:`StopRequest.agreed` at safe
points: after each sampling batch, and after each epoch (saving that epoch's checkpoint
first when ``checkpoint.every`` would not have, so a finished epoch is never lost).
The question is a collective (a max all-reduce of the flag), so every rank stops at the
same point even when the signal reached them at different moments; a rank never leaves a
collective half-done. Stopping mid-epoch abandons that epoch (nothing of it is written; the
last checkpoint stays the resume point); a checkpoint being written is always finished.
The process then exits with 128 + the signal number (143 for TERM, 130 for INT).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import torch

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Raised at a safe point after a stop signal; carries the signal number."""

    def __init__(self, signum: int, where: str):
        self.signum = int(signum)
        self.where = where
        super().__init__(f"stopped by {signal.Signals(self.signum).name} {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Installs the handlers (main thread only); ``reduce_max`` makes the answer collective."""

    def __init__(self, reduce_max: Callable[[torch.Tensor], torch.Tensor] | None = None, *, install: bool = True):
        self.signum = 0
        self.reduce_max = reduce_max
        self._previous = {}
        if install:
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._record)

    def _record(self, signum, frame) -> None:
        if not self.signum:  # the first signal names the stop; repeats (launcher + scheduler) change nothing
            self.signum = signum

    def agreed(self) -> int:
        """The signal some rank got (0: none). Every rank must call this at the same point."""
        flag = torch.tensor([self.signum], dtype=torch.int64)
        if self.reduce_max is not None:
            self.reduce_max(flag)
        return int(flag.item())

    def check(self, where: str) -> None:
        signum = self.agreed()
        if signum:
            raise StopRequested(signum, where)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
