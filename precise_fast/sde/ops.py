"""Registration of the fused sampler-step custom ops: the extension, fake kernels, backend table.

The ops share one schema family (defined once, in ``csrc/registration.cpp``; the Triton
ones take the same arguments under a ``triton_`` name, ``kernels/fused_step.py``):

    sample_step(x, v, sigma, next_sigma, std, seeds?, step_index?, noise?, family, return_mean)
        -> (prev_sample [x.dtype], log_prob [B] f32, mean [x.shape] f32 or [0])
    sample_step_out(x, v, sigma, next_sigma, std, seeds?, step_index?, noise?, family,
                    prev_sample!, log_prob!, mean!?) -> ()      (the same, written in place)
    score_step(x, v, prev_sample, sigma, next_sigma, std, old_mean?, family, return_mean)
        -> (log_prob [B] f32, mean [x.shape] f32 or [0], guard_bias [B] f32 or [0])
    score_step_backward(grad_log_prob, grad_mean?, grad_guard_bias?, x, v, prev_sample,
                        sigma, next_sigma, std, old_mean?, family, need_grad_x, need_grad_old_mean)
        -> (grad_v [x.shape] v.dtype, grad_x [x.shape] x.dtype or [0], grad_old_mean or [0])

``family`` is an integer of the kind table (``kinds.FAMILY``): no backend spells a kind name.

Outputs that were not asked for are empty ``(0,)`` tensors (custom ops return tensors, not
None). ``sigma``, ``next_sigma``, ``std`` are (B,) float32 and ``seeds``, ``step_index`` (B,)
int64 on the tensors' device, so nothing is baked in per call and a CUDA graph can advance
the step by writing into ``step_index``.

The C++ ops carry CPU (and, when built with CUDA, CUDA) kernels and score_step's autograd
(``csrc/score_autograd.cpp``); this module gives them fake implementations so they trace
under ``torch.compile(fullgraph=True)``. The Triton ops register their own (the Triton file
holds kernel, launcher and autograd of the op together). Which backend runs is the public
functions' rule (``api.resolve_backend``); :func:`op_table` says which ops a backend is.
"""

from __future__ import annotations

import torch

OP_NAMESPACE = "precise_fast"

_native_error: str | None = None
try:  # The extension registers the schema and the CPU/CUDA kernels on import.
    from precise_fast import _C  # noqa: F401
except ImportError as exc:  # built with PRECISE_FAST_SKIP_EXT=1, or not built at all
    _native_error = str(exc)


def native_available() -> bool:
    """Whether ``precise_fast._C`` (the C++ ops) is loaded."""
    return _native_error is None


# Fixed once the extension is loaded.
_NATIVE_CUDA = _native_error is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    f"{OP_NAMESPACE}::sample_step", "CUDA"
)


def native_cuda_available() -> bool:
    """Whether the C++ ops were built with their CUDA kernels."""
    return _NATIVE_CUDA


def native_error() -> str | None:
    return _native_error


# ----------------------------------------------------------------------------- fake kernels
# Shared by the C++ and Triton ops: shapes and dtypes, so FakeTensor / meta tracing
# (torch.compile, opcheck) never runs a kernel. They also refuse tensors on another device
# than x: the dispatcher sends a call with any meta tensor to these kernels, even one whose
# x is a CPU tensor, and the public calls run the op before their own rules
# (api._native_score), so the op must refuse what a kernel would.


def _same_device(x, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


def sample_step_fake(x, v, sigma, next_sigma, std, seeds, step_index, noise, family, return_mean):
    _same_device(x, v=v, sigma=sigma, next_sigma=next_sigma, std=std, seeds=seeds, step_index=step_index, noise=noise)
    prev = torch.empty_like(x, memory_format=torch.contiguous_format)
    log_prob = x.new_empty((x.shape[0],), dtype=torch.float32)
    mean = x.new_empty(x.shape if return_mean else (0,), dtype=torch.float32)
    return prev, log_prob, mean


def sample_step_out_fake(x, v, sigma, next_sigma, std, seeds, step_index, noise, family, prev_sample, log_prob, mean):
    return None


def score_step_fake(x, v, prev_sample, sigma, next_sigma, std, old_mean, family, return_mean):
    _same_device(x, v=v, prev_sample=prev_sample, sigma=sigma, next_sigma=next_sigma, std=std, old_mean=old_mean)
    batch = x.shape[0]
    log_prob = x.new_empty((batch,), dtype=torch.float32)
    mean = x.new_empty(x.shape if return_mean else (0,), dtype=torch.float32)
    bias = x.new_empty((batch,) if old_mean is not None else (0,), dtype=torch.float32)
    return log_prob, mean, bias


def score_step_backward_fake(
    grad_log_prob, grad_mean, grad_guard_bias, x, v, prev_sample, sigma, next_sigma, std, old_mean,
    family, need_grad_x, need_grad_old_mean,
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


def _register_native() -> None:
    torch.library.register_fake(f"{OP_NAMESPACE}::sample_step")(sample_step_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::sample_step_out")(sample_step_out_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::score_step")(score_step_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::score_step_backward")(score_step_backward_fake)
    torch.library.register_fake(f"{OP_NAMESPACE}::philox_normal")(philox_normal_fake)
    # score_step's autograd is C++ (csrc/score_autograd.cpp, the same rules as the Triton
    # op's in kernels/fused_step.py): a Python autograd kernel would run on every call.


if native_available():
    _register_native()

# The C++ score op itself, looked up once: `torch.ops.<ns>.<op>.default` is three attribute
# lookups through torch's op registry per call otherwise.
NATIVE_SCORE_OP = getattr(torch.ops, OP_NAMESPACE).score_step.default if native_available() else None


# ----------------------------------------------------------------------------- backend table


def native_ops():
    """The C++ ops' namespace (``torch.ops.precise_fast``)."""
    return getattr(torch.ops, OP_NAMESPACE)


def op_table(backend: str):
    """``(sample_step, sample_step_out, score_step)`` ops of a concrete fused backend."""
    if backend in ("cpu", "cuda"):
        ops = native_ops()
        return ops.sample_step.default, ops.sample_step_out.default, ops.score_step.default
    if backend == "triton":
        # These kernels import triton, an optional dependency (api.triton_available; a torch
        # without it runs the C++ and reference backends): loaded only for the triton backend.
        from precise_fast.kernels import fused_step

        return fused_step.triton_sample_step, fused_step.triton_sample_step_out, fused_step.triton_score_step
    raise ValueError(f"no fused ops for backend {backend!r}")
