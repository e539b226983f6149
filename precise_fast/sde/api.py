"""The public sampler step: ``step``, ``sample_step``, ``score_step``, and which backend runs.

Each function checks its arguments with the rules of ``arguments.py`` (clear errors, never a
crash in a kernel), brings the per-row step values to (B,) float32 tensors on the tensors'
device, picks a backend (:func:`resolve_backend`) and calls its op (``ops.op_table``) or the
reference (``reference.reference_sample`` / ``reference_score``). The fused path does no host
synchronisation: values of sigma / std are not checked there (``step`` and the reference
do check them), so a CUDA graph can capture it.

One fast path: on a C++ backend the score calls run the op first (:func:`_native_score`),
the rules only when it refuses. One memo: ``step``'s checked step values
(``arguments.check_step_values``), which that path reads too.
"""

from __future__ import annotations

import os
import warnings

import torch

from .arguments import (
    check_fused_dtypes,
    check_grid_rows,
    check_latent_pair,
    check_latents,
    check_sample_out,
    check_seeds,
    check_step_values,
    int_rows,
    per_row,
    remembered_tensor_rows,
)
from .kinds import FAMILY, FUSED_DTYPES, STOCHASTIC
from .ops import NATIVE_SCORE_OP, native_available, native_cuda_available, native_error, op_table
from .reference import StepOutput, reference_sample, reference_score, reference_step

BACKENDS = ("auto", "reference", "triton", "cpu", "cuda")


def step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    next_sigma,
    std,
    *,
    kind: str,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    seeds: torch.Tensor | None = None,
    step_index=0,
) -> StepOutput:
    """One sampler step ``sigma -> next_sigma``; see :func:`reference_step` for the math.

    Returns ``StepOutput(prev_sample, log_prob, mean)``: with ``prev_sample`` given it only
    scores it (no noise drawn). ``log_prob`` is per row, the mean over non-batch elements;
    the math is float32 for every input dtype, on every backend. The noise of sample mode
    is, in this order: ``noise`` if given; else the Philox stream of ``seeds`` at
    ``step_index`` (:func:`philox_normal`, identical on every backend); else ``torch.randn``
    with ``generator`` (the global one when None).

    Unlike :func:`sample_step` / :func:`score_step`, ``step`` checks the step values
    (sigma in (0, 1], next_sigma in [0, sigma), std > 0); a (B,) tensor is checked once
    per version, so passing a schedule's rows again costs no synchronisation.
    """
    if prev_sample is not None and noise is None and seeds is None:
        fast = _native_score(x, v, prev_sample, sigma, next_sigma, std, kind, None, True, backend, True)
        if fast is not None:
            # tuple.__new__ is what StepOutput(...) runs, without the Python frame of the named
            # tuple's generated __new__ (2.5 us of this path's ~9 us right after a full-size pass).
            return tuple.__new__(StepOutput, (prev_sample, fast[0], fast[1]))
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    check_latents(x, v, kind)
    if noise is not None and seeds is not None:
        raise ValueError("pass seeds= or noise=, not both")
    chosen = resolve_backend(backend, x)
    sigma, next_sigma, std = check_step_values(sigma, next_sigma, std, kind, x.shape[0], x.device)
    if chosen == "reference" and seeds is None:
        # The original behaviour (randn draws from `generator`), in float32 math.
        return reference_step(
            x, v, sigma, next_sigma, std, kind=kind, noise=noise, prev_sample=prev_sample, generator=generator,
            math_dtype=torch.float32,
        )
    if prev_sample is not None:
        log_prob, mean, _ = _score_rows(x, v, prev_sample, *_contiguous((sigma, next_sigma, std)), kind=kind,
                                        old_mean=None, return_mean=True, backend=chosen)
        return StepOutput(prev_sample, log_prob, mean)
    if kind in STOCHASTIC and noise is None and seeds is None:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device)
    prev, log_prob, mean = sample_step(
        x, v, sigma, next_sigma, std, kind=kind, seeds=seeds, step_index=step_index, noise=noise,
        return_mean=True, backend=chosen,
    )
    return StepOutput(prev, log_prob, mean)


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
        return reference_sample(x, v, s, s_next, sd, kind=kind, seeds=seeds_t, step_index=steps_t, noise=noise,
                                return_mean=return_mean, out=out)

    check_fused_dtypes(chosen, x=x, v=v)
    check_grid_rows(chosen, batch)
    if kind not in STOCHASTIC:  # ode: nothing is drawn; the kernels ignore seeds and noise
        seeds_t, noise = None, None
    if noise is not None:
        # The kernels read float32, bfloat16 or float16 noise as it is; float64 is rounded once here.
        noise = (noise.to(torch.float32) if noise.dtype not in FUSED_DTYPES else noise).contiguous()
    # The drawn sample is data, not a function of the policy: sample mode has no autograd.
    x, v = x.detach().contiguous(), v.detach().contiguous()
    sample_op, sample_out_op, _ = op_table(chosen)
    if out is not None:
        sample_out_op(x, v, s, s_next, sd, seeds_t, steps_t, noise, FAMILY[kind], *out)
        return out[0], out[1], out[2]
    prev, log_prob, mean = sample_op(x, v, s, s_next, sd, seeds_t, steps_t, noise, FAMILY[kind], bool(return_mean))
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
    fast = _native_score(x, v, prev_sample, sigma, next_sigma, std, kind, old_mean, bool(return_mean), backend, False)
    if fast is not None:
        log_prob, mean, bias = fast
        return log_prob, (mean if return_mean else None), (bias if old_mean is not None else None)
    check_latents(x, v, kind)
    s, s_next, sd = _row_values(x, sigma, next_sigma, std)
    return _score_rows(x, v, prev_sample, s, s_next, sd, kind=kind, old_mean=old_mean, return_mean=return_mean,
                       backend=resolve_backend(backend, x))


# ----------------------------------------------------------------------------- the fast path


def _native_score(x, v, prev_sample, sigma, next_sigma, std, kind, old_mean, return_mean, backend, check_values):
    """The score calls on a C++ backend, straight through its op: the op's ``(log_prob, mean,
    guard_bias)``, or None where the full path must run (another backend, step values that
    are not tensors, or any error, which the full path then words).

    The C++ ops check every argument themselves (``csrc/fused_step_args.h``: they are public,
    as ``torch.ops.precise_fast.*``) and reject whatever the rules of ``arguments.py`` reject
    (``tests/sde/test_native_first.py`` holds them to it), so those rules need not run first.
    Run first, they were most of the public API's cost over the op: 11 small checks that take
    ~6 us in a loop took ~40 us right after a 16 x 131072 pass had streamed 32 MiB through the
    caches (2-core AMD EPYC, one thread). ``check_values`` (``step``'s promise) checks sigma /
    next_sigma / std once per tensor version, through the memo. torch.compile traces this
    path like any other: the op lands in the graph
    (``tests/kernels/test_op_registration.py::test_torch_compile_fullgraph``)."""
    try:
        if not (isinstance(sigma, torch.Tensor) and isinstance(next_sigma, torch.Tensor) and isinstance(std, torch.Tensor)):
            return None
        family = FAMILY[kind]  # an unknown kind: KeyError, the full path words it
        if native_backend(backend, x) is None:
            return None
        if check_values:
            rows = remembered_tensor_rows(sigma, next_sigma, std, kind)
            if rows is None:
                rows = check_step_values(sigma, next_sigma, std, kind, x.shape[0], x.device)
            sigma, next_sigma, std = rows
        return NATIVE_SCORE_OP(x, v, prev_sample, sigma, next_sigma, std, old_mean, family, return_mean)
    except Exception:  # noqa: BLE001 - the full path words it, after the checks it makes first
        return None


# ----------------------------------------------------------------------------- the full path


def _contiguous(rows):
    """The (B,) step rows as the kernels read them (a 0-d value arrives as an expanded view)."""
    return tuple(r if r.is_contiguous() else r.contiguous() for r in rows)


def _row_values(x: torch.Tensor, sigma, next_sigma, std):
    batch, device = x.shape[0], x.device
    return _contiguous(tuple(per_row(value, name, batch, device, torch.float32)
                             for value, name in ((sigma, "sigma"), (next_sigma, "next_sigma"), (std, "std"))))


def _score_rows(x, v, prev_sample, s, s_next, sd, *, kind: str, old_mean, return_mean: bool, backend: str):
    """:func:`score_step` after the checks its callers share: ``x`` / ``v`` / ``kind`` checked
    (:func:`check_latents`), ``s``, ``s_next``, ``sd`` contiguous (B,) float32 rows on x's device and
    ``backend`` a concrete one (:func:`resolve_backend`)."""
    check_latent_pair(x, prev_sample, "prev_sample")
    if old_mean is not None:
        check_latent_pair(x, old_mean, "old_mean")
    if backend == "reference":
        return reference_score(x, v, prev_sample, s, s_next, sd, kind=kind, old_mean=old_mean, return_mean=return_mean)
    check_fused_dtypes(backend, x=x, v=v, prev_sample=prev_sample, old_mean=old_mean)
    check_grid_rows(backend, x.shape[0])
    _, _, score_op = op_table(backend)
    log_prob, mean, bias = score_op(
        x.contiguous(), v.contiguous(), prev_sample.contiguous(), s, s_next, sd,
        None if old_mean is None else old_mean.contiguous(), FAMILY[kind], bool(return_mean),
    )
    return log_prob, (mean if return_mean else None), (bias if old_mean is not None else None)


# ----------------------------------------------------------------------------- backend choice

_warned_fallback: set[str] = set()


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_triton: tuple[bool, str] | None = None  # triton_available()'s answer, once asked


def triton_available() -> tuple[bool, str]:
    """Whether triton imports (fixed for the process; asked on every CUDA call of the fast path).
    A module global, not functools.cache: Dynamo warns on every trace through a cache wrapper."""
    global _triton
    if _triton is None:
        try:
            import triton  # noqa: F401

            _triton = (True, "")
        except ImportError as exc:
            _triton = (False, f"triton is not importable ({exc})")
    return _triton


def _warn_fallback(device: str, why: str) -> None:
    if device in _warned_fallback:
        return
    _warned_fallback.add(device)
    warnings.warn(
        f"precise_fast.sde: no fused step kernel for {device} tensors ({why}); falling back to the "
        "slow pure-PyTorch reference. Build the extension with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=4,
    )


def _auto_choice(device_type: str, dtype: torch.dtype) -> tuple[str, str | None]:
    """``backend="auto"``'s choice for tensors of this device type and dtype and, for a
    fallback to the reference that deserves a warning, why (no side effects:
    :func:`resolve_backend` warns)."""
    if dtype == torch.float64:  # the kernels compute in float32 only; fp64 is the spec's precision
        return "reference", None
    if device_type == "cuda":
        if triton_available()[0]:
            return "triton", None
        if native_cuda_available():
            return "cuda", None
        return "reference", "neither triton nor the CUDA extension is available"
    if device_type == "cpu":
        if native_available():
            return "cpu", None
        return "reference", f"precise_fast._C failed to import: {native_error()}"
    return "reference", "no backend supports this device"


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The concrete backend for ``x`` (``"reference"``, ``"triton"``, ``"cpu"`` or ``"cuda"``).

    ``"auto"``: Triton on CUDA (the csrc CUDA kernel when Triton is missing), the C++ kernel
    on CPU; float64 and devices without a kernel use the reference, the latter with one
    warning per device type. An explicit backend that cannot run raises ``RuntimeError``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    dev = x.device.type
    if backend == "reference":
        return backend
    if backend == "auto":
        chosen, why = _auto_choice(dev, x.dtype)
        if why is not None:
            _warn_fallback(dev, why)
        return chosen
    if x.dtype not in FUSED_DTYPES:
        raise TypeError(
            f"backend={backend!r} supports float32, bfloat16 and float16 inputs, got {x.dtype} "
            "(use backend='reference' for float64)"
        )
    if backend == "cpu":
        if dev != "cpu":
            raise RuntimeError(f"backend='cpu' runs on CPU tensors, but x is on {x.device}")
        if not native_available():
            raise RuntimeError(f"backend='cpu' needs the C++ extension precise_fast._C, which failed to import: {native_error()}")
        return backend
    if backend == "cuda":
        if dev != "cuda":
            raise RuntimeError(f"backend='cuda' runs on CUDA tensors, but x is on {x.device}")
        if not native_cuda_available():
            raise RuntimeError(
                "backend='cuda' needs precise_fast._C built with its CUDA kernels "
                "(PRECISE_FAST_BUILD_CUDA=1 pip install --no-build-isolation -e .)"
            )
        return backend
    # triton
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(f"backend='triton' is unavailable: {why}")
    if dev != "cuda" and not (dev == "cpu" and triton_interpreting()):
        raise RuntimeError(
            f"backend='triton' runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), but x is on {x.device}"
        )
    return backend


def native_backend(backend: str, x: torch.Tensor) -> str | None:
    """The C++ backend (``"cpu"``, ``"cuda"``) that ``resolve_backend(backend, x)`` picks for x's
    device, else None (a Python backend, or one that cannot run: the caller's full path says
    why). Decided as for float32 x: a dtype the kernels lack (float64, which "auto" gives the
    reference) is the op's to refuse, and the caller's full path then runs. Reads
    ``x.is_cpu`` / ``x.is_cuda``, not ``x.device``: this runs on every call, and a device
    object is built per access."""
    if x.is_cpu:
        return "cpu" if backend in ("auto", "cpu") and native_available() else None
    if x.is_cuda and (backend == "cuda" or (backend == "auto" and not triton_available()[0])):
        return "cuda" if native_cuda_available() else None
    return None
