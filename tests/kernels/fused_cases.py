"""Inputs and numerical checks shared by the fused-step tests.

The accuracy rule is flash-attention's: a backend's error against a float64 reference may
be at most a small multiple of the error that the eager reference itself makes at the same
input precision (float32 arithmetic), plus one rounding of the output type (so that a
single element landing on the other side of a rounding boundary is not a failure).
"""

from __future__ import annotations

import math

import torch

from precise_fast.sde import noise_std, reference_step
from precise_fast.sde.kinds import DEFAULT_ETA

# Steps of the FLUX.2 Klein 512x512 schedule (SAMPLERS.md), including the first (s = 1,
# precise redraws all noise) and the last (s' = 0, std clamped to 1e-6) so every row
# regime is exercised: a batch cycles through them.
SCHEDULE = torch.tensor(
    [1.0, 0.992315, 0.953245, 0.847571, 0.693755, 0.430239, 0.263454, 0.0], dtype=torch.float64
)

FLASH_FACTOR = 2.0
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float64: 2.0**-52}


def step_rows(kind: str, batch: int, first_step: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigma, next_sigma, std) float32 (B,) tensors cycling through SCHEDULE's steps."""
    std_all = noise_std(SCHEDULE, kind, DEFAULT_ETA[kind])
    n = SCHEDULE.numel() - 1
    idx = torch.tensor([(first_step + b) % n for b in range(batch)])
    sigma = SCHEDULE[idx].to(torch.float32)
    next_sigma = SCHEDULE[idx + 1].to(torch.float32)
    std = std_all[idx].to(torch.float32)
    if kind == "ode":
        std = torch.zeros_like(std)
    return sigma, next_sigma, std


def latents(shape, dtype: torch.dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=torch.float32)).to(dtype)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous layout (every other column of a wider buffer)."""
    wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    wide[..., 1::2] = float("nan")  # poison: reading the gaps would show
    out = wide[..., ::2]
    assert not out.is_contiguous()
    return out


def rows_f64(*ts):
    return tuple(t.to(torch.float64) for t in ts)


def max_err(out: torch.Tensor, truth: torch.Tensor) -> float:
    return (out.to(torch.float64) - truth.to(torch.float64)).abs().max().item()


def assert_flash(name: str, out, eager, truth, out_dtype=torch.float32, factor: float = FLASH_FACTOR, floor=None) -> None:
    """Elementwise |out - truth| <= factor * max|eager - truth| + floor + one rounding of out_dtype.

    ``floor`` (broadcast to out) is the problem's own float32 conditioning: a few relative
    roundings of each input propagated to the output (see ``input_condition``). Without it
    a lucky eager run on a handful of elements (errors cancelling) would set an
    unreachable bar; with it the bar is what any float32 evaluation order must allow.
    """
    assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    t64 = truth.to(torch.float64)
    err = (out.to(torch.float64) - t64).abs()
    err_eager = max_err(eager, truth)
    allowed = factor * err_eager + EPS[out_dtype] * t64.abs()
    if floor is not None:
        allowed = allowed + torch.as_tensor(floor, dtype=torch.float64)
    allowed = torch.broadcast_to(allowed, err.shape)
    bad = ~(err <= allowed)
    if bad.any():
        where = (err - allowed).flatten().argmax().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {err.numel()} values off; worst at flat index {where}: got "
            f"{out.flatten()[where].item():.9g}, truth {t64.flatten()[where].item():.9g}, error "
            f"{err.flatten()[where].item():.3e} > allowed {allowed.flatten()[where].item():.3e} "
            f"({factor} x eager max error {err_eager:.3e} + floor + one {out_dtype} rounding)"
        )


def input_condition(f_of, x, v, roundings: float = 4.0) -> torch.Tensor:
    """Per-row float32 error floor of a per-row output f(x, v): sum |df/dx| |x| + |df/dv| |v|.

    That is f's first-order change when every element of x and v moves by one relative
    float32 rounding, times ``roundings`` (the mean takes a few: two products, a sum and the
    rounded per-row coefficients). Computed by float64 autograd; rows are independent, so
    the gradient of the summed output separates them.
    """
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    v64 = v.detach().to(torch.float64).requires_grad_(True)
    f = f_of(x64, v64)
    if not f.requires_grad:  # a constant (ode's log-prob): no conditioning to speak of
        return roundings * EPS[torch.float32] * f.detach().abs()
    gx, gv = torch.autograd.grad(f.sum(), (x64, v64), allow_unused=True)
    gx = torch.zeros_like(x64) if gx is None else gx
    gv = torch.zeros_like(v64) if gv is None else gv
    per_elem = (gx * x64).abs() + (gv * v64).abs()
    return roundings * EPS[torch.float32] * (per_elem.reshape(x.shape[0], -1).sum(1) + f.detach().abs())


def mean_condition(x, v, sigma, next_sigma, std, kind, roundings: float = 4.0) -> torch.Tensor:
    """Elementwise float32 error floor of the mean: roundings x eps x (|cx x| + |cv v|)."""
    from precise_fast.sde import mean_coefficients

    c_x, c_v = mean_coefficients(sigma.to(torch.float64), next_sigma.to(torch.float64), std.to(torch.float64), kind)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return roundings * EPS[torch.float32] * (
        (c_x.view(shape) * x.to(torch.float64)).abs() + (c_v.view(shape) * v.to(torch.float64)).abs()
    )


def assert_within_one_ulp(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    """Elementwise |out - ref| <= 1 ulp of out's dtype (a rounding boundary may fall either way)."""
    assert out.dtype == ref.dtype, f"{name}: dtype {out.dtype} != {ref.dtype}"
    a, b = out.to(torch.float64), ref.to(torch.float64)
    mag = torch.maximum(a.abs(), b.abs())
    # ulp at |value|: eps * 2**floor(log2 |value|), with the subnormal floor of the type.
    tiny = torch.finfo(out.dtype).tiny
    ulp = EPS[out.dtype] * torch.exp2(torch.floor(torch.log2(mag.clamp_min(tiny))))
    bad = (a - b).abs() > ulp * 1.0001
    if bad.any():
        i = bad.flatten().nonzero()[0].item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} elements differ by more than 1 ulp; first at flat index {i}: "
            f"{a.flatten()[i].item():.9g} vs {b.flatten()[i].item():.9g}"
        )


def reference_sample(x, v, sigma, next_sigma, std, kind, noise):
    """Eager float32 reference of sample mode (prev, log_prob, mean)."""
    out = reference_step(x, v, sigma, next_sigma, std, kind=kind, noise=noise)
    return out.prev_sample, out.log_prob, out.mean


def reference_score64(x, v, prev, sigma, next_sigma, std, kind, old_mean=None):
    """float64 truth of score mode: (log_prob, mean, guard_bias or None)."""
    x64, v64, p64 = rows_f64(x, v, prev)
    s64, n64, d64 = rows_f64(sigma, next_sigma, std)
    out = reference_step(x64, v64, s64, n64, d64, kind=kind, prev_sample=p64)
    bias = None
    if old_mean is not None:
        bias = ((out.mean - old_mean.to(torch.float64)) ** 2).reshape(x.shape[0], -1).mean(1)
    return out.log_prob, out.mean, bias


def reference_score32(x, v, prev, sigma, next_sigma, std, kind, old_mean=None):
    """Eager float32 reference of score mode (what the flash rule compares against)."""
    out = reference_step(x, v, sigma, next_sigma, std, kind=kind, prev_sample=prev)
    bias = None
    if old_mean is not None:
        bias = ((out.mean - old_mean.to(torch.float32)) ** 2).reshape(x.shape[0], -1).mean(1)
    return out.log_prob, out.mean, bias


def sample_inputs(kind, shape, dtype, seed):
    x = latents(shape, dtype, seed)
    v = latents(shape, dtype, seed + 1)
    sigma, next_sigma, std = step_rows(kind, shape[0], first_step=seed % 7)
    return x, v, sigma, next_sigma, std


HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
