"""A programmatic detector for the shapes world, in the form GenEval's scoring logic consumes.

Pipeline per image: every pixel takes the nearest of the palette's colours and the background
(pixels far from all of them are background); each colour's mask is split into 4-connected
components (``scipy.ndimage.label``); components smaller than ``min_area`` are noise, and wider or taller than ``max_side``
(twice the world's largest object) are not objects (a policy can flood the canvas with one
colour; that blob must not pass for a circle). A
component's class comes from how much of its bounding box it fills (square 1, circle pi/4,
apex-up triangle 1/2), and its confidence from how close that fill and the box's aspect are
to the class's prototype, so a blurred or stretched blob scores low and GenEval's thresholds
(0.3, or 0.9 for ``counting``) drop it. The colour classifier names the palette colour
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

from .world import BACKGROUND, PALETTE, SHAPES, SIZE_RANGE

# Fill of the bounding box for each class (rasterised shapes land within ~0.05 of these).
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
_COLOR_NAMES = tuple(PALETTE)
_REFERENCE = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float64)  # index 0: background


def _fill_confidence(fill: float, prototype: float, width: float = 0.3) -> float:
    return max(0.0, 1.0 - ((fill - prototype) / width) ** 2)


def _aspect_confidence(w: int, h: int, width: float = 0.6) -> float:
    return max(0.0, 1.0 - (math.log(w / h) / width) ** 2)


def classify_component(mask: np.ndarray) -> tuple[str, float, np.ndarray]:
    """(class, confidence, box [x1, y1, x2, y2]) of one connected component's boolean mask."""
    ys, xs = np.nonzero(mask)
    x1, x2, y1, y2 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    w, h = x2 - x1 + 1, y2 - y1 + 1
    fill = float(mask.sum()) / (w * h)
    name = min(SHAPES, key=lambda s: abs(fill - FILL[s]))
    confidence = _fill_confidence(fill, FILL[name]) * _aspect_confidence(w, h)
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
