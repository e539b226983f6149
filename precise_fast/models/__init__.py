"""FLUX.2 Klein model layer: local loading, the tiny offline builder, LoRA, attention backends,
prompt encoding, and the one transformer forward shared by sampling and training.

Public API::

    load_pipeline(path_or_id, *, dtype=torch.float32, device="cpu", attention_backend="auto", model_root=None)
    build_tiny_pipeline(out_dir, seed=0, *, overwrite=False, widths="tiny") -> Path   # widths="klein4b": real widths
    tiny_pipeline_path(seed=0, cache_dir=None, widths="tiny") -> Path          # built once, then reused
    apply_lora(transformer, rank=16, alpha=16.0, init="gaussian", *, adapter_name="default", dropout=0.0, targets="paper")
    init_lora_from(transformer, path, *, adapter_name="default")  # start from a saved LoRA (diffusers or peft)
    save_lora(pipeline_or_transformer, path, *, adapter_name="default", state_dict=None, dtype=None) -> Path
    load_lora(pipeline, path, *, adapter_name="default", trainable=False)
    enable_full_finetune(transformer) -> list[Parameter]
    apply_precision(pipeline, "autocast_bf16" | "pure")  # the paper's fp32 masters under bf16 autocast
    set_attention_backend(transformer, requested="auto", use="training") -> "sdpa" | "flash2" | "flash3"
    attention_backend_for(transformer, requested, use)          # context manager, e.g. flash-attn 3 for rollouts
    PromptEncoder(pipeline, *, max_length=128, layers=(9, 18, 27), cache_size=4096, device=None, dtype=None)
    predict_velocity(transformer, latents, timestep, prompt_embeds, text_ids, latent_ids, *, attention_kwargs=None)
    latent_layout(pipeline, height, width) -> LatentLayout
    latent_ids(layout, batch, device=None); text_ids(batch, seq_len, device=None)
    decode_latents(pipeline, packed, layout, *, chunk=None) -> images (B, 3, H, W) in [0, 1]
"""

from .attention import AttentionBackendError, attention_backend_for, resolve_attention_backend, set_attention_backend
from .flux2 import (
    LatentLayout,
    decode_latents,
    latent_ids,
    latent_layout,
    pack_latents,
    predict_velocity,
    unpack_latents,
    unpatchify_latents,
)
from .loading import ModelFolderError, check_pipeline_folder, load_pipeline
from .lora import (
    LORA_TARGET_SETS,
    LORA_TARGET_SUFFIXES,
    apply_lora,
    enable_full_finetune,
    init_lora_from,
    load_lora,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
    lora_target_modules,
    save_lora,
)
from .precision import PRECISIONS, apply_precision, autocast_forward
from .text import RECIPE_LAYERS, RECIPE_MAX_LENGTH, PromptEncoder, text_ids
from .tiny import TINY_TEXT_LAYERS, build_tiny_pipeline, tiny_pipeline_path

__all__ = [
    "AttentionBackendError",
    "LORA_TARGET_SETS",
    "LORA_TARGET_SUFFIXES",
    "LatentLayout",
    "ModelFolderError",
    "PRECISIONS",
    "PromptEncoder",
    "RECIPE_LAYERS",
    "RECIPE_MAX_LENGTH",
    "TINY_TEXT_LAYERS",
    "apply_lora",
    "apply_precision",
    "autocast_forward",
    "build_tiny_pipeline",
    "check_pipeline_folder",
    "decode_latents",
    "enable_full_finetune",
    "init_lora_from",
    "latent_ids",
    "latent_layout",
    "load_lora",
    "load_pipeline",
    "lora_disabled",
    "lora_parameters",
    "lora_state_dict",
    "lora_target_modules",
    "pack_latents",
    "predict_velocity",
    "resolve_attention_backend",
    "attention_backend_for",
    "save_lora",
    "set_attention_backend",
    "text_ids",
    "tiny_pipeline_path",
    "unpack_latents",
    "unpatchify_latents",
]
