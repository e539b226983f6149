"""Load a ``Flux2KleinPipeline`` from a local diffusers folder (never from the network)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..model_paths import resolve_model_path
from .attention import set_attention_backend

logger = logging.getLogger("precise_fast.models")

PIPELINE_CLASS = "Flux2KleinPipeline"
# Component folder -> the config file diffusers / transformers read from it.
REQUIRED_COMPONENTS = {
    "transformer": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}


class ModelFolderError(ValueError):
    """A folder that is not a complete FLUX.2 Klein diffusers pipeline."""


def check_pipeline_folder(path: str | os.PathLike) -> Path:
    """Raise :class:`ModelFolderError` naming what is wrong unless ``path`` holds a Klein pipeline."""
    folder = Path(path)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelFolderError(f"{folder} is not a diffusers pipeline folder: model_index.json is missing")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{index_file} is not valid JSON: {err}") from err
    cls = index.get("_class_name")
    if cls != PIPELINE_CLASS:
        raise ModelFolderError(f"{folder} holds a {cls!r} pipeline, expected {PIPELINE_CLASS!r}")
    missing = [
        f"{name}/{config}"
        for name, config in REQUIRED_COMPONENTS.items()
        if name not in index or not (folder / name / config).is_file()
    ]
    if missing:
        raise ModelFolderError(f"{folder} is an incomplete {PIPELINE_CLASS} folder; missing: {', '.join(missing)}")
    return folder


def load_pipeline(
    path_or_id: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attention_backend: str = "auto",
    model_root: str | os.PathLike | None = None,
):
    """Load a FLUX.2 Klein pipeline from a local folder, frozen and in eval mode.

    ``path_or_id`` is a diffusers folder, or a pinned id / alias of
    :data:`precise_fast.model_paths.PINNED_MODELS` resolved under ``model_root`` (or
    ``$PRECISE_FAST_MODEL_ROOT``). Files are read with ``local_files_only=True``: a missing
    model is a :class:`~precise_fast.model_paths.WeightsNotFoundError`, an incomplete or
    foreign folder a :class:`ModelFolderError`, never a download. Every parameter has
    ``requires_grad=False`` (LoRA / full fine-tuning turn on what they train). The attention
    backend is chosen by :func:`~precise_fast.models.attention.set_attention_backend`.
    """
    from diffusers import Flux2KleinPipeline

    folder = check_pipeline_folder(resolve_model_path(path_or_id, root=model_root))
    pipe = Flux2KleinPipeline.from_pretrained(folder, dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    for module in (pipe.transformer, pipe.text_encoder, pipe.vae):
        module.eval()
        module.requires_grad_(False)
    set_attention_backend(pipe.transformer, attention_backend)
    logger.info("loaded %s from %s (%s on %s)", PIPELINE_CLASS, folder, dtype, torch.device(device))
    return pipe
