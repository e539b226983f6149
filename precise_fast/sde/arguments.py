"""The argument rules of every sampler-step entry point, written once.

``reference_step``, ``step``, ``sample_step`` and ``score_step`` call these, so a bad
argument is explained here, in one wording, whichever backend runs. The kernels' launchers
assert the invariants these rules establish (``kernels/fused_step.py``); the C++ ops check
their arguments fully (``csrc/fused_step_args.h``: they are public as
``torch.ops.precise_fast.*``), and on a C++ backend the public score calls let them refuse a
call first and only then run these rules to word it (``api._native_score``): the one place
where a rule is enforced twice, held to refusing at least what these rules refuse by
``tests/sde/test_native_first.py``. The step values' checks keep the sampler op's one memo
(below), which that fast path reads too.
"""

from __future__ import annotations

import weakref

import torch

from .kinds import FUSED_DTYPES, MAX_GRID_ROWS, STOCHASTIC, check_kind


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
# (tensor, version) or number, with the conversion to (B,) rows: a schedule's rows passed
# again unchanged are neither checked nor converted again. An entry keeps the converted row
# of a number, a 0-d tensor or another dtype, and only a weak reference to a caller's tensor
# (never the tensor), which also tells a new tensor that reuses a dead one's id apart.
# Keyed by (kind, dtype, identity of each value), what costs least to read: right after a
# full-size pass the lookups themselves are what a step call pays for (bench/README.md,
# "Public API cost"). The rows' batch and device are checked on a hit instead.
_CHECKED_ROWS: dict[tuple, tuple] = {}


def value_identity(value):
    """A step value's memo key: a tensor's id and version (an in-place write changes it), or a
    number with its type (True == 1 as a dict key, but a bool is not a step value)."""
    if isinstance(value, torch.Tensor):
        return (id(value), value._version)
    return (type(value), value)


def _values_ok(sigma: torch.Tensor, next_sigma: torch.Tensor, std: torch.Tensor, stochastic: bool) -> str | None:
    if not torch.isfinite(sigma).all() or ((sigma <= 0) | (sigma > 1)).any():
        return "sigma must lie in (0, 1]"
    if not torch.isfinite(next_sigma).all() or (next_sigma < 0).any() or (next_sigma >= sigma).any():
        return "next_sigma must lie in [0, sigma): a step goes from sigma down to next_sigma"
    if stochastic and (not torch.isfinite(std).all() or (std <= 0).any()):
        return "std must be finite and > 0 for this kind (noise_std clamps it to >= 1e-6)"
    return None


def _memo_entry(original, row):
    """What an entry keeps of one value: (weak reference to the caller's tensor, or None for a
    number; the converted row, or None when the tensor is its own row)."""
    if not isinstance(original, torch.Tensor):
        return None, row
    return weakref.ref(original), (None if row is original else row.detach())


def memo_entry(originals, rows):
    """A memo entry for the checked ``rows`` of ``originals`` (sigma, next_sigma, std), or None
    when they must be converted per call: a row converted from a tensor that requires grad
    carries its graph (a corner of the reference backend)."""
    if any(isinstance(o, torch.Tensor) and o.requires_grad and r is not o for o, r in zip(originals, rows)):
        return None
    return tuple(_memo_entry(o, r) for o, r in zip(originals, rows))


def remembered_rows(entry, sigma, next_sigma, std):
    """The rows of a :func:`memo_entry` when its tensors are these very tensors, else None.
    Straight-line on purpose: it runs on every step call, right after a full-size pass has
    pushed the interpreter's working set out of the caches."""
    (ref_s, row_s), (ref_n, row_n), (ref_d, row_d) = entry
    if (ref_s is None or ref_s() is sigma) and (ref_n is None or ref_n() is next_sigma) and (
        ref_d is None or ref_d() is std
    ):
        return (sigma if row_s is None else row_s, next_sigma if row_n is None else row_n,
                std if row_d is None else row_d)
    return None


def remembered_tensor_rows(sigma: torch.Tensor, next_sigma: torch.Tensor, std: torch.Tensor, kind: str):
    """The float32 rows :func:`check_step_values` passed for these three tensors, or None; the
    rows' batch and device are not compared with any x (the C++ op the fast path hands them to
    refuses rows that do not fit x, and the full path then checks them afresh)."""
    entry = _CHECKED_ROWS.get(
        (kind, torch.float32, id(sigma), sigma._version, id(next_sigma), next_sigma._version, id(std), std._version))
    return None if entry is None else remembered_rows(entry, sigma, next_sigma, std)


def _remember(key, entry, limit: int = 256) -> None:
    """Store an entry (not None), dropping the oldest one beyond ``limit``."""
    if entry is None:
        return
    if len(_CHECKED_ROWS) >= limit:
        _CHECKED_ROWS.pop(next(iter(_CHECKED_ROWS)))
    _CHECKED_ROWS[key] = entry


def check_step_values(sigma, next_sigma, std, kind: str, batch: int, device: torch.device, dtype=torch.float32):
    """The checked (B,) rows ``(sigma, next_sigma, std)`` in ``dtype``; ValueError on bad values."""
    key = (kind, dtype) + value_identity(sigma) + value_identity(next_sigma) + value_identity(std)
    entry = _CHECKED_ROWS.get(key)
    if entry is not None:
        rows = remembered_rows(entry, sigma, next_sigma, std)
        if rows is not None and rows[0].shape[0] == batch and rows[0].device == device:
            return rows
    rows = tuple(
        per_row(val, name, batch, device, dtype)
        for val, name in ((sigma, "sigma"), (next_sigma, "next_sigma"), (std, "std"))
    )
    problem = _values_ok(*rows, kind in STOCHASTIC)
    if problem is not None:
        if problem.startswith("std"):
            problem = problem.replace("this kind", f"kind={kind!r}")
        raise ValueError(problem)
    _remember(key, memo_entry((sigma, next_sigma, std), rows))
    return rows
