"""Per-prompt, per-member seeds: pure functions of integers, so independent of batch layout;
and :func:`as_seed_tensor`, the one check every sampling entry point puts its seeds through."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    # SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number
    # generators", OOPSLA 2014): a bijective 64-bit mix, so distinct inputs never collide.
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a deterministic function of the integers ``parts`` (e.g. epoch, prompt, member)."""
    z = 0
    for p in parts:
        z = _splitmix64(z ^ (int(p) & _MASK64))
    return z & ((1 << 63) - 1)


def group_seeds(prompt_seeds: Sequence[int] | torch.Tensor, group_size: int, *, same_initial_latent: bool = False):
    """``(seeds, init_seeds)`` (P * G,) int64 for P prompts x G members, prompt-major.

    Member m of prompt p gets ``mix_seed(prompt_seeds[p], m)`` for its step noise; its
    initial-latent seed is the same, or with ``same_initial_latent`` the prompt's own seed
    (every member of a group then starts from the same latent).
    """
    base = [int(s) for s in torch.as_tensor(prompt_seeds).reshape(-1).tolist()]
    g = int(group_size)
    if g < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    seeds = torch.tensor([mix_seed(s, m) for s in base for m in range(g)], dtype=torch.int64)
    init = torch.tensor([s for s in base for _ in range(g)], dtype=torch.int64) if same_initial_latent else seeds.clone()
    return seeds, init


def as_seed_tensor(seeds, name: str, device) -> torch.Tensor:
    """``seeds`` (any 1-D integer sequence or tensor) as an int64 tensor on ``device``.

    Every sampling entry point takes its seeds through here, so a float, bool, empty or
    multi-dimensional argument fails at the call with its ``name``, not as a wrong draw
    deep inside the sampler op (floats would be truncated silently).
    """
    t = torch.as_tensor(seeds)
    if t.is_floating_point() or t.dtype == torch.bool or t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of integers, got {t.dtype} of shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64)
