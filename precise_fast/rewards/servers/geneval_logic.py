"""GenEval scoring rules, detector-agnostic (numpy + Pillow only).

Reimplements, in our own code, the evaluation of GenEval (Ghosh et al. 2023, arXiv
2310.11513; github.com/djghosh13/geneval ``evaluation/evaluate_images.py``) and the
partial-credit reward Flow-GRPO trains on (github.com/yifan123/reward-server
``reward_server/gen_eval.py``, ``evaluate_reward``):

* Detections per class are sorted by confidence, kept above 0.3 (0.9 for the ``counting``
  task), at most 16 per class, with IoU suppression at ``max_overlap`` (1.0 = off, GenEval's
  default).
* ``correct`` (GenEval): every ``include`` clause has at least ``count`` objects; the most
  confident ``count`` of them have the required colour; every one of them stands in the
  required relation to every object of the target clause; and no ``exclude`` clause has
  ``count`` or more objects.
* ``strict_correct`` / ``score`` (Flow-GRPO): counts must be *exact*. Each clause adds the
  count credit ``1 - |count - found| / count`` (negative when far too many objects are
  found, as in Flow-GRPO), a colour credit ``1 - |count - n_colour| / count`` or 0 when the
  count was wrong, and a position credit (1 or 0, or 0 when the count was wrong);
  ``score`` is the mean credit. A failed relation (target present, relation wrong): the
  Precise paper's server (Tencent-Hunyuan/Precise precise_sde/rewards/servers/geneval/gen_eval.py,
  ``evaluate_reward``, as Flow-GRPO's) appends 0.0 and then, unconditionally after its loop,
  1.0 -- two credits, so the failure is worth 0.5. That looks like a bug but is what the paper
  trained on, so it is the default (``failed_relation="paper"``); ``"zero"`` is the corrected
  form (one credit of 0). No target (its clause failed): one credit of 0 in both.
* Relative position: centres are compared after shrinking the offset by 0.1 x the summed
  box sizes per axis; the direction of the remaining offset decides left/right/above/below.
* Colour: a CLIP zero-shot classifier over 10 colours on the object crop, with the
  background outside the mask painted #999 (the classifier is injected; see
  ``geneval_server.OpenClipColorClassifier``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# The 80 COCO classes, in the detector's (COCO) order, spelled as GenEval prompts spell them.
CLASS_NAMES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "computer mouse",
    "tv remote",
    "computer keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


@dataclass(frozen=True)
class Thresholds:
    """GenEval's defaults (``evaluate_images.py`` command-line options)."""

    confidence: float = 0.3
    counting_confidence: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0
    position: float = 0.1


# One detected object: its box [x1, y1, x2, y2, score] and an optional boolean mask (H, W).
Detection = tuple[np.ndarray, "np.ndarray | None"]
# Per image: for each class index, boxes (n, 5) and masks (n, H, W) or None.
RawDetections = Sequence[tuple[np.ndarray, "np.ndarray | None"]]
ColorFn = Callable[[Image.Image, Sequence[Detection], str], list[str]]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU with GenEval's inclusive-pixel convention (+1 on widths and heights)."""

    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return float(inter / union) if union else 0.0


def select_objects(
    raw: RawDetections, tag: str, thresholds: Thresholds, class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, list[Detection]]:
    """Threshold, sort, cap and (optionally) de-duplicate detections; classes with none are dropped."""
    if len(raw) != len(class_names):
        raise ValueError(f"detector returned {len(raw)} classes, expected {len(class_names)}")
    threshold = thresholds.counting_confidence if tag == "counting" else thresholds.confidence
    objects: dict[str, list[Detection]] = {}
    for name, (boxes, masks) in zip(class_names, raw):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        order = np.argsort(-boxes[:, 4], kind="stable")
        order = [int(i) for i in order if boxes[i, 4] > threshold][: thresholds.max_objects]
        kept: list[Detection] = []
        while order:
            best = order.pop(0)
            kept.append((boxes[best], None if masks is None else np.asarray(masks[best], dtype=bool)))
            if thresholds.max_overlap < 1:
                order = [i for i in order if box_iou(boxes[best], boxes[i]) < thresholds.max_overlap]
        if kept:
            objects[name] = kept
    return objects


def relative_position(obj_a: Detection, obj_b: Detection, margin: float = 0.1) -> set[str]:
    """Relations of A with respect to B ("left of", "right of", "above", "below")."""
    boxes = np.array([obj_a[0][:4], obj_b[0][:4]], dtype=np.float64).reshape(2, 2, 2)  # [obj][corner][xy]
    center_a, center_b = boxes.mean(axis=1)
    size_a, size_b = np.abs(boxes[:, 1] - boxes[:, 0])
    offset = center_a - center_b
    shrunk = np.maximum(np.abs(offset) - margin * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


class _ColorCache:
    """Colour classification of the top-k objects of a class, computed once per image."""

    def __init__(self, image: Image.Image, objects: dict[str, list[Detection]], classify: ColorFn | None):
        self.image, self.objects, self.classify, self.cache = image, objects, classify, {}

    def __call__(self, classname: str, k: int) -> list[str]:
        key = (classname, k)
        if key not in self.cache:
            if self.classify is None:
                raise RuntimeError("a colour requirement needs a colour classifier")
            self.cache[key] = list(self.classify(self.image, self.objects[classname][:k], classname))
        return self.cache[key]


def _relation_holds(found: Sequence[Detection], targets: Sequence[Detection], relation: str, margin: float) -> bool:
    return all(relation in relative_position(obj, target, margin) for obj in found for target in targets)


def evaluate_correct(
    objects: dict[str, list[Detection]], metadata: Mapping, colors: Callable[[str, int], list[str]], margin: float
) -> tuple[bool, list[str]]:
    """GenEval's binary criterion and the reasons for a failure."""
    correct, reasons, groups = True, [], []
    for req in metadata.get("include", []):
        name, count = req["class"], int(req["count"])
        found = objects.get(name, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                got = colors(name, count)
                if got.count(req["color"]) < count:
                    matched = False
                    reasons.append(f"expected {req['color']} {name}>={count}, found {got.count(req['color'])}")
            if "position" in req and matched:
                relation, target = req["position"][0], int(req["position"][1])
                if groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                elif not _relation_holds(found, groups[target], relation, margin):
                    matched = False
                    reasons.append(f"expected {name} {relation} target")
        correct &= matched
        groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= int(req["count"]):
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, reasons


FAILED_RELATION = ("paper", "zero")


def evaluate_partial(
    objects: dict[str, list[Detection]], metadata: Mapping, colors: Callable[[str, int], list[str]], margin: float,
    failed_relation: str = "paper",
) -> tuple[bool, float, list[str]]:
    """Flow-GRPO's exact-count criterion and partial-credit score (see the module docstring)."""
    if failed_relation not in FAILED_RELATION:
        raise ValueError(f"failed_relation must be one of {FAILED_RELATION}, got {failed_relation!r}")
    strict, credits, reasons, groups = True, [], [], []
    for req in metadata.get("include", []):
        name, count = req["class"], int(req["count"])
        found = objects.get(name, [])
        credits.append(1.0 - abs(count - len(found)) / count)
        matched = len(found) == count
        if not matched:
            reasons.append(f"expected {name}=={count}, found {len(found)}")
            if "color" in req or "position" in req:
                credits.append(0.0)
        else:
            if "color" in req:
                n_color = colors(name, count).count(req["color"])
                credits.append(1.0 - abs(count - n_color) / count)
                if n_color != count:
                    matched = False
                    reasons.append(f"expected {req['color']} {name}=={count}, found {n_color}")
            if "position" in req and matched:
                relation, target = req["position"][0], int(req["position"][1])
                ok = groups[target] is not None and _relation_holds(found, groups[target], relation, margin)
                credits.append(1.0 if ok else 0.0)
                if not ok and groups[target] is not None and failed_relation == "paper":
                    credits.append(1.0)
                if not ok:
                    matched = False
                    reasons.append(
                        f"expected {name} {relation} target"
                        if groups[target] is not None
                        else f"no target for {name} to be {relation}"
                    )
        strict &= matched
        groups.append(found if matched else None)
    score = sum(credits) / len(credits) if credits else 0.0
    return strict, score, reasons


def validate_metadata(meta, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Check one GenEval metadata entry; raise ValueError with a precise message."""
    if not isinstance(meta, dict):
        raise ValueError("metadata entry must be an object")
    tag = meta.get("tag")
    if not isinstance(tag, str):
        raise ValueError("metadata needs a string 'tag'")
    known = set(class_names)
    includes = meta.get("include")
    if not isinstance(includes, list) or not includes:
        raise ValueError("metadata needs a non-empty 'include' list")
    for where, clauses in (("include", includes), ("exclude", meta.get("exclude", []))):
        if not isinstance(clauses, list):
            raise ValueError(f"'{where}' must be a list")
        for i, req in enumerate(clauses):
            if not isinstance(req, dict) or req.get("class") not in known:
                raise ValueError(
                    f"{where}[{i}]: unknown or missing class {req.get('class') if isinstance(req, dict) else req!r}"
                )
            count = req.get("count")
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
                raise ValueError(f"{where}[{i}]: 'count' must be an integer in [1, 64]")
            if "color" in req and req["color"] not in COLORS:
                raise ValueError(f"{where}[{i}]: unknown colour {req['color']!r}")
            if "position" in req:
                pos = req["position"]
                if (
                    not isinstance(pos, (list, tuple))
                    or len(pos) != 2
                    or pos[0] not in POSITIONS
                    or isinstance(pos[1], bool)
                    or not isinstance(pos[1], int)
                    or not 0 <= pos[1] < i
                ):
                    raise ValueError(f"{where}[{i}]: 'position' must be [relation, index of an earlier clause]")
    return meta


class GenEvalScorer:
    """Detector + colour classifier -> per-image GenEval results (dicts of the JSON contract)."""

    def __init__(
        self,
        detector,
        color_classifier: ColorFn | None,
        *,
        thresholds: Thresholds = Thresholds(),
        class_names: Sequence[str] = CLASS_NAMES,
        failed_relation: str = "paper",
    ):
        if failed_relation not in FAILED_RELATION:
            raise ValueError(f"failed_relation must be one of {FAILED_RELATION}, got {failed_relation!r}")
        self.failed_relation = failed_relation
        self.detector = detector
        self.color_classifier = color_classifier
        self.thresholds = thresholds
        self.class_names = tuple(class_names)

    def score(self, images: Sequence[Image.Image], metadata: Sequence[dict], only_strict: bool = False) -> list[dict]:
        if len(images) != len(metadata):
            raise ValueError(f"{len(images)} images but {len(metadata)} metadata entries")
        raw = self.detector.detect([np.asarray(img.convert("RGB")) for img in images])
        if len(raw) != len(images):
            raise RuntimeError(f"detector returned {len(raw)} results for {len(images)} images")
        results = []
        for image, meta, detections in zip(images, metadata, raw):
            objects = select_objects(detections, meta["tag"], self.thresholds, self.class_names)
            colors = _ColorCache(image, objects, self.color_classifier)
            strict, score, reasons = evaluate_partial(objects, meta, colors, self.thresholds.position, self.failed_relation)
            correct = None
            if not only_strict:
                correct, reasons_correct = evaluate_correct(objects, meta, colors, self.thresholds.position)
                reasons = reasons or reasons_correct
            results.append(
                {
                    "score": float(score),
                    "strict_correct": bool(strict),
                    "correct": correct,
                    "tag": meta["tag"],
                    "reason": "; ".join(reasons),
                    "detected": {name: len(objs) for name, objs in objects.items()},
                }
            )
        return results
