"""The frozen reference policy of the KL term (``train.beta > 0``), called like the transformer.

Both forms go through the same re-scoring path as the policy (``rollout.score_transitions``), so the
KL term compares two means computed the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...models import lora_disabled


class _AdaptersOff:
    """A LoRA policy with its adapters switched off, called like the transformer (``dtype``
    and the keyword forward are all ``predict_velocity`` uses)."""

    def __init__(self, policy: Callable, module: torch.nn.Module):
        self.policy, self.module = policy, module

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    def __call__(self, **kwargs):
        with lora_disabled(self.module):
            return self.policy(**kwargs)


def lora_reference(policy: Callable, module: torch.nn.Module) -> Callable:
    """The frozen base of a LoRA policy: the same forward (the policy's, so the engine's
    hooks still run) with the adapters of ``module`` switched off."""
    return _AdaptersOff(policy, module)


def module_reference(frozen: torch.nn.Module) -> Callable:
    """The frozen base of a full fine-tune: the copy of the initial weights, itself called
    like the transformer."""
    return frozen
