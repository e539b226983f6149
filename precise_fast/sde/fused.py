"""``sample_step`` and ``score_step``: the public fused sampler step, every backend.

Both check their arguments (clear errors, never a crash in a kernel), bring the per-row
step values to (B,) float32 tensors on the tensors' device, and call the backend's custom
op (``ops.py``) or the reference (``reference.py`` with the Philox stream of ``philox.py``).
The fused path does no host synchronisation: values of sigma / std are not checked there
(the reference does check them), so a CUDA graph can capture it.
"""

from __future__ import annotations

import torch

from .kinds import STOCHASTIC, check_kind
from .ops import SUPPORTED_DTYPES, op_table, resolve_backend
from .philox import philox_normal
from .reference import check_latent_pair, per_row, reference_step


def _check_inputs(x, v, kind: str) -> None:
    check_kind(kind)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"x must have a non-empty batch dimension and elements, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    check_latent_pair(x, v, "v")


def _check_fused_dtypes(backend: str, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"backend={backend!r} supports float32, bfloat16 and float16 tensors, but {name} is {t.dtype}"
            )


def _row_values(x: torch.Tensor, sigma, next_sigma, std):
    batch, device = x.shape[0], x.device
    return tuple(
        per_row(value, name, batch, device, torch.float32).contiguous()
        for value, name in ((sigma, "sigma"), (next_sigma, "next_sigma"), (std, "std"))
    )


def _int_rows(value, name: str, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or an integer tensor, got bool")
    if isinstance(value, int):
        return torch.full((batch,), value, dtype=torch.int64, device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor, got {type(value).__name__}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but x is on {device}")
    if value.dim() == 0:
        value = value.expand(batch)
    elif value.shape != (batch,):
        raise ValueError(f"{name} must be 0-d or of shape ({batch},), got {tuple(value.shape)}")
    return value.to(torch.int64).contiguous()


def sample_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    next_sigma,
    std,
    *,
    kind: str,
    seeds: torch.Tensor | None = None,
    step_index=0,
    noise: torch.Tensor | None = None,
    return_mean: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One rollout step ``sigma -> next_sigma``: ``(prev_sample, log_prob, mean or None)``.

    ``prev_sample = mean + std * z`` rounded to ``x.dtype``; ``log_prob`` (B,) float32 is the
    per-row mean Gaussian log density of that ROUNDED sample (re-scoring it with
    :func:`score_step` gives the same value); ``mean`` (float32) only with ``return_mean``.
    ``z`` comes from the Philox stream keyed by ``(seeds[b], step_index, element)``
    (:func:`philox_normal`) or from an explicit ``noise`` tensor: exactly one of the two
    for the stochastic kinds (``ode`` draws nothing and needs neither).
    ``sigma``, ``next_sigma``, ``std``: floats or (B,) tensors; ``step_index``: an int, a
    0-d or (B,) integer tensor (a device tensor lets a CUDA graph advance it).
    Not differentiable (the drawn sample is data).
    """
    _check_inputs(x, v, kind)
    batch, device = x.shape[0], x.device
    if seeds is not None and noise is not None:
        raise ValueError("pass seeds= or noise=, not both")
    if kind in STOCHASTIC and seeds is None and noise is None:
        raise ValueError(f"kind={kind!r} needs exactly one of seeds= (Philox stream) or noise= (explicit normals)")
    if noise is not None:
        check_latent_pair(x, noise, "noise")
    seeds_t = None
    if seeds is not None:
        if not isinstance(seeds, torch.Tensor):
            raise TypeError(f"seeds must be an int64 tensor of shape ({batch},), got {type(seeds).__name__}")
        if seeds.dim() != 1:
            raise ValueError(f"seeds must have shape ({batch},), got {tuple(seeds.shape)}")
        seeds_t = _int_rows(seeds, "seeds", batch, device)
    steps_t = _int_rows(step_index, "step_index", batch, device)
    s, s_next, sd = _row_values(x, sigma, next_sigma, std)

    chosen = resolve_backend(backend, x)
    if chosen == "reference":
        if kind in STOCHASTIC and noise is None:
            noise = philox_normal(seeds_t, steps_t, x.shape)
        out = reference_step(x, v, s, s_next, sd, kind=kind, noise=noise)
        mean = out.mean.detach() if return_mean else None
        return out.prev_sample, out.log_prob.detach(), mean

    _check_fused_dtypes(chosen, x=x, v=v)
    if kind not in STOCHASTIC:  # ode: nothing is drawn; the kernels ignore seeds and noise
        seeds_t, noise = None, None
    if noise is not None:
        # The kernels read float32, bfloat16 or float16 noise as it is; float64 is rounded once here.
        noise = (noise.to(torch.float32) if noise.dtype not in SUPPORTED_DTYPES else noise).contiguous()
    sample_op, _ = op_table(chosen)
    # The drawn sample is data, not a function of the policy: sample mode has no autograd.
    prev, log_prob, mean = sample_op(
        x.detach().contiguous(), v.detach().contiguous(), s, s_next, sd, seeds_t, steps_t, noise, kind, bool(return_mean)
    )
    return prev, log_prob, (mean if return_mean else None)


def score_step(
    x: torch.Tensor,
    v: torch.Tensor,
    prev_sample: torch.Tensor,
    sigma,
    next_sigma,
    std,
    *,
    kind: str,
    old_mean: torch.Tensor | None = None,
    return_mean: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Score a stored step: ``(log_prob (B,), mean or None, guard_bias (B,) or None)``.

    ``log_prob`` is the per-row mean Gaussian log density of ``prev_sample`` under the
    transition from ``(x, v)``; with ``old_mean`` (the old policy's transition mean) also
    the GRPO-Guard bias ``mean((mean - old_mean)**2)`` per row. Differentiable w.r.t.
    ``v``, ``x`` (and ``old_mean``); ``prev_sample`` is data. float32 results.
    """
    _check_inputs(x, v, kind)
    check_latent_pair(x, prev_sample, "prev_sample")
    if old_mean is not None:
        check_latent_pair(x, old_mean, "old_mean")
    s, s_next, sd = _row_values(x, sigma, next_sigma, std)

    chosen = resolve_backend(backend, x)
    if chosen == "reference":
        out = reference_step(x, v, s, s_next, sd, kind=kind, prev_sample=prev_sample)
        bias = None
        if old_mean is not None:
            diff = out.mean - old_mean.to(out.mean.dtype)
            bias = (diff * diff).reshape(x.shape[0], -1).mean(dim=1)
        return out.log_prob, (out.mean if return_mean else None), bias

    _check_fused_dtypes(chosen, x=x, v=v, prev_sample=prev_sample, old_mean=old_mean)
    _, score_op = op_table(chosen)
    log_prob, mean, bias = score_op(
        x.contiguous(),
        v.contiguous(),
        prev_sample.contiguous(),
        s,
        s_next,
        sd,
        None if old_mean is None else old_mean.contiguous(),
        kind,
        bool(return_mean),
    )
    return log_prob, (mean if return_mean else None), (bias if old_mean is not None else None)
