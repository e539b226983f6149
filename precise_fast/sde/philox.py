"""The one counter-based noise stream of every backend, as plain PyTorch (the spec).

Noise is a pure function of ``(seed, step, element)``: no generator state, so a sample's
noise does not depend on the batch layout, on the backend, or on how many steps ran
before a resume. Generator: Philox4x32-10 (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC 2011), normals by Box-Muller (1958).

Exact keying (every backend reproduces it; ``csrc/step_coefficients.h`` and
``kernels/fused_step.py`` hold the other two copies):

- key ``(k0, k1) = (seed & 0xffffffff, (seed >> 32) & 0xffffffff)`` (the int64 seed's bits);
- element ``i`` is the row-major index within its row (over all non-batch dimensions,
  whatever the memory layout); ``g = i >> 2`` is its group and ``lane = i & 3``;
- counter ``(c0, c1, c2, c3) = (g & 0xffffffff, g >> 32, step & 0xffffffff, (step >> 32) & 0xffffffff)``;
- Philox4x32 with 10 rounds, multipliers ``0xD2511F53`` / ``0xCD9E8D57`` and key
  increments ``0x9E3779B9`` / ``0xBB67AE85`` gives four words ``w0..w3``;
- each word becomes a uniform ``u = (2 * (w >> 9) + 1) / 2**24``: an odd multiple of
  ``2**-24`` in (0, 1), exact in float32, never 0 or 1 (so ``log`` is finite);
- Box-Muller on the pairs: ``r = sqrt(-2 log u0)``, ``z0 = r cos(2 pi u1)``,
  ``z1 = r sin(2 pi u1)``, and the same with ``(u2, u3)`` for ``z2, z3``;
- element ``i`` takes ``z[lane]``.

The uniforms are exact, so backends differ only in how they round ``log``, ``sqrt``,
``sin`` and ``cos``: this reference evaluates them in float64 and rounds once to float32;
the kernels use float32 polynomials within a few ulp of it. The tails are cut at
``sqrt(2 * 24 log 2) = 5.77``, a probability of 8e-9 per draw.
"""

from __future__ import annotations

import math

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a * b`` for a 32-bit constant ``a`` and int64 tensor ``b < 2**32``.

    The 64-bit product overflows int64, so it is split on ``a``'s 16-bit halves: each
    partial product stays below 2**48.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_lo = b * a_lo  # < 2**48
    p_hi = b * a_hi  # < 2**48
    lo = ((p_hi & 0xFFFF) << 16) + p_lo
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi & _MASK32, lo & _MASK32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor], rounds: int = PHILOX_ROUNDS):
    """Philox4x32-``rounds`` on broadcastable int64 tensors holding 32-bit words."""
    c0, c1, c2, c3 = (c & _MASK32 for c in counter)
    k0, k1 = (k & _MASK32 for k in key)
    for r in range(rounds):
        if r:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo32(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo32(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_from_bits(word: torch.Tensor) -> torch.Tensor:
    """``(2 * (word >> 9) + 1) / 2**24`` as float64 (exact; also exact in float32)."""
    return ((word >> 9) * 2 + 1).to(torch.float64) * (2.0**-24)


def _as_row_tensor(value, name: str, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(value, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {t.dtype}")
    t = t.to(torch.int64)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be an int, a 0-d tensor or a tensor of shape ({batch},), got {tuple(t.shape)}")
    return t


def philox_normal(seeds: torch.Tensor, step_index, shape) -> torch.Tensor:
    """Standard normals of shape ``shape`` (``shape[0]`` = B rows), float32, on ``seeds``' device.

    Row ``b`` is keyed by ``seeds[b]`` (int64) and ``step_index`` (an int, a 0-d tensor, or
    one per row as a (B,) tensor); element ``i`` of a row is the row-major index over the
    non-batch dimensions. See the module docstring for the exact keying.
    """
    if not isinstance(seeds, torch.Tensor):
        seeds = torch.as_tensor(seeds)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        raise ValueError("shape needs a batch dimension")
    batch = shape[0]
    if seeds.dim() != 1 or seeds.shape[0] != batch:
        raise ValueError(f"seeds must have shape ({batch},), got {tuple(seeds.shape)}")
    device = seeds.device
    seeds = _as_row_tensor(seeds, "seeds", batch, device)
    steps = _as_row_tensor(step_index, "step_index", batch, device)
    per_row = math.prod(shape[1:])
    groups = (per_row + 3) // 4
    g = torch.arange(groups, dtype=torch.int64, device=device).unsqueeze(0)  # (1, G)
    seeds_col, steps_col = seeds.unsqueeze(1), steps.unsqueeze(1)  # (B, 1)
    counter = (g & _MASK32, (g >> 32) & _MASK32, steps_col & _MASK32, (steps_col >> 32) & _MASK32)
    key = (seeds_col & _MASK32, (seeds_col >> 32) & _MASK32)
    w0, w1, w2, w3 = (w.expand(batch, groups) for w in philox4x32(counter, key))
    u0, u1, u2, u3 = (uniform_from_bits(w) for w in (w0, w1, w2, w3))
    r01 = torch.sqrt(-2.0 * torch.log(u0))
    r23 = torch.sqrt(-2.0 * torch.log(u2))
    a1, a3 = (2.0 * math.pi) * u1, (2.0 * math.pi) * u3
    z = torch.stack((r01 * torch.cos(a1), r01 * torch.sin(a1), r23 * torch.cos(a3), r23 * torch.sin(a3)), dim=-1)
    z = z.reshape(batch, groups * 4)[:, :per_row].to(torch.float32)
    return z.reshape(shape)
