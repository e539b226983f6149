"""Exponential moving average of the trained weights (eval and exported checkpoints use it).

Two schedules (``train.ema_schedule``):

- ``paper`` (the recipe default), as Tencent-Hunyuan/Precise does it (precise_sde/core/ema.py,
  called from precise_sde/train/rl_trainer.py): :meth:`EMA.step` runs after every
  *minibatch* with ``s`` = optimizer steps so far; it updates when ``(s + 1) % interval == 0``
  with decay ``min((1 + s) / (10 + s), decay)``. Since ``s`` stays put while a window's
  minibatches run, an update step fires once per minibatch of that window: with 8
  minibatches per optimizer step and interval 8, 8 back-to-back updates every 8 steps, at a
  warm-up decay (0.47 at s = 7, 0.64 at s = 15, ... 0.9 from s = 81).
- ``fixed``: after every applied optimizer step, update when ``s % interval == 0`` at the
  constant ``decay`` (about 5x more lag at the first eval of the recipe).

The shadow is float32 whatever the training dtype.

Under ZeRO-3 a rank holds only its partition of each parameter (``param.ds_tensor``); the
EMA then tracks that partition, so its memory is partitioned like the weights. Elsewhere
the full parameter is tracked (identical on every rank).
"""

from __future__ import annotations

import contextlib
import math

import torch


def local_tensor(param: torch.nn.Parameter) -> torch.Tensor:
    """The part of ``param`` this rank owns: its ZeRO-3 partition, or the parameter itself."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


EMA_SCHEDULES = ("paper", "fixed")


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, interval: int, schedule: str = "paper"):
        if schedule not in EMA_SCHEDULES:
            raise ValueError(f"EMA schedule must be one of {', '.join(EMA_SCHEDULES)}, got {schedule!r}")
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if interval < 1:
            raise ValueError(f"EMA interval must be >= 1, got {interval}")
        self.params = list(params)
        self.decay = float(decay)
        self.interval = int(interval)
        self.schedule = schedule
        self.shadow = [local_tensor(p).detach().to(torch.float32).clone() for p in self.params]
        self.num_updates = 0

    @property
    def per_minibatch(self) -> bool:
        """Whether :meth:`step` is called after every minibatch (paper) or every applied optimizer step (fixed)."""
        return self.schedule == "paper"

    def decay_at(self, optimizer_steps: int) -> float | None:
        """The decay an update at ``optimizer_steps`` uses, or None when no update is due."""
        s = int(optimizer_steps)
        if self.schedule == "paper":
            return self._paper_decay(s) if (s + 1) % self.interval == 0 else None
        return self.decay if s % self.interval == 0 else None

    def _paper_decay(self, s: int) -> float:
        """The paper schedule's decay at ``s`` optimizer steps: a warm-up ramp capped at ``decay``."""
        return min((1 + s) / (10 + s), self.decay)

    def decay_reached_at(self) -> int:
        """The first optimizer step whose update uses the full ``decay``: 0 for ``fixed``; for
        ``paper`` the smallest s with (1 + s) / (10 + s) >= decay (80 for 0.9, 290 for 0.97) at
        which an update is due, (s + 1) % interval == 0 (87 for 0.9 at interval 8)."""
        if self.schedule != "paper":
            return 0
        s = max(0, math.ceil((10 * self.decay - 1) / (1 - self.decay)) - 1)
        # From the closed form: on past float rounding, then to the next step an update runs at.
        while self._paper_decay(s) < self.decay or self.decay_at(s) is None:
            s += 1
        return s

    def unreached_decay_note(self, optimizer_steps: int) -> str | None:
        """A one-line note when a run ended (at ``optimizer_steps``) before its ``paper`` ramp
        reached ``decay``: the configured value then never took effect (a user tuning
        ``train.ema_decay`` on a short run would otherwise see no change and no reason)."""
        reached = self.decay_reached_at()
        if optimizer_steps >= reached:
            return None
        last = self._paper_decay(optimizer_steps)
        return (f"train.ema_decay={self.decay:g} never took effect: under ema_schedule 'paper' the decay ramps as "
                f"(1 + s) / (10 + s) and reaches {self.decay:g} at optimizer step {reached}; this run ended at step "
                f"{optimizer_steps} (decay {last:.3f}). ema_schedule: fixed uses the constant decay.")

    @torch.no_grad()
    def step(self, optimizer_steps: int) -> bool:
        """Call after each minibatch (paper) / applied optimizer step (fixed); ``optimizer_steps`` = steps so far."""
        decay = self.decay_at(optimizer_steps)
        if decay is None:
            return False
        for s, p in zip(self.shadow, self.params):
            s.lerp_(local_tensor(p).detach().to(torch.float32), 1.0 - decay)
        self.num_updates += 1
        return True

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self):
        """Inside the block the parameters hold the EMA weights; the live ones come back exactly after."""
        backup = [local_tensor(p).detach().clone() for p in self.params]
        try:
            for s, p in zip(self.shadow, self.params):
                local_tensor(p).copy_(s)
            yield
        finally:
            for b, p in zip(backup, self.params):
                local_tensor(p).copy_(b)

    def state_dict(self) -> dict:
        return {"shadow": [s.cpu() for s in self.shadow], "num_updates": self.num_updates,
                "decay": self.decay, "interval": self.interval, "schedule": self.schedule}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ValueError("EMA state does not match the trained parameters (different adapter or ZeRO partitioning)")
        for s, saved in zip(self.shadow, shadow):
            s.copy_(saved)
        self.num_updates = state["num_updates"]
