"""Non-finite guard: a NaN/Inf anywhere in an update skips that update; it never reaches the weights.

Four places are watched: the model output ``v``, the log-probs, the loss (forward side,
flagged per microbatch as device tensors, no host sync) and the gradients. Gradients are
caught BEFORE DeepSpeed sees them: a tensor hook on every trained parameter runs before
the gradient is accumulated or reduced, records a non-finite gradient and hands on zeros
instead, so no NaN enters DeepSpeed's buffers, its reduce-scatter, or the grad-norm clip.
This works the same for ZeRO 0-3 (hooks on the parameters, not on DeepSpeed internals).

At the optimizer step the flags of all ranks are OR-reduced (one all-reduce), and if any
is set the :class:`GuardedAdamW` step does nothing (weights and Adam moments unchanged);
DeepSpeed then clears the accumulated gradients as after any step. Skips are counted by cause.
"""

from __future__ import annotations

import torch

CAUSES = ("model_output", "log_prob", "loss", "gradient")


class GuardedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose ``step`` is a no-op while ``skip`` is set (the guard sets it)."""

    skip: bool = False

    @torch.no_grad()
    def step(self, closure=None):
        if self.skip:
            return None
        return super().step(closure)


class NonFiniteGuard:
    def __init__(self, params: list[torch.nn.Parameter], device: torch.device):
        self.device = device
        self.flags = torch.zeros(len(CAUSES), dtype=torch.bool, device=device)
        self.skipped = {c: 0 for c in CAUSES}
        self.skipped_updates = 0
        self._handles = [p.register_hook(self._grad_hook) for p in params]

    def _grad_hook(self, grad: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(grad).all()
        self.flags[3] |= bad.to(self.device)
        return torch.where(bad, torch.zeros_like(grad), grad)

    def check(self, cause: str, tensor: torch.Tensor) -> None:
        """Flag ``cause`` if ``tensor`` holds a non-finite value (device-side, no sync)."""
        i = CAUSES.index(cause)
        self.flags[i] |= ~torch.isfinite(tensor.detach()).all().to(self.device)

    def decide(self, all_reduce_max) -> bool:
        """OR the flags over ranks; count and reset them. True means: skip this update."""
        flags = self.flags.to(torch.int32)
        all_reduce_max(flags)
        flags = flags.bool().tolist()
        self.flags.zero_()
        if not any(flags):
            return False
        self.skipped_updates += 1
        for cause, hit in zip(CAUSES, flags):
            self.skipped[cause] += int(hit)
        return True

    def state_dict(self) -> dict:
        return {"skipped": dict(self.skipped), "skipped_updates": self.skipped_updates}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = dict(state["skipped"])
        self.skipped_updates = state["skipped_updates"]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
