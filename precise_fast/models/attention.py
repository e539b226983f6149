"""Attention backend selection for the FLUX.2 transformer, through diffusers' dispatcher.

A backend is chosen per use. ``use="training"`` (the default: a loaded policy is trained)
only ever returns backends with a backward; ``use="rollout"`` (no-grad sampling) may also
return forward-only ones. diffusers 0.42.1 wraps flash-attn 3 in a custom op with a fake
kernel but no autograd formula, so ``_flash_3`` is forward-only: the first backward through
it raises "no autograd formula was registered".

``auto`` picks, on CUDA with half-precision weights: flash-attn 3 (Hopper, when
``flash_attn_interface`` imports; rollout only), else flash-attn 2 (when ``flash_attn``
imports); everywhere else PyTorch SDPA (diffusers' ``native`` backend, which on CUDA itself
dispatches to a flash / cuDNN kernel). flash-attn has no CPU or fp32 kernels and flash-attn
3 no backward here, so an explicit request that cannot run is an error rather than a silent
fallback. The choice is logged on the ``precise_fast.models`` logger.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger("precise_fast.models")

# Our names -> diffusers' AttentionBackendName values.
BACKENDS = {
    "sdpa": "native",
    "flash2": "flash",
    "flash3": "_flash_3",
}
# Backends whose diffusers wrapper has no backward (see the module docstring).
FORWARD_ONLY = frozenset({"flash3"})
USES = ("training", "rollout")
_ALIASES = {
    "native": "sdpa",
    "torch": "sdpa",
    "flash": "flash2",
    "fa2": "flash2",
    "flash_attn": "flash2",
    "fa3": "flash3",
    "_flash_3": "flash3",
}


class AttentionBackendError(RuntimeError):
    """An attention backend was requested explicitly but cannot run here."""


def _canonical(name: str) -> str:
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key != "auto" and key not in BACKENDS:
        raise ValueError(f"attention_backend={name!r} is not one of auto, sdpa, flash2, flash3")
    return key


def _check_use(use: str) -> str:
    if use not in USES:
        raise ValueError(f"use={use!r} is not one of {', '.join(USES)}")
    return use


def _flash_usable(version: int) -> bool:
    """Whether diffusers' dispatcher can call flash-attn ``version`` (2 or 3) in this process."""
    from diffusers.models import attention_dispatch as dispatch

    return bool(dispatch._CAN_USE_FLASH_ATTN if version == 2 else dispatch._CAN_USE_FLASH_ATTN_3)


def _why_not_flash(version: int, device: torch.device, dtype: torch.dtype, use: str) -> str | None:
    """``None`` when flash-attn ``version`` can run for these weights and this use, else the reason."""
    package = "flash_attn" if version == 2 else "flash_attn_interface (flash-attn 3, built from source)"
    if device.type != "cuda":
        return f"flash-attn {version} needs CUDA tensors, the transformer is on {device}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn {version} needs float16/bfloat16 weights, the transformer is {dtype}"
    if version == 3 and torch.cuda.get_device_capability(device)[0] != 9:
        return f"flash-attn 3 needs a Hopper GPU (sm90), this is sm{''.join(map(str, torch.cuda.get_device_capability(device)))}"
    if not _flash_usable(version):
        return f"{package} is not importable (or too old for diffusers)"
    if use == "training" and f"flash{version}" in FORWARD_ONLY:
        return (f"flash-attn {version} is forward-only in diffusers (its op has no autograd formula); "
                "use it for rollouts only (use='rollout')")
    return None


def resolve_attention_backend(requested: str, device, dtype: torch.dtype, use: str = "training") -> tuple[str, str]:
    """``(backend, reason)`` for a request on weights of ``dtype`` on ``device`` for ``use``.

    ``backend`` is one of ``sdpa``, ``flash2``, ``flash3``; for ``use="training"`` never a
    :data:`FORWARD_ONLY` one. Raises :class:`AttentionBackendError` when an explicitly
    requested flash backend cannot run (or cannot be trained through).
    """
    want = _canonical(requested)
    use = _check_use(use)
    device = torch.device(device)
    if want == "sdpa":
        return "sdpa", "requested"
    if want in ("flash2", "flash3"):
        version = 2 if want == "flash2" else 3
        why = _why_not_flash(version, device, dtype, use)
        if why is not None:
            raise AttentionBackendError(f"attention_backend={requested!r} cannot run: {why}")
        return want, "requested"
    reasons = []
    for version in (3, 2):
        why = _why_not_flash(version, device, dtype, use)
        if why is None:
            skipped = "".join(f"; skipped: {r}" for r in reasons)
            return f"flash{version}", f"auto ({use}): fastest available{skipped}"
        reasons.append(why)
    return "sdpa", f"auto ({use}): " + "; ".join(reasons)


def _install(transformer: torch.nn.Module, backend: str) -> None:
    # diffusers warns "experimental feature" on every call; the choice is logged by the callers.
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        transformer.set_attention_backend(BACKENDS[backend])
    finally:
        diffusers_logger.setLevel(level)
    transformer.precise_fast_attention_backend = backend


def set_attention_backend(transformer: torch.nn.Module, requested: str = "auto", use: str = "training") -> str:
    """Select and install the attention backend on ``transformer``; returns ``sdpa``/``flash2``/``flash3``.

    The decision uses the transformer's current device and dtype, so call it after moving
    the model. The result is also stored as ``transformer.precise_fast_attention_backend``.
    ``use="training"`` (default) guarantees a backend that backpropagates.
    """
    param = next(transformer.parameters())
    backend, reason = resolve_attention_backend(requested, param.device, param.dtype, use)
    _install(transformer, backend)
    logger.info("attention backend: %s (%s)", backend, reason)
    return backend


@contextlib.contextmanager
def attention_backend_for(transformer: torch.nn.Module, requested: str, use: str):
    """Temporarily install the backend ``requested`` resolves to for ``use``; restores the previous one.

    E.g. ``with attention_backend_for(tr, "auto", "rollout"):`` samples with flash-attn 3
    on Hopper while the trained policy keeps a backend with a backward outside the block.
    """
    previous = getattr(transformer, "precise_fast_attention_backend", None)
    param = next(transformer.parameters())
    backend, reason = resolve_attention_backend(requested, param.device, param.dtype, use)
    if backend == previous:
        yield backend
        return
    _install(transformer, backend)
    logger.debug("attention backend for %s: %s (%s)", use, backend, reason)
    try:
        yield backend
    finally:
        if previous is None:
            _install(transformer, "sdpa")
        else:
            _install(transformer, previous)
