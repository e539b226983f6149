"""The toy GenEval reward: GenEval's scoring rules (our ``geneval_logic``) over the shapes
detector's detections, no model weights anywhere.

The score is Flow-GRPO's partial-credit GenEval reward (``GenEvalScorer`` ``score``), so
rewards lie in [-1, 1] (negative only when far too many objects are found) and a perfect
image scores 1. Extras (for logging): ``strict_correct`` and GenEval's binary ``correct``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..base import RewardModel, ScoreOutput
from ..servers.geneval_logic import GenEvalScorer, validate_metadata
from .detector import ShapeDetector, nearest_color
from .world import SHAPES


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) floats in [0, 1] -> RGB PIL images (rounded to uint8 like a saved PNG)."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]


class ToyGenEvalReward(RewardModel):
    """``reward(images, prompts, metadata) -> ScoreOutput`` with GenEval's partial credit."""

    def __init__(self, name: str = "toy_geneval", *, detector: ShapeDetector | None = None):
        self.name = name
        self.scorer = GenEvalScorer(detector or ShapeDetector(), nearest_color, class_names=SHAPES)

    def score_images(self, images: Sequence[Image.Image], metadata: Sequence[Mapping]) -> list[dict]:
        metadata = [validate_metadata(dict(m), class_names=SHAPES) for m in metadata]
        return self.scorer.score(list(images), metadata)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping]) -> ScoreOutput:
        if len(metadata) != images.shape[0]:
            raise ValueError(f"toy_geneval needs one metadata entry per image: {images.shape[0]} images, {len(metadata)}")
        results = self.score_images(to_pil(images), metadata)
        scores = torch.tensor([r["score"] for r in results], dtype=torch.float32, device=images.device)
        extras = {
            "strict_correct": torch.tensor([float(r["strict_correct"]) for r in results], device=images.device),
            "correct": torch.tensor([float(bool(r["correct"])) for r in results], device=images.device),
        }
        return ScoreOutput.from_scores(scores, extras=extras)
