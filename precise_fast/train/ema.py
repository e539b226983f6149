"""Exponential moving average of the trained weights (eval and exported checkpoints use it).

The Precise recipe keeps an EMA of the LoRA weights with decay 0.9, updated every 8
optimizer steps (shared/SAMPLERS.md; Flow-GRPO's ``EMAModuleWrapper`` does the same
schedule, with an extra warm-up on the decay that we leave out so the decay is the one the
config states). The shadow is float32 whatever the training dtype.

Under ZeRO-3 a rank holds only its partition of each parameter (``param.ds_tensor``); the
EMA then tracks that partition, so its memory is partitioned like the weights. Elsewhere
the full parameter is tracked (identical on every rank).
"""

from __future__ import annotations

import contextlib

import torch


def local_tensor(param: torch.nn.Parameter) -> torch.Tensor:
    """The part of ``param`` this rank owns: its ZeRO-3 partition, or the parameter itself."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


class EMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float, interval: int):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if interval < 1:
            raise ValueError(f"EMA interval must be >= 1, got {interval}")
        self.params = list(params)
        self.decay = float(decay)
        self.interval = int(interval)
        self.shadow = [local_tensor(p).detach().to(torch.float32).clone() for p in self.params]
        self.num_updates = 0

    @torch.no_grad()
    def step(self, optimizer_steps: int) -> bool:
        """Call after each applied optimizer step (``optimizer_steps`` = applied steps so far)."""
        if optimizer_steps % self.interval:
            return False
        for s, p in zip(self.shadow, self.params):
            s.lerp_(local_tensor(p).detach().to(torch.float32), 1.0 - self.decay)
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
                "decay": self.decay, "interval": self.interval}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ValueError("EMA state does not match the trained parameters (different adapter or ZeRO partitioning)")
        for s, saved in zip(self.shadow, shadow):
            s.copy_(saved)
        self.num_updates = state["num_updates"]
