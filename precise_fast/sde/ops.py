"""The fused sampler-step custom ops: fake (meta) implementations, autograd, backend choice.

Three ops share one schema family (defined once, in ``csrc/registration.cpp``; the Triton
ones take the same arguments under a ``triton_`` name, ``kernels/fused_step.py``):

    sample_step(x, v, sigma, next_sigma, std, seeds?, step_index?, noise?, kind, return_mean)
        -> (prev_sample [x.dtype], log_prob [B] f32, mean [x.shape] f32 or [0])
    sample_step_out(x, v, sigma, next_sigma, std, seeds?, step_index?, noise?, kind,
                    prev_sample!, log_prob!, mean!?) -> ()      (the same, written in place)
    score_step(x, v, prev_sample, sigma, next_sigma, std, old_mean?, kind, return_mean)
        -> (log_prob [B] f32, mean [x.shape] f32 or [0], guard_bias [B] f32 or [0])
    score_step_backward(grad_log_prob, grad_mean?, grad_guard_bias?, x, v, prev_sample,
                        sigma, next_sigma, std, old_mean?, kind, need_grad_x, need_grad_old_mean)
        -> (grad_v [x.shape] v.dtype, grad_x [x.shape] x.dtype or [0], grad_old_mean or [0])

Outputs that were not asked for are empty ``(0,)`` tensors (custom ops return tensors, not
None). ``sigma``, ``next_sigma``, ``std`` are (B,) float32 and ``seeds``, ``step_index`` (B,)
int64 on the tensors' device, so nothing is baked in per call and a CUDA graph can advance
the step by writing into ``step_index``.

The C++ ops carry CPU (and, when built with CUDA, CUDA) kernels and score_step's autograd
(``csrc/score_autograd.cpp``); this module gives them fake implementations so they trace
under ``torch.compile(fullgraph=True)``, and the Triton score op its (Python) autograd.
"""

from __future__ import annotations

import os
import warnings

import torch

from .arguments import FUSED_DTYPES

OP_NAMESPACE = "precise_fast"

_native_error: str | None = None
try:  # The extension registers the schema and the CPU/CUDA kernels on import.
    from precise_fast import _C  # noqa: F401
except ImportError as exc:  # built with PRECISE_FAST_SKIP_EXT=1, or not built at all
    _native_error = str(exc)


def native_available() -> bool:
    """Whether ``precise_fast._C`` (the C++ ops) is loaded."""
    return _native_error is None


def native_cuda_available() -> bool:
    """Whether the C++ ops were built with their CUDA kernels."""
    return native_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"{OP_NAMESPACE}::sample_step", "CUDA"
    )


def native_error() -> str | None:
    return _native_error


# ----------------------------------------------------------------------------- fake kernels
# Shared by the C++ and Triton ops: shapes and dtypes, so FakeTensor / meta tracing
# (torch.compile, opcheck) never runs a kernel. They also refuse tensors on another device
# than x: the dispatcher sends a call with any meta tensor to these kernels, even one whose
# x is a CPU tensor, and the public calls run the op before their own rules
# (fused.native_score), so the op must refuse what a kernel would.


def _same_device(x, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def sample_step_fake(x, v, sigma, next_sigma, std, seeds, step_index, noise, kind, return_mean):
    _same_device(x, v=v, sigma=sigma, next_sigma=next_sigma, std=std, seeds=seeds, step_index=step_index, noise=noise)
    prev = torch.empty_like(x, memory_format=torch.contiguous_format)
    log_prob = x.new_empty((x.shape[0],), dtype=torch.float32)
    mean = x.new_empty(x.shape if return_mean else (0,), dtype=torch.float32)
    return prev, log_prob, mean


def sample_step_out_fake(x, v, sigma, next_sigma, std, seeds, step_index, noise, kind, prev_sample, log_prob, mean):
    return None


def score_step_fake(x, v, prev_sample, sigma, next_sigma, std, old_mean, kind, return_mean):
    _same_device(x, v=v, prev_sample=prev_sample, sigma=sigma, next_sigma=next_sigma, std=std, old_mean=old_mean)
    batch = x.shape[0]
    log_prob = x.new_empty((batch,), dtype=torch.float32)
    mean = x.new_empty(x.shape if return_mean else (0,), dtype=torch.float32)
    bias = x.new_empty((batch,) if old_mean is not None else (0,), dtype=torch.float32)
    return log_prob, mean, bias


def score_step_backward_fake(
    grad_log_prob, grad_mean, grad_guard_bias, x, v, prev_sample, sigma, next_sigma, std, old_mean,
    kind, need_grad_x, need_grad_old_mean,
):
    grad_v = torch.empty_like(v, memory_format=torch.contiguous_format)
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format) if need_grad_x else x.new_empty((0,))
    if need_grad_old_mean and old_mean is not None:
        grad_old = torch.empty_like(old_mean, memory_format=torch.contiguous_format)
    else:
        grad_old = x.new_empty((0,), dtype=torch.float32)
    return grad_v, grad_x, grad_old


def philox_normal_fake(seeds, step_index, row_elems):
    return seeds.new_empty((seeds.shape[0], row_elems), dtype=torch.float32)


# ----------------------------------------------------------------------------- autograd
# Only score mode is differentiable: sample mode draws data for the rollout buffer. The
# backward recomputes the mean from (x, v) in the same pass instead of saving it: one
# tensor less to keep per trained step, and the pass is memory-bound anyway. This is the
# Triton score op's autograd (kernels/fused_step.py); the C++ op's is the same rules in C++
# (csrc/score_autograd.cpp), which must not be Python: it runs on every call of the op.


def _score_setup_context(ctx, inputs, output):
    x, v, prev_sample, sigma, next_sigma, std, old_mean, kind, return_mean = inputs
    ctx.save_for_backward(x, v, prev_sample, sigma, next_sigma, std, old_mean)
    ctx.kind = kind
    ctx.return_mean = return_mean


def _make_score_backward(backward_op):
    def backward(ctx, grad_log_prob, grad_mean, grad_guard_bias):
        x, v, prev_sample, sigma, next_sigma, std, old_mean = ctx.saved_tensors
        need_v, need_x = ctx.needs_input_grad[1], ctx.needs_input_grad[0]
        need_old = old_mean is not None and ctx.needs_input_grad[6]
        if not (need_v or need_x or need_old):
            return (None,) * 9
        if grad_log_prob is None:
            grad_log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        # An output that was returned empty has an empty gradient: nothing flows from it.
        if grad_mean is not None and (not ctx.return_mean or grad_mean.numel() == 0):
            grad_mean = None
        if grad_guard_bias is not None and (old_mean is None or grad_guard_bias.numel() == 0):
            grad_guard_bias = None
        grad_v, grad_x, grad_old = backward_op(
            grad_log_prob.to(torch.float32).contiguous(),
            None if grad_mean is None else grad_mean.to(torch.float32).contiguous(),
            None if grad_guard_bias is None else grad_guard_bias.to(torch.float32).contiguous(),
            x, v, prev_sample, sigma, next_sigma, std, old_mean, ctx.kind, need_x, need_old,
        )
        return (
            grad_x if need_x else None,
            grad_v if need_v else None,
            None, None, None, None,
            grad_old if need_old else None,
            None, None,
        )

    return backward


def _register_native() -> None:
    torch.library.register_fake(f"{OP_NAMESPACE}::sample_step")(sample_step_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::sample_step_out")(sample_step_out_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::score_step")(score_step_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::score_step_backward")(score_step_backward_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::philox_normal")(philox_normal_fake)
    # score_step's autograd is C++ (csrc/score_autograd.cpp, the same rules as
    # _make_score_backward): a Python autograd kernel would run on every call.


if native_available():
    _register_native()

# The C++ score op itself, looked up once: `torch.ops.<ns>.<op>.default` is three attribute
# lookups through torch's op registry per call otherwise.
NATIVE_SCORE_OP = getattr(torch.ops, OP_NAMESPACE).score_step.default if native_available() else None


# ----------------------------------------------------------------------------- backend choice

BACKENDS = ("auto", "reference", "triton", "cpu", "cuda")
_warned_fallback: set[str] = set()


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not importable ({exc})"
    return True, ""


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
        return "reference", f"precise_fast._C failed to import: {_native_error}"
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
            raise RuntimeError(f"backend='cpu' needs the C++ extension precise_fast._C, which failed to import: {_native_error}")
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


# (backend, device type) -> the C++ backend resolve_backend picks for float32 tensors there,
# or None. What decides it (which extensions loaded, whether triton imports) is fixed once
# imported; the interpreter switch only matters to backend="triton", never a C++ choice.
_native_choice: dict[tuple, str | None] = {}
_UNSEEN = object()


def native_backend(backend: str, x: torch.Tensor) -> str | None:
    """The C++ backend (``"cpu"``, ``"cuda"``) that ``resolve_backend(backend, x)`` picks for x's
    device, else None (a Python backend, or one that cannot run: the caller's full path says
    why). Decided as for float32 x: a dtype the kernels lack (float64, which "auto" gives the
    reference) is the op's to refuse, and the caller's full path then runs. Keyed by
    ``x.is_cpu`` / ``x.is_cuda``, not ``x.device``: this runs on every call, and a device
    object is built and hashed per access."""
    if _native_error is not None:
        return None
    device_type = "cpu" if x.is_cpu else ("cuda" if x.is_cuda else None)
    if device_type is None:
        return None
    chosen = _native_choice.get((backend, device_type), _UNSEEN)
    if chosen is _UNSEEN:
        try:
            if backend == "auto":
                chosen = _auto_choice(device_type, torch.float32)[0]  # no warning: resolve_backend's to give
            else:  # float32, on x's device: the choice without x's dtype
                chosen = resolve_backend(backend, torch.empty(0, device=x.device))
        except (RuntimeError, TypeError, ValueError):
            return None  # not remembered: the full path raises it
        chosen = chosen if chosen in ("cpu", "cuda") else None
        _native_choice[(backend, device_type)] = chosen
    return chosen


def native_ops():
    """The C++ ops' namespace (``torch.ops.precise_fast``)."""
    return getattr(torch.ops, OP_NAMESPACE)


def op_table(backend: str):
    """``(sample_step, score_step)`` ops of a concrete fused backend."""
    if backend in ("cpu", "cuda"):
        return native_ops().sample_step.default, native_ops().score_step.default
    if backend == "triton":
        from precise_fast.kernels import fused_step

        return fused_step.triton_sample_step, fused_step.triton_score_step
    raise ValueError(f"no fused ops for backend {backend!r}")


def sample_out_op(backend: str):
    """The ``sample_step_out`` op (results written into given buffers) of a fused backend."""
    if backend in ("cpu", "cuda"):
        return native_ops().sample_step_out.default
    if backend == "triton":
        from precise_fast.kernels import fused_step

        return fused_step.triton_sample_step_out
    raise ValueError(f"no fused ops for backend {backend!r}")
