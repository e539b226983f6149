"""Progress bars of an epoch's long phases (sampling, rewards, training) on rank 0."""

from __future__ import annotations

import sys

from tqdm import tqdm


class ProgressBar:
    """A tqdm bar on rank 0 when progress is on, otherwise nothing. ``on_update`` runs on
    every rank at every step (a collective safe point, e.g. the stop check)."""

    def __init__(self, enabled: bool, on_update=None, **kwargs):
        self.bar = None
        self.on_update = on_update
        if enabled:
            self.bar = tqdm(leave=False, dynamic_ncols=True, file=sys.stderr, **kwargs)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
        if self.on_update is not None:
            self.on_update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
