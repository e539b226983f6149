"""Is the run training at all? Loud failures for runs that would otherwise go on silently.

- An epoch that kept 0% of its samples trains nothing: a warning (rank 0).
- A run that ends without one applied update exits non-zero (:class:`NothingTrained`)
  saying why: no sample kept (rewards constant within every group, e.g.
  ``images_per_prompt: 1`` without a fallback, or all invalid) or every update skipped.
- Remote rewards that fail give sentinel (invalid) samples; when the invalid fraction over
  the last ``reward.abort_window`` epochs reaches ``reward.abort_invalid_fraction`` the run
  stops (:class:`RewardsFailing`) instead of training on nothing (``abort_window: 0``: never).
- A policy that produces non-finite latents, log-probs or weights stops the run at that
  epoch, nothing of it saved (:class:`~precise_fast.train.phases.divergence.Diverged`, phases/divergence.py).
"""

from __future__ import annotations

import logging
from collections import deque

logger = logging.getLogger("precise_fast.train")


class TrainingHealthError(RuntimeError):
    """The run cannot train (exit status 3)."""


class NothingTrained(TrainingHealthError):
    pass


class RewardsFailing(TrainingHealthError):
    pass


def warn_if_nothing_kept(epoch: int, kept_fraction: float, *, main: bool) -> None:
    if kept_fraction == 0 and main:
        logger.warning("epoch %d kept 0%% of its samples (every advantage was 0: rewards equal within every group, "
                       "or all invalid); it trains nothing", epoch)


def check_trained(*, epochs: int, applied_steps: int, skipped_updates: int, images_per_prompt: int) -> None:
    """Raise :class:`NothingTrained` when ``epochs`` > 0 ran and no update changed the weights."""
    if applied_steps > 0 or epochs == 0:
        return
    why = (f"all {skipped_updates} updates were skipped for non-finite values" if skipped_updates else
           "no epoch kept a sample (every advantage was 0: rewards constant within each group of "
           f"sampler.images_per_prompt={images_per_prompt}, or every reward invalid)")
    raise NothingTrained(f"the run trained nothing in {epochs} epochs: {why}")


class RewardHealth:
    """Sliding window over the epochs' invalid-reward fractions."""

    def __init__(self, threshold: float, window: int):
        self.threshold = float(threshold)
        self.window = int(window)
        self.recent: deque[float] = deque(maxlen=max(1, self.window))

    def update(self, epoch: int, invalid_fraction: float) -> None:
        if self.window == 0:
            return
        self.recent.append(float(invalid_fraction))
        if len(self.recent) < self.window:
            return
        mean = sum(self.recent) / len(self.recent)
        if mean >= self.threshold:
            raise RewardsFailing(
                f"rewards failing: {mean:.0%} of the samples of epochs {epoch - self.window + 1}-{epoch} got no valid "
                f"reward (the sentinel), at or above reward.abort_invalid_fraction={self.threshold:g} over "
                f"reward.abort_window={self.window} epochs; check the reward servers (their log, the urls)")
