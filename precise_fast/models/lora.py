"""LoRA (through peft, on the recipe's target modules) and full fine-tuning of the FLUX.2 transformer.

A saved LoRA is a standard diffusers LoRA file (``pytorch_lora_weights.safetensors`` with
``transformer.``-prefixed peft keys and the adapter config as metadata), so a stock
``Flux2KleinPipeline.load_lora_weights(path)`` loads it and reproduces our outputs.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch

# The Precise paper's LoRA targets (Tencent-Hunyuan/Precise, precise_sde/train/adapters.py,
# Flux2KleinAdapter.prepare_models), matched as peft does: a module whose name ends in one of
# them. `attn.to_out.0` exists only in the double-stream blocks (there `to_out` is a
# ModuleList), so the paper never adapts the single-stream blocks' output Linear `attn.to_out`.
LORA_TARGET_SUFFIXES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_qkv_mlp_proj",
    "ff.linear_in",
    "ff.linear_out",
    "ff_context.linear_in",
    "ff_context.linear_out",
)
# `paper_plus_single_out` also adapts that single-stream output Linear (~25% more trainable
# parameters on FLUX.2 Klein 4B; docs/PARITY.md).
_SINGLE_BLOCK_OUT = re.compile(r"single_transformer_blocks\.\d+\.attn\.to_out")
LORA_TARGET_SETS = ("paper", "paper_plus_single_out")

DEFAULT_ADAPTER = "default"


def _unwrap_transformer(pipeline_or_transformer):
    return getattr(pipeline_or_transformer, "transformer", pipeline_or_transformer)


def lora_target_modules(transformer: torch.nn.Module, targets: str = "paper") -> list[str]:
    """Full names of the ``nn.Linear`` modules a target set (:data:`LORA_TARGET_SETS`) adapts, in model order."""
    if targets not in LORA_TARGET_SETS:
        raise ValueError(f"unknown LoRA target set {targets!r} (known: {', '.join(LORA_TARGET_SETS)})")
    single_out = targets == "paper_plus_single_out"
    names = []
    for name, module in transformer.named_modules():
        # After injection peft wraps each target; its `base_layer` is the original Linear.
        if not isinstance(getattr(module, "base_layer", module), torch.nn.Linear) or name.endswith(".base_layer"):
            continue
        if any(name == s or name.endswith("." + s) for s in LORA_TARGET_SUFFIXES) or (
            single_out and _SINGLE_BLOCK_OUT.fullmatch(name)
        ):
            names.append(name)
    if not names:
        raise ValueError(f"no LoRA target modules found in {type(transformer).__name__}")
    return names


def apply_lora(
    transformer: torch.nn.Module,
    rank: int = 16,
    alpha: float = 16.0,
    init: str | bool = "gaussian",
    *,
    adapter_name: str = DEFAULT_ADAPTER,
    dropout: float = 0.0,
    targets: str = "paper",
) -> list[torch.nn.Parameter]:
    """Inject a peft LoRA adapter on :func:`lora_target_modules` (of the set ``targets``) and return its trainable parameters.

    ``init="gaussian"`` (the recipe; peft's Gaussian init) draws A with std 1/rank and sets B = 0, so the model's
    output is unchanged until training moves B. Everything but the LoRA weights stays
    frozen. The adapter is active after the call.
    """
    from peft import LoraConfig

    if int(rank) < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        init_lora_weights=init,
        target_modules=lora_target_modules(transformer, targets),
        lora_dropout=float(dropout),
    )
    transformer.requires_grad_(False)
    transformer.add_adapter(config, adapter_name=adapter_name)
    params = lora_parameters(transformer, adapter_name)
    for p in params:
        p.requires_grad_(True)
    return params


def lora_parameters(transformer: torch.nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> list[torch.nn.Parameter]:
    """The LoRA A/B weights of ``adapter_name`` (what the optimiser and the EMA hold)."""
    tag = f".{adapter_name}."
    params = [p for n, p in transformer.named_parameters() if "lora_" in n and tag in n]
    if not params:
        raise ValueError(f"transformer has no LoRA adapter named {adapter_name!r}")
    return params


def lora_state_dict(transformer: torch.nn.Module, adapter_name: str = DEFAULT_ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights under peft's names (``...to_q.lora_A.weight``), detached."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_lora(
    pipeline_or_transformer,
    path: str | os.PathLike,
    *,
    adapter_name: str = DEFAULT_ADAPTER,
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save a LoRA so that stock ``Flux2KleinPipeline.load_lora_weights(path)`` loads it.

    ``state_dict`` replaces the live weights (e.g. the EMA copy, keyed like
    :func:`lora_state_dict`); ``dtype`` casts on the way out. The adapter config (rank,
    alpha, targets) travels in the file's metadata, so the loader rebuilds the same adapter.
    """
    from diffusers import Flux2KleinPipeline

    transformer = _unwrap_transformer(pipeline_or_transformer)
    if adapter_name not in getattr(transformer, "peft_config", {}):
        raise ValueError(f"transformer has no LoRA adapter named {adapter_name!r}")
    live = lora_state_dict(transformer, adapter_name)
    if state_dict is not None:
        if set(state_dict) != set(live):
            missing, extra = sorted(set(live) - set(state_dict)), sorted(set(state_dict) - set(live))
            raise ValueError(f"state_dict does not match the adapter: missing {missing[:3]}, unexpected {extra[:3]}")
        live = {k: state_dict[k].detach().contiguous() for k in live}
    if dtype is not None:
        live = {k: v.to(dtype) for k, v in live.items()}
    live = {k: v.cpu() for k, v in live.items()}
    metadata = transformer.peft_config[adapter_name].to_dict()
    out = Path(path)
    Flux2KleinPipeline.save_lora_weights(out, transformer_lora_layers=live, transformer_lora_adapter_metadata=metadata)
    return out


def load_lora(pipeline, path: str | os.PathLike, *, adapter_name: str = DEFAULT_ADAPTER, trainable: bool = False):
    """Load a LoRA saved by :func:`save_lora` (or any diffusers FLUX.2 LoRA) through the stock loader.

    ``trainable=True`` turns on gradients for its weights (resuming training).
    """
    pipeline.load_lora_weights(str(path), adapter_name=adapter_name)
    if trainable:
        for p in lora_parameters(pipeline.transformer, adapter_name):
            p.requires_grad_(True)
    return pipeline


# Key prefixes of the two LoRA files a run may start from: a diffusers LoRA (ours, and what
# `save_lora_weights` writes) and a peft adapter folder (`PeftModel.save_pretrained`, which is
# what the paper's checkpoints hold: checkpoint-N/lora/adapter_model.safetensors).
_LORA_FILES = (("pytorch_lora_weights.safetensors", "transformer."), ("adapter_model.safetensors", "base_model.model."))


def init_lora_from(transformer: torch.nn.Module, path: str | os.PathLike, *, adapter_name: str = DEFAULT_ADAPTER) -> Path:
    """Overwrite the adapter's weights with a saved LoRA (``train.lora_path``): a diffusers LoRA
    folder/file or a peft adapter folder. The file must hold exactly this adapter's tensors
    (same targets and rank); the weights stay trainable. Returns the file read."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    where = Path(path)
    candidates = [(where / name, prefix) for name, prefix in _LORA_FILES] if where.is_dir() else [
        (where, prefix) for name, prefix in _LORA_FILES if where.name == name]
    found = [(f, prefix) for f, prefix in candidates if f.is_file()]
    if not found:
        names = " or ".join(name for name, _ in _LORA_FILES)
        raise FileNotFoundError(f"train.lora_path: no LoRA at {where} (expected {names})")
    file, prefix = found[0]
    saved = load_file(str(file))
    state = {}
    for key, value in saved.items():
        key = key[len(prefix):] if key.startswith(prefix) else key
        state[key.replace(f".{adapter_name}.", ".")] = value  # peft folders may keep the adapter name
    live = lora_state_dict(transformer, adapter_name)
    if set(state) != set(live):
        missing, extra = sorted(set(live) - set(state)), sorted(set(state) - set(live))
        raise ValueError(f"{file}: LoRA targets differ from this adapter: missing {missing[:3]}, unexpected {extra[:3]}")
    bad = [k for k in live if state[k].shape != live[k].shape]
    if bad:
        raise ValueError(f"{file}: LoRA shapes differ (rank?): {bad[0]} is {tuple(state[bad[0]].shape)}, "
                         f"the adapter has {tuple(live[bad[0]].shape)}")
    result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{file}: peft did not place {result.unexpected_keys[:3]}")
    for p in lora_parameters(transformer, adapter_name):
        p.requires_grad_(True)
    return file


@contextlib.contextmanager
def lora_disabled(transformer: torch.nn.Module):
    """Run the base model (adapters off) inside the block: the frozen reference for a KL term."""
    transformer.disable_adapters()
    try:
        yield transformer
    finally:
        transformer.enable_adapters()


def enable_full_finetune(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Make every transformer weight trainable (full fine-tuning) and return them."""
    if getattr(transformer, "peft_config", None):
        raise ValueError("transformer carries a LoRA adapter; full fine-tuning trains the base weights instead")
    transformer.requires_grad_(True)
    return list(transformer.parameters())
