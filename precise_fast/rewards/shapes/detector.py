"""A programmatic detector for the shapes world, in the form GenEval's scoring logic consumes.

Pipeline per image: every pixel takes the nearest of the palette's colours and the background
(pixels far from all of them are background); each colour's mask is split into 4-connected
components (``scipy.ndimage.label``); components smaller than ``min_area`` are noise, and wider or taller than ``max_side``
(twice the world's largest object) are not objects (a policy can flood the canvas with one
colour; that blob must not pass for a circle). A component's class is the prototype (square,
circle, apex-up triangle, each stretched to the component's bounding box) it overlaps best
(IoU), and its confidence falls as that IoU drops below a clean render's (>= 0.89), as the
runner-up prototype comes close, and as the box's aspect leaves 1:1, so a blurred,
ambiguous or stretched blob scores low and GenEval's thresholds (0.3, or 0.9 for
``counting``) drop it. (The first version classified by fill ratio alone, under which a
blunt triangle, a trapezoid filling ~0.75 of its box, read as a circle: the RL policy drew
those for "a photo of a circle" and was paid 1.) The colour classifier names the palette colour
nearest to the mean of the object's pixels.

Output, per image: for each class of :data:`~.world.SHAPES` in order, ``(boxes (n, 5), masks
(n, H, W))`` with boxes ``[x1, y1, x2, y2, confidence]`` in inclusive pixel coordinates, as
:class:`~precise_fast.rewards.servers.geneval_logic.GenEvalScorer` expects of a detector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from .world import BACKGROUND, PALETTE, SHAPES, SIZE_RANGE, prototype_masks

_COLOR_NAMES = tuple(PALETTE)
_REFERENCE = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float64)  # index 0: background
# Confidence ramps: a clean render's IoU with its own prototype is >= 0.89 at the world's
# sizes and its runner-up is <= 0.85 (circles vs squares the closest pair, measured over
# sizes 9..12 and sub-pixel offsets), so clean renders keep confidence 1.
_IOU_FLOOR, _IOU_FULL = 0.6, 0.89
_MARGIN_FULL = 0.07


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(min(1.0, max(0.0, (x - lo) / (hi - lo))))


def _aspect_confidence(w: int, h: int, width: float = 0.6) -> float:
    return max(0.0, 1.0 - (math.log(w / h) / width) ** 2)


def classify_component(mask: np.ndarray) -> tuple[str, float, np.ndarray]:
    """(class, confidence, box [x1, y1, x2, y2]) of one connected component's boolean mask."""
    ys, xs = np.nonzero(mask)
    x1, x2, y1, y2 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    w, h = x2 - x1 + 1, y2 - y1 + 1
    crop = mask[y1 : y2 + 1, x1 : x2 + 1]
    iou = {}
    for shape, proto in prototype_masks(w, h).items():
        iou[shape] = float((crop & proto).sum()) / float((crop | proto).sum())
    ranked = sorted(SHAPES, key=lambda s: -iou[s])
    name, runner_up = ranked[0], ranked[1]
    confidence = (_ramp(iou[name], _IOU_FLOOR, _IOU_FULL) * _ramp(iou[name] - iou[runner_up], 0.0, _MARGIN_FULL)
                  * _aspect_confidence(w, h))
    return name, confidence, np.array([x1, y1, x2, y2], dtype=np.float64)


class ShapeDetector:
    """``detect(list of (H, W, 3) uint8 arrays) -> per image, per class (boxes, masks)``."""

    def __init__(self, *, min_area: int = 12, max_side: int = 2 * SIZE_RANGE[1], max_distance: float = 120.0):
        self.min_area = int(min_area)
        # Nothing in the world is wider than SIZE_RANGE[1]: a bigger component (a flooded
        # canvas, a smear) is not an object, whatever its fill ratio says.
        self.max_side = int(max_side)
        self.max_distance = float(max_distance)

    def color_labels(self, image: np.ndarray) -> np.ndarray:
        """(H, W) int: 0 for background, 1 + palette index for a shape colour."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        pixels = image.astype(np.float64)[..., None, :]
        dist = np.linalg.norm(pixels - _REFERENCE, axis=-1)
        labels = dist.argmin(axis=-1)
        labels[dist.min(axis=-1) > self.max_distance] = 0
        return labels

    def detect_one(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        labels = self.color_labels(image)
        found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {s: [] for s in SHAPES}
        for color_index in range(1, len(_REFERENCE)):
            components, n = ndimage.label(labels == color_index)
            for k in range(1, n + 1):
                mask = components == k
                if mask.sum() < self.min_area:
                    continue
                name, confidence, box = classify_component(mask)
                if max(box[2] - box[0], box[3] - box[1]) + 1 > self.max_side:
                    continue
                found[name].append((np.append(box, confidence), mask))
        h, w = labels.shape
        out = []
        for s in SHAPES:
            boxes = np.array([b for b, _ in found[s]], dtype=np.float64).reshape(-1, 5)
            masks = np.array([m for _, m in found[s]], dtype=bool).reshape(-1, h, w)
            out.append((boxes, masks))
        return out

    def detect(self, images_rgb: Sequence[np.ndarray]) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        return [self.detect_one(np.asarray(img)) for img in images_rgb]


def nearest_color(image: Image.Image, objects, classname: str) -> list[str]:
    """GenEval colour classifier for the world: the palette colour nearest each object's mean pixel."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    palette = np.array(list(PALETTE.values()), dtype=np.float64)
    names = []
    for _box, mask in objects:
        mean = pixels[mask].mean(axis=0)
        names.append(_COLOR_NAMES[int(np.linalg.norm(palette - mean, axis=1).argmin())])
    return names
