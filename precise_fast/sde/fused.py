"""``sample_step`` and ``score_step``: the public fused sampler step, every backend.

Both check their arguments (clear errors, never a crash in a kernel), bring the per-row
step values to (B,) float32 tensors on the tensors' device, and call the backend's custom
op (``ops.py``) or the reference (``reference.py`` with the Philox stream of ``philox.py``).
The fused path does no host synchronisation: values of sigma / std are not checked there
(the reference does check them), so a CUDA graph can capture it.
"""

from __future__ import annotations

import torch

from .arguments import (
    FUSED_DTYPES,
    check_fused_dtypes,
    check_grid_rows,
    check_latent_pair,
    check_latents,
    check_sample_out,
    check_seeds,
    int_rows,
    per_row,
)
from .kinds import STOCHASTIC
from .ops import NATIVE_SCORE_OP, native_backend, op_table, resolve_backend, sample_out_op
from .philox import philox_normal
from .reference import reference_step


def _row_values(x: torch.Tensor, sigma, next_sigma, std):
    batch, device = x.shape[0], x.device
    rows = (per_row(sigma, "sigma", batch, device, torch.float32), per_row(next_sigma, "next_sigma", batch, device, torch.float32),
            per_row(std, "std", batch, device, torch.float32))
    return contiguous_rows(rows)


def contiguous_rows(rows):
    """The (B,) step rows as the kernels read them (a 0-d value arrives as an expanded view)."""
    return tuple(r if r.is_contiguous() else r.contiguous() for r in rows)


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
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
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
    The math is float32 for every input dtype (float64 inputs: prev_sample float64 holding
    the float32 result). Not differentiable (the drawn sample is data).

    ``out=(prev_sample, log_prob, mean)``: write the results into these buffers instead of
    new tensors and return them (e.g. ``(latents[i + 1], log_probs[i], means[i])`` of
    step-major rollout buffers, so nothing is copied): ``prev_sample`` contiguous of x's
    shape and dtype, ``log_prob`` contiguous (B,) float32, ``mean`` contiguous float32 of
    x's shape, or None for no mean (then ``return_mean`` must be False).
    """
    check_latents(x, v, kind)
    batch, device = x.shape[0], x.device
    if seeds is not None and noise is not None:
        raise ValueError("pass seeds= or noise=, not both")
    if kind in STOCHASTIC and seeds is None and noise is None:
        raise ValueError(f"kind={kind!r} needs exactly one of seeds= (Philox stream) or noise= (explicit normals)")
    if noise is not None:
        check_latent_pair(x, noise, "noise")
    seeds_t = None if seeds is None else check_seeds(seeds, batch, device)
    steps_t = int_rows(step_index, "step_index", batch, device)
    s, s_next, sd = _row_values(x, sigma, next_sigma, std)
    if out is not None:
        out = check_sample_out(x, out, return_mean)
        return_mean = out[2] is not None

    chosen = resolve_backend(backend, x)
    if chosen == "reference":
        if kind in STOCHASTIC and noise is None:
            noise = philox_normal(seeds_t, steps_t, x.shape)
        res = reference_step(x, v, s, s_next, sd, kind=kind, noise=noise, math_dtype=torch.float32)
        prev, log_prob, mean = res.prev_sample, res.log_prob.detach(), res.mean.detach()
        if out is not None:
            out[0].copy_(prev)
            out[1].copy_(log_prob)
            if return_mean:
                out[2].copy_(mean)
            return out[0], out[1], out[2]
        return prev, log_prob, (mean if return_mean else None)

    check_fused_dtypes(chosen, x=x, v=v)
    check_grid_rows(chosen, batch)
    if kind not in STOCHASTIC:  # ode: nothing is drawn; the kernels ignore seeds and noise
        seeds_t, noise = None, None
    if noise is not None:
        # The kernels read float32, bfloat16 or float16 noise as it is; float64 is rounded once here.
        noise = (noise.to(torch.float32) if noise.dtype not in FUSED_DTYPES else noise).contiguous()
    # The drawn sample is data, not a function of the policy: sample mode has no autograd.
    x, v = x.detach().contiguous(), v.detach().contiguous()
    if out is not None:
        sample_out_op(chosen)(x, v, s, s_next, sd, seeds_t, steps_t, noise, kind, *out)
        return out[0], out[1], out[2]
    sample_op, _ = op_table(chosen)
    prev, log_prob, mean = sample_op(x, v, s, s_next, sd, seeds_t, steps_t, noise, kind, bool(return_mean))
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
    ``v``, ``x`` (and ``old_mean``); ``prev_sample`` is data. float32 math and results for
    every input dtype.
    """
    fast = native_score(x, v, prev_sample, sigma, next_sigma, std, kind, old_mean, return_mean, backend)
    if fast is not None:
        return fast
    check_latents(x, v, kind)
    s, s_next, sd = _row_values(x, sigma, next_sigma, std)
    return score_rows(x, v, prev_sample, s, s_next, sd, kind=kind, old_mean=old_mean, return_mean=return_mean,
                      backend=resolve_backend(backend, x))


def native_score(x, v, prev_sample, sigma, next_sigma, std, kind, old_mean, return_mean, backend):
    """:func:`score_step` on a C++ backend, straight through its op; None where the full path
    must run (another backend, step values that are not tensors, or an error).

    The C++ ops check every argument themselves (``csrc/fused_step_args.h``: they are public,
    as ``torch.ops.precise_fast.*``) and reject whatever the rules of ``arguments.py`` reject
    (``tests/sde/test_native_first.py`` holds them to it), so those rules need not run first.
    Run first, they were most of the public API's cost over the op: 11 small checks that take
    ~6 us in a loop took ~40 us right after a 16 x 131072 pass had streamed 32 MiB through the
    caches (2-core AMD EPYC, one thread). When the op raises, the full path runs the rules,
    which word the error as for every backend, or, finding nothing wrong, let the op's own
    error through. torch.compile traces this path like any other: the op lands in the graph
    (``tests/kernels/test_op_registration.py::test_torch_compile_fullgraph``)."""
    try:
        if not (isinstance(sigma, torch.Tensor) and isinstance(next_sigma, torch.Tensor) and isinstance(std, torch.Tensor)):
            return None
        if native_backend(backend, x) is None:
            return None
        log_prob, mean, bias = NATIVE_SCORE_OP(
            x, v, prev_sample, sigma, next_sigma, std, old_mean, kind, bool(return_mean))
    except Exception:  # noqa: BLE001 - the full path words it
        return None
    return log_prob, (mean if return_mean else None), (bias if old_mean is not None else None)


def score_rows(x, v, prev_sample, s, s_next, sd, *, kind: str, old_mean=None, return_mean: bool, backend: str):
    """:func:`score_step` after the checks its callers share: ``x`` / ``v`` / ``kind`` checked
    (:func:`check_latents`), ``s``, ``s_next``, ``sd`` contiguous (B,) float32 rows on x's device and
    ``backend`` a concrete one (``resolve_backend``). The public ``step`` has done all that
    itself, so it enters here rather than paying for the same checks twice per call."""
    check_latent_pair(x, prev_sample, "prev_sample")
    if old_mean is not None:
        check_latent_pair(x, old_mean, "old_mean")
    chosen = backend  # already resolved
    if chosen == "reference":
        res = reference_step(x, v, s, s_next, sd, kind=kind, prev_sample=prev_sample, math_dtype=torch.float32)
        bias = None
        if old_mean is not None:
            diff = res.mean - old_mean.to(res.mean.dtype)
            bias = (diff * diff).reshape(x.shape[0], -1).mean(dim=1)
        return res.log_prob, (res.mean if return_mean else None), bias

    check_fused_dtypes(chosen, x=x, v=v, prev_sample=prev_sample, old_mean=old_mean)
    check_grid_rows(chosen, x.shape[0])
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
