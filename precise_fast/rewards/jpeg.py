"""JPEG (in)compressibility rewards of DDPO (Black et al. 2023, arXiv 2305.13301).

DDPO's ``jpeg_incompressibility`` (github.com/kvablack/ddpo-pytorch, ``ddpo_pytorch/rewards.py``)
converts each image to 8 bits, saves it as JPEG at quality 95 with Pillow and returns the
file size in kilobytes (bytes / 1000); ``jpeg_compressibility`` is its negative divided by 500,
as the Precise paper (Tencent-Hunyuan/Precise precise_sde/rewards/builtin.py) and Flow-GRPO
compute and log it (incompressibility stays in kB there too). The ``scale`` option overrides
it; per-component normalisation makes the scale irrelevant for training, only logs change.

Encoding is a CPU job: the batch is converted to uint8 on its device and copied to the host
in one transfer, then encoded image by image.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .base import RewardModel, ScoreOutput
from .preprocess import to_uint8


def jpeg_sizes_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG file size in kB (1000 bytes) of each image, float32 on the images' device."""
    arrays = to_uint8(images).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    sizes = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32, device=images.device)


def default_scale(sign: float) -> float:
    """The paper's scale: compressibility (sign -1) is -kB / 500, incompressibility kB."""
    return 1.0 / 500.0 if sign < 0 else 1.0


class JpegReward(RewardModel):
    """``sign * scale * size_kb``: sign -1 is compressibility, +1 incompressibility."""

    def __init__(self, name: str, sign: float, quality: int = 95, scale: float = 1.0):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
        self.name = name
        self.sign = float(sign)
        self.quality = int(quality)
        self.scale = float(scale)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping]) -> ScoreOutput:
        size_kb = jpeg_sizes_kb(images, self.quality)
        return ScoreOutput.from_scores(self.sign * self.scale * size_kb, extras={f"{self.name}_kb": size_kb})
