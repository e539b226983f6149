"""Mixed precision of the pipeline (``model.precision``).

``autocast_bf16`` is what the Precise paper runs (Tencent-Hunyuan/Precise
precise_sde/train/rl_trainer.py + adapters.py, under accelerate with ``mixed_precision="bf16"``):
the transformer keeps float32 weights (the LoRA masters and the frozen base) and every forward
runs under bf16 autocast with float32 outputs, which is what ``accelerator.prepare`` does to a
model; the VAE stays float32; the text encoder runs in bf16 (its ``inference_dtype``).
``pure`` leaves every component in the dtype it was loaded in (pure bf16 with ``model.dtype:
bfloat16``: less memory and time, not the paper's numerics).
"""

from __future__ import annotations

import functools
import types

import torch

PRECISIONS = ("autocast_bf16", "pure")


def _to_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        items = [_to_float32(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # namedtuples take fields
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    if isinstance(value, dict):
        for k in list(value.keys()):
            value[k] = _to_float32(value[k])
        return value
    return value


def autocast_forward(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """Make ``module``'s forward run under ``torch.autocast(dtype)`` on its device and return
    float32 floating outputs (accelerate's ``prepare`` for a mixed-precision model). Idempotent."""
    if getattr(module, "_autocast_dtype", None) is not None:
        return module
    inner = module.forward
    if getattr(inner, "__self__", None) is not module:
        raise TypeError(f"autocast_forward wraps a module's own bound forward, not {inner!r}")
    inner_func = inner.__func__

    @functools.wraps(inner_func)
    def forward(self, *args, **kwargs):
        # The inputs' device (no parameter walk per call: cheap under capture and torch.compile).
        first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        device_type = first.device.type if first is not None else next(self.parameters()).device.type
        with torch.autocast(device_type=device_type, dtype=dtype):
            out = inner_func(self, *args, **kwargs)
        return _to_float32(out)

    # A method bound to the module, not a closure over it: copy.deepcopy rebinds bound methods
    # to the copy, so a deep copy (the full fine-tune's frozen KL reference) runs its own weights.
    module.forward = types.MethodType(forward, module)
    module._autocast_dtype = dtype
    return module


def apply_precision(pipeline, precision: str):
    """Set up ``pipeline`` (loaded in float32 for ``autocast_bf16``) for ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "pure":
        return pipeline
    weights = {p.dtype for p in pipeline.transformer.parameters()}
    if weights != {torch.float32}:
        raise ValueError(f"autocast_bf16 needs float32 transformer weights (the masters), got {sorted(map(str, weights))}")
    pipeline.vae.to(torch.float32)
    pipeline.text_encoder.to(torch.bfloat16)
    autocast_forward(pipeline.transformer, torch.bfloat16)
    return pipeline
