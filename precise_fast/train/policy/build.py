"""The policy a run trains, built from its config (``model.*``, ``train.*``).

Load the pipeline, apply the precision, make the trained parameters (a LoRA of the recipe's
targets, optionally started from ``train.lora_path``, or every weight), wrap the transformer in
the ZeRO engine, and build the KL term's frozen reference and the EMA when the config asks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ...models import (apply_lora, apply_precision, enable_full_finetune, init_lora_from, load_pipeline,
                       tiny_pipeline_path)
from ..config import Config
from .distributed import barrier
from .ema import EMA
from .reference import lora_reference, module_reference
from .zero import PolicyEngine


@dataclass
class Policy:
    pipeline: object  # the diffusers pipeline; its transformer is the engine's module
    engine: PolicyEngine
    lora: bool  # a LoRA (else every weight trains)
    reference: Callable | None  # the frozen base of the KL term (train.beta > 0)
    ema: EMA | None


def model_path(cfg: Config, *, main: bool) -> str | Path:
    """The model folder: ``model.path``, or for ``tiny`` the offline tiny model, which rank 0
    builds once while the other ranks wait."""
    if cfg.model.path != "tiny":
        return cfg.model.path
    if main:
        tiny_pipeline_path(cfg.model.tiny_seed)
    barrier()
    return tiny_pipeline_path(cfg.model.tiny_seed)


def load_run_pipeline(cfg: Config, path: str | Path, device: torch.device):
    """The pipeline as the run computes with it, for training and the standalone eval alike:
    loaded in ``model.dtype``, ``model.precision`` applied, TF32 matmuls per ``model.allow_tf32``."""
    m = cfg.model
    pipeline = load_pipeline(path, dtype=getattr(torch, m.dtype), device=device,
                             attention_backend=m.attention_backend, model_root=m.model_root)
    apply_precision(pipeline, m.precision)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = m.allow_tf32
    return pipeline


def build_policy(cfg: Config, path: str | Path, device: torch.device) -> Policy:
    m, t = cfg.model, cfg.train
    pipeline = load_run_pipeline(cfg, path, device)
    transformer = pipeline.transformer
    lora = m.finetune == "lora"
    if lora:
        params = apply_lora(transformer, rank=m.lora_rank, alpha=m.lora_alpha, init=m.lora_init, targets=m.lora_targets)
        if t.lora_path:
            init_lora_from(transformer, t.lora_path)
    else:
        params = enable_full_finetune(transformer)
    if m.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    # A full fine-tune's reference is a copy of the initial weights, taken before the engine owns them.
    frozen = copy.deepcopy(transformer).requires_grad_(False).eval() if not lora and t.beta > 0 else None
    engine = PolicyEngine(transformer, params, cfg, device)
    reference = None
    if t.beta > 0:
        reference = lora_reference(engine, engine.module) if lora else module_reference(frozen)
    ema = EMA(params, t.ema_decay, t.ema_interval, t.ema_schedule) if t.ema else None
    return Policy(pipeline, engine, lora, reference, ema)
