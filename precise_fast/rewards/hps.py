"""HPS v2.1 (Human Preference Score v2.1; Wu et al. 2023, arXiv 2306.09341).

The model is open_clip ViT-H-14 whose full state dict is ``HPS_v2.1_compressed.pt``
(HF ``xswu/HPSv2``). The score is the cosine similarity of the normalised image and text
features, ``diag(image_features @ text_features.T)``, as in HPSv2's ``img_score.py`` and
Flow-GRPO's ``flow_grpo/hpsv2_scorer.py`` (raw cosine, typically 0.25-0.35; no scaling).

Both of those create ViT-H-14 with the LAION-2B weights and then load the HPS state dict
strictly over them, so the base weights are redundant: we build the architecture and load
the HPS file directly through ``open_clip.create_model_and_transforms(pretrained=<file>)``
(strict, ``weights_only=True``). The tokenizer is open_clip's bundled BPE (no download).
Preprocessing follows the model's open_clip ``preprocess_cfg`` (shortest-edge bicubic
resize to 224, centre crop, OpenAI CLIP mean/std), done on device.

Precision: the paper (Tencent-Hunyuan/Precise precise_sde/rewards/scorers/hpsv2.py) builds
the model with open_clip ``precision="amp"`` (float32 weights) and scores under
``torch.amp.autocast("cuda")`` (float16). ``amp=None`` does that on CUDA with float32
weights; ``amp=False`` scores in the weights' dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .base import RewardModel, ScoreOutput
from .clip_scorers import _device_dtype, embed_images, embed_unique_prompts
from .preprocess import ClipPreprocess


class HPSv2(RewardModel):
    """HPS v2.1 score = cosine(image, text) from the HPS-finetuned open_clip model."""

    def __init__(
        self,
        checkpoint: str | Path,
        device="cpu",
        dtype=torch.float32,
        *,
        arch: str = "ViT-H-14",
        batch_size: int = 32,
        name: str = "hpsv2",
        amp: bool | None = None,
    ):
        import open_clip

        self.name = name
        self.device, self.dtype = _device_dtype(device, dtype)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if arch not in open_clip.list_models():
            raise ValueError(
                f"hpsv2: open_clip has no model config {arch!r} (register one with open_clip.add_model_config)"
            )
        model, _, _ = open_clip.create_model_and_transforms(
            arch,
            pretrained=str(checkpoint),
            device=self.device,
            precision="fp32",
            weights_only=True,
            # HPS v2 uses plain GELU like the LAION ViT-H-14 it was tuned from.
            force_quick_gelu=False,
        )
        self.model = model.to(self.dtype).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.preprocess = ClipPreprocess.from_open_clip_cfg(open_clip.get_model_preprocess_cfg(model))
        if amp is None:
            amp = self.device.type == "cuda" and self.dtype == torch.float32
        if amp and self.device.type != "cuda":
            raise ValueError("hpsv2: amp (fp16 autocast, the paper's) needs a CUDA device")
        self.amp = bool(amp)

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else contextlib.nullcontext()

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return embed_images(self.model.encode_image, self.preprocess, images, self.device, self.dtype, self.batch_size)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        def encode(chunk: list[str]) -> torch.Tensor:
            return self.model.encode_text(self.tokenizer(chunk).to(self.device, non_blocking=True))

        with self._autocast():
            return embed_unique_prompts(encode, prompts, self.device, self.batch_size)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping] = ()) -> ScoreOutput:
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts")
        cos = (self.image_embeds(images) * self.text_embeds(list(prompts))).sum(-1)
        return ScoreOutput.from_scores(cos.to(images.device))

    def close(self) -> None:
        self.model = None
