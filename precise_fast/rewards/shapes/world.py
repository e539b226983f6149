"""The shapes world: coloured circles, squares and triangles on a white canvas, described by
GenEval-style prompts and metadata.

Every prompt of the world is enumerated by :func:`all_prompts` in GenEval's six tags and its
metadata form (``../shared/data/geneval_test_metadata.jsonl``; github.com/djghosh13/geneval
``prompts/evaluation_metadata.jsonl``): ``include`` clauses with ``class``, ``count``, optional
``color`` and ``position: [relation, index of an earlier clause]``, and for ``counting`` an
``exclude`` clause one above the count. Prompts read like GenEval's ("a photo of a red circle
left of a blue square" means the circle is left of the square).

:func:`render` draws one image that satisfies a metadata entry, deterministically from a
seed: unspecified colours are drawn from the palette, sizes and places at random, objects
never touch (so the detector can count them) and relations hold with a clear margin under
GenEval's rule (:func:`~precise_fast.rewards.servers.geneval_logic.relative_position`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")
# Colour names are GenEval's; the RGB values are the world's canonical ones.
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
BACKGROUND = (255, 255, 255)
IMAGE_SIZE = 32
SIZE_RANGE = (12, 12)  # object side / diameter in pixels, inclusive
GAP = 2  # minimum free pixels between two objects' boxes
# Boxes start on a 4-pixel lattice: the world model's VAE halves the image and FLUX.2 packs
# 2x2 latent pixels per token, so one token covers 4x4 pixels and a 12-pixel object is
# exactly 3x3 tokens. Measured (precise_fast/toy/pretrain.py docstring): with free sizes
# 9..12 at any pixel offset the world model's failures were mostly malformed shapes and
# colour smears, a rendering skill RL cannot build in budget; on the lattice drawing is easy
# and what remains is choosing the right objects.
LATTICE = 4
_NUMBERS = {2: "two", 3: "three"}
_RELATIONS = ("left of", "right of", "above", "below")


def _plural(shape: str) -> str:
    return shape + "s"


def all_prompts() -> list[dict]:
    """Every prompt of the world as a GenEval metadata record (with its ``prompt``), in a fixed order."""
    out = []
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    for s in SHAPES:
        out.append({"tag": "single_object", "include": [{"class": s, "count": 1}], "prompt": f"a photo of a {s}"})
    for s in SHAPES:
        for n, word in _NUMBERS.items():
            out.append({"tag": "counting", "include": [{"class": s, "count": n}],
                        "exclude": [{"class": s, "count": n + 1}], "prompt": f"a photo of {word} {_plural(s)}"})
    for s in SHAPES:
        for c in PALETTE:
            out.append({"tag": "colors", "include": [{"class": s, "count": 1, "color": c}],
                        "prompt": f"a photo of a {c} {s}"})
    for a, b in pairs:
        out.append({"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                    "prompt": f"a photo of a {a} and a {b}"})
    for a, b in pairs:
        for rel in _RELATIONS:
            # GenEval: "a photo of an A right of a B" -> [B, A with position ("right of", 0)].
            out.append({"tag": "position",
                        "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                        "prompt": f"a photo of a {a} {rel} a {b}"})
    for a, b in pairs:
        for ca in PALETTE:
            for cb in PALETTE:
                if ca != cb:
                    out.append({"tag": "color_attr",
                                "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                                "prompt": f"a photo of a {ca} {a} and a {cb} {b}"})
    return out


def split_prompts(records: list[dict], test_fraction: float = 0.5, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, test) sets: a seeded ``test_fraction`` of each tag (at least one) is held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for tag in dict.fromkeys(r["tag"] for r in records):
        group = [r for r in records if r["tag"] == tag]
        held = set(rng.permutation(len(group))[: max(1, round(test_fraction * len(group)))].tolist())
        for i, r in enumerate(group):
            (test if i in held else train).append(r)
    return train, test


def write_prompt_sets(out_dir: str | os.PathLike, *, test_fraction: float = 0.5, seed: int = 0) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``test.jsonl`` (one metadata record per line) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, records in zip(("train", "test"), split_prompts(all_prompts(), test_fraction, seed)):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        paths.append(path)
    return paths[0], paths[1]


# ------------------------------------------------------------------ rendering


def shape_mask(shape: str, x0: int, y0: int, size: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Boolean (H, W) mask of one shape whose bounding box starts at (x0, y0) with side ``size``."""
    ys, xs = np.mgrid[0:image_size, 0:image_size].astype(np.float64) + 0.5  # pixel centres
    u, v = xs - x0, ys - y0  # coordinates inside the box
    inside = (u >= 0) & (u <= size) & (v >= 0) & (v <= size)
    if shape == "square":
        return inside
    if shape == "circle":
        r = size / 2
        return (u - r) ** 2 + (v - r) ** 2 <= r * r
    if shape == "triangle":  # apex up, base on the box's bottom edge
        half = (v / size) * (size / 2)
        return inside & (np.abs(u - size / 2) <= half)
    raise ValueError(f"unknown shape {shape!r}; the world has {', '.join(SHAPES)}")


def prototype_masks(w: int, h: int) -> dict[str, np.ndarray]:
    """Each class's shape stretched to fill a w x h box (pixel centres): the templates the
    detector matches components against. The same three shapes as :func:`shape_mask`, in
    box-normalised coordinates; :func:`shape_mask` keeps its own pixel-unit form because the
    shipped model's training images are rasterised by it, bit for bit."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    u, v = xs / w, ys / h
    return {
        "circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25,
        "square": np.ones((h, w), dtype=bool),
        "triangle": np.abs(u - 0.5) <= v / 2,  # apex up, base on the bottom edge
    }


def _objects_for(meta: dict, rng: np.random.Generator) -> list[dict]:
    """The objects a metadata entry asks for: class, colour, and the clause each belongs to."""
    objects = []
    for ci, req in enumerate(meta["include"]):
        for _ in range(int(req["count"])):
            color = req.get("color") or str(rng.choice(list(PALETTE)))
            objects.append({"class": req["class"], "color": color, "clause": ci})
    return objects


def _boxes_clear(a, b) -> bool:
    """Boxes (x0, y0, size) separated by at least GAP pixels along some axis."""
    ax, ay, asz = a
    bx, by, bsz = b
    return ax + asz + GAP <= bx or bx + bsz + GAP <= ax or ay + asz + GAP <= by or by + bsz + GAP <= ay


def _relation_ok(a, b, relation: str) -> bool:
    """A clear version of GenEval's relation: the main-axis offset exceeds both sizes, the cross offset is small."""
    (ax, ay, asz), (bx, by, bsz) = a, b
    dx = (ax + asz / 2) - (bx + bsz / 2)
    dy = (ay + asz / 2) - (by + bsz / 2)
    need = 0.5 * (asz + bsz) + GAP
    main, cross = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    return main >= need and abs(cross) <= 0.25 * main


def place(meta: dict, rng: np.random.Generator, image_size: int = IMAGE_SIZE, tries: int = 2000) -> list[dict]:
    """Objects with boxes (x0, y0, size) satisfying the entry's counts and relations, none touching."""
    objects = _objects_for(meta, rng)
    for _ in range(tries):
        boxes = []
        for _obj in objects:
            size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
            x0, y0 = (LATTICE * int(v) for v in rng.integers(0, (image_size - size) // LATTICE + 1, size=2))
            boxes.append((x0, y0, size))
        if not all(_boxes_clear(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i)):
            continue
        ok = True
        for i, obj in enumerate(objects):
            pos = meta["include"][obj["clause"]].get("position")
            if pos:
                targets = [j for j, o in enumerate(objects) if o["clause"] == int(pos[1])]
                ok &= all(_relation_ok(boxes[i], boxes[j], pos[0]) for j in targets)
        if ok:
            return [dict(obj, box=box) for obj, box in zip(objects, boxes)]
    raise RuntimeError(f"could not place {meta['prompt']!r} in {tries} tries")


def render(meta: dict, seed: int, image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[dict]]:
    """(image uint8 (H, W, 3), placed objects) for a metadata entry, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    objects = place(meta, rng, image_size)
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in objects:
        x0, y0, size = obj["box"]
        image[shape_mask(obj["class"], x0, y0, size, image_size)] = PALETTE[obj["color"]]
    return image, objects


def sample(seed: int, records: list[dict] | None = None) -> tuple[np.ndarray, str, dict]:
    """One (image, prompt, metadata) of the world from ``seed``: a tag uniformly, then a prompt of it."""
    records = records if records is not None else all_prompts()
    rng = np.random.default_rng([seed, 7])
    tags = list(dict.fromkeys(r["tag"] for r in records))
    tag = tags[int(rng.integers(len(tags)))]
    group = [r for r in records if r["tag"] == tag]
    meta = group[int(rng.integers(len(group)))]
    image, _ = render(meta, int(rng.integers(2**31)))
    return image, meta["prompt"], meta
