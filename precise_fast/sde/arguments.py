"""The argument rules of every sampler-step entry point, written once.

``reference_step``, ``step``, ``sample_step`` and ``score_step`` call these; the kernels'
launchers (``csrc/fused_step_args.h``, ``kernels/fused_step.py``) only assert the
invariants these rules establish, so a bad argument is explained here, in one wording,
whichever backend runs.
"""

from __future__ import annotations

import weakref

import torch

from .kinds import STOCHASTIC, check_kind

# Element types the fused kernels read and write (their arithmetic is float32).
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The CUDA and Triton kernels put the rows on grid dimension y, which holds at most 65535.
MAX_GRID_ROWS = 65535


def check_latent_pair(x: torch.Tensor, other: torch.Tensor, name: str) -> None:
    """``other`` must be a floating tensor shaped and placed like ``x``; errors name it."""
    if not isinstance(other, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(other).__name__}")
    if other.shape != x.shape:
        raise ValueError(f"{name} has shape {tuple(other.shape)} but x has shape {tuple(x.shape)}")
    if other.device != x.device:
        raise ValueError(f"{name} is on {other.device} but x is on {x.device}")
    if not other.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {other.dtype}")


def check_latents(x, v, kind: str) -> None:
    """``kind`` is a sampler kind; ``x`` a floating (B, ...) tensor with B > 0 rows of > 0
    elements (a mean over zero elements has no value); ``v`` shaped and placed like it."""
    check_kind(kind)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"x must have a non-empty batch dimension and elements, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    check_latent_pair(x, v, "v")


def check_fused_dtypes(backend: str, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in FUSED_DTYPES:
            raise TypeError(
                f"backend={backend!r} supports float32, bfloat16 and float16 tensors, but {name} is {t.dtype}"
            )


def check_grid_rows(backend: str, batch: int) -> None:
    if backend in ("cuda", "triton") and batch > MAX_GRID_ROWS:
        raise ValueError(
            f"backend={backend!r} takes at most {MAX_GRID_ROWS} rows per call (the CUDA grid's y limit), "
            f"got a batch of {batch}: split the batch"
        )


def _batch_rows(value: torch.Tensor, name: str, batch: int, device: torch.device, expected: str) -> torch.Tensor:
    """A 0-d or (B,) tensor on x's device as a (B,) view. ``expected`` words the shape error, a
    template formatted only when raising (this runs on every step call)."""
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but x is on {device}")
    if value.dim() == 0:
        return value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(f"{name} must be {expected.format(batch=batch)} {tuple(value.shape)}")
    return value


def per_row(value, name: str, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A float or a (B,) / 0-d tensor as a (B,) tensor; errors name the argument."""
    if isinstance(value, torch.Tensor):
        value = _batch_rows(value, name, batch, device, "a float or a tensor of shape ({batch},), got shape")
        return value if value.dtype == dtype else value.to(dtype)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((batch,), float(value), dtype=dtype, device=device)
    raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")


def int_rows(value, name: str, batch: int, device: torch.device) -> torch.Tensor:
    """An int or a 0-d / (B,) integer tensor as a contiguous (B,) int64 tensor."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an integer tensor, got bool")
    if isinstance(value, int):
        return torch.full((batch,), value, dtype=torch.int64, device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {value.dtype}")
    value = _batch_rows(value, name, batch, device, "0-d or of shape ({batch},), got")
    return value.to(torch.int64).contiguous()


def check_seeds(seeds, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"seeds must be an int64 tensor of shape ({batch},), got {type(seeds).__name__}")
    if seeds.dim() != 1:
        raise ValueError(f"seeds must have shape ({batch},), got {tuple(seeds.shape)}")
    return int_rows(seeds, "seeds", batch, device)


def check_sample_out(x: torch.Tensor, out, return_mean: bool):
    """The ``out=`` buffers of ``sample_step``: ``(prev_sample, log_prob, mean or None)``."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError("out must be a tuple (prev_sample, log_prob, mean or None)")
    prev, log_prob, mean = out
    batch = x.shape[0]
    for name, t, shape, dtype in (
        ("prev_sample", prev, x.shape, x.dtype),
        ("log_prob", log_prob, (batch,), torch.float32),
        ("mean", mean, x.shape, torch.float32),
    ):
        if t is None and name == "mean":
            if return_mean:
                raise ValueError("return_mean=True needs a mean buffer in out=(prev_sample, log_prob, mean)")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"out {name} must be a tensor, got {type(t).__name__}")
        if t.shape != shape or t.dtype != dtype or t.device != x.device:
            raise ValueError(
                f"out {name} must be {dtype} of shape {tuple(shape)} on {x.device}, "
                f"got {t.dtype} of shape {tuple(t.shape)} on {t.device}"
            )
        if not t.is_contiguous():
            raise ValueError(f"out {name} must be contiguous (a step-major buffer's [step] slice is)")
    return prev, log_prob, mean


# ----------------------------------------------------------------------------- step values
# sigma in (0, 1], next_sigma in [0, sigma), std > 0: value checks, which need the values
# on the host (a synchronisation on CUDA, a handful of small ops on CPU). They run once per
# (tensor, version): a schedule's rows passed again unchanged are not checked again.
_CHECKED_VALUES: dict[tuple, tuple] = {}
_CHECKED_VALUES_MAX = 256


def _identity(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), value._version)
    return ("number", value)


def _values_ok(sigma: torch.Tensor, next_sigma: torch.Tensor, std: torch.Tensor, stochastic: bool) -> str | None:
    if not torch.isfinite(sigma).all() or ((sigma <= 0) | (sigma > 1)).any():
        return "sigma must lie in (0, 1]"
    if not torch.isfinite(next_sigma).all() or (next_sigma < 0).any() or (next_sigma >= sigma).any():
        return "next_sigma must lie in [0, sigma): a step goes from sigma down to next_sigma"
    if stochastic and (not torch.isfinite(std).all() or (std <= 0).any()):
        return "std must be finite and > 0 for this kind (noise_std clamps it to >= 1e-6)"
    return None


def check_step_values(sigma, next_sigma, std, kind: str, batch: int, device: torch.device, dtype=torch.float32):
    """The checked (B,) rows ``(sigma, next_sigma, std)`` in ``dtype``; ValueError on bad values."""
    rows = tuple(
        per_row(val, name, batch, device, dtype)
        for val, name in ((sigma, "sigma"), (next_sigma, "next_sigma"), (std, "std"))
    )
    stochastic = kind in STOCHASTIC
    key = (_identity(sigma), _identity(next_sigma), _identity(std), stochastic, batch)
    seen = _CHECKED_VALUES.get(key)
    originals = (sigma, next_sigma, std)
    if seen is not None and all(ref is None or ref() is obj for ref, obj in zip(seen, originals)):
        return rows
    problem = _values_ok(*rows, stochastic)
    if problem is not None:
        if problem.startswith("std"):
            problem = problem.replace("this kind", f"kind={kind!r}")
        raise ValueError(problem)
    if len(_CHECKED_VALUES) >= _CHECKED_VALUES_MAX:
        _CHECKED_VALUES.pop(next(iter(_CHECKED_VALUES)))
    _CHECKED_VALUES[key] = tuple(weakref.ref(o) if isinstance(o, torch.Tensor) else None for o in originals)
    return rows
