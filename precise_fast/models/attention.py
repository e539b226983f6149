"""Attention backend selection for the FLUX.2 transformer, through diffusers' dispatcher.

``auto`` picks flash-attn 3 (Hopper, when ``flash_attn_interface`` imports), else
flash-attn 2 (when ``flash_attn`` imports), on CUDA with half-precision weights; everywhere
else PyTorch SDPA (diffusers' ``native`` backend). flash-attn has no CPU or fp32 kernels,
so an explicit request for it there is an error rather than a silent fallback. The choice
is logged on the ``precise_fast.models`` logger.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("precise_fast.models")

# Our names -> diffusers' AttentionBackendName values.
BACKENDS = {
    "sdpa": "native",
    "flash2": "flash",
    "flash3": "_flash_3",
}
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


def _flash_usable(version: int) -> bool:
    """Whether diffusers' dispatcher can call flash-attn ``version`` (2 or 3) in this process."""
    from diffusers.models import attention_dispatch as dispatch

    return bool(dispatch._CAN_USE_FLASH_ATTN if version == 2 else dispatch._CAN_USE_FLASH_ATTN_3)


def _why_not_flash(version: int, device: torch.device, dtype: torch.dtype) -> str | None:
    """``None`` when flash-attn ``version`` can run for these weights, else the reason."""
    package = "flash_attn" if version == 2 else "flash_attn_interface (flash-attn 3, built from source)"
    if device.type != "cuda":
        return f"flash-attn {version} needs CUDA tensors, the transformer is on {device}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn {version} needs float16/bfloat16 weights, the transformer is {dtype}"
    if version == 3 and torch.cuda.get_device_capability(device)[0] != 9:
        return f"flash-attn 3 needs a Hopper GPU (sm90), this is sm{''.join(map(str, torch.cuda.get_device_capability(device)))}"
    if not _flash_usable(version):
        return f"{package} is not importable (or too old for diffusers)"
    return None


def resolve_attention_backend(requested: str, device, dtype: torch.dtype) -> tuple[str, str]:
    """``(backend, reason)`` for a request on weights of ``dtype`` on ``device``.

    ``backend`` is one of ``sdpa``, ``flash2``, ``flash3``. Raises
    :class:`AttentionBackendError` when an explicitly requested flash backend cannot run.
    """
    want = _canonical(requested)
    device = torch.device(device)
    if want == "sdpa":
        return "sdpa", "requested"
    if want in ("flash2", "flash3"):
        version = 2 if want == "flash2" else 3
        why = _why_not_flash(version, device, dtype)
        if why is not None:
            raise AttentionBackendError(f"attention_backend={requested!r} cannot run: {why}")
        return want, "requested"
    reasons = []
    for version in (3, 2):
        why = _why_not_flash(version, device, dtype)
        if why is None:
            return f"flash{version}", "auto: fastest available"
        reasons.append(why)
    return "sdpa", "auto: " + "; ".join(reasons)


def set_attention_backend(transformer: torch.nn.Module, requested: str = "auto") -> str:
    """Select and install the attention backend on ``transformer``; returns ``sdpa``/``flash2``/``flash3``.

    The decision uses the transformer's current device and dtype, so call it after moving
    the model. The result is also stored as ``transformer.precise_fast_attention_backend``.
    """
    param = next(transformer.parameters())
    backend, reason = resolve_attention_backend(requested, param.device, param.dtype)
    # diffusers warns "experimental feature" on every call; the choice is logged below instead.
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        transformer.set_attention_backend(BACKENDS[backend])
    finally:
        diffusers_logger.setLevel(level)
    transformer.precise_fast_attention_backend = backend
    logger.info("attention backend: %s (%s)", backend, reason)
    return backend
