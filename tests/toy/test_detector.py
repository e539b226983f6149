"""The shapes detector feeding GenEval's scoring logic (``precise_fast.rewards.servers.geneval_logic``,
a reimplementation of github.com/djghosh13/geneval ``evaluation/evaluate_images.py`` and
Flow-GRPO's reward-server ``gen_eval.py``): exact on clean renders, and the toy reward is that
logic's score over these detections.
"""

import numpy as np
import pytest
import torch

from precise_fast.rewards import build_reward
from precise_fast.rewards.servers.geneval_logic import Thresholds
from precise_fast.rewards.shapes import world
from precise_fast.rewards.shapes.detector import ShapeDetector, classify_component, nearest_color
from precise_fast.rewards.shapes.reward import ToyGenEvalReward
from PIL import Image


def _tensor(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max(), ys.max())


@pytest.mark.parametrize("seed", range(10))
def test_exact_on_clean_renders(seed):
    """Every object found once, with its class, colour and exact box, above GenEval's counting threshold."""
    det = ShapeDetector()
    for meta in world.all_prompts():
        image, objects = world.render(meta, seed)
        raw = det.detect_one(image)
        found = []
        for name, (boxes, masks) in zip(world.SHAPES, raw):
            colors = nearest_color(Image.fromarray(image), list(zip(boxes, masks)), name)
            found += [(name, c, tuple(int(v) for v in b[:4]), b[4]) for b, c in zip(boxes, colors)]
        expected = sorted((o["class"], o["color"], _tight_box(world.shape_mask(o["class"], *o["box"]))) for o in objects)
        assert sorted(f[:3] for f in found) == expected, meta["prompt"]
        assert min(f[3] for f in found) > Thresholds().counting_confidence


def test_each_class_prototype_is_recognised_at_every_size():
    for shape in world.SHAPES:
        for size in range(world.SIZE_RANGE[0], world.SIZE_RANGE[1] + 1):
            name, conf, box = classify_component(world.shape_mask(shape, 3, 4, size))
            assert name == shape and conf > 0.9
            assert tuple(box.tolist()) == _tight_box(world.shape_mask(shape, 3, 4, size))


def test_blank_and_noise_images_detect_nothing_confidently():
    det = ShapeDetector()
    blank = np.full((32, 32, 3), 255, np.uint8)
    assert all(len(b) == 0 for b, _ in det.detect_one(blank))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    confident = [c for b, _ in det.detect_one(noise) for c in b[:, 4] if c > Thresholds().confidence]
    assert len(confident) <= 1


def test_toy_reward_is_one_on_clean_renders_and_registered():
    records = world.all_prompts()
    images = [world.render(m, i)[0] for i, m in enumerate(records)]
    reward = build_reward("toy_geneval")
    out = reward(_tensor(images), [m["prompt"] for m in records], records)
    assert torch.equal(out.per_component["toy_geneval"], torch.ones(len(records)))


def test_toy_reward_gives_partial_credit_for_wrong_images():
    """Flow-GRPO's partial credit: a blue circle for "a red circle" keeps the count credit (0.5 of 1 + 1)."""
    reward = ToyGenEvalReward()
    red = next(m for m in world.all_prompts() if m["prompt"] == "a photo of a red circle")
    blue = next(m for m in world.all_prompts() if m["prompt"] == "a photo of a blue circle")
    image, _ = world.render(blue, 0)
    out = reward(_tensor([image]), [red["prompt"]], [red])
    assert out.scores.tolist() == [0.5]
    assert out.extras["correct"].tolist() == [0.0]
    # Two circles for "three circles": count credit 1 - 1/3, and the strict criterion fails.
    three = next(m for m in world.all_prompts() if m["prompt"] == "a photo of three circles")
    two = next(m for m in world.all_prompts() if m["prompt"] == "a photo of two circles")
    out = reward(_tensor([world.render(two, 1)[0]]), [three["prompt"]], [three])
    assert out.scores.tolist() == pytest.approx([2 / 3])
    assert out.extras["strict_correct"].tolist() == [0.0]


def test_bad_metadata_is_a_clear_error():
    reward = ToyGenEvalReward()
    image = _tensor([np.full((32, 32, 3), 255, np.uint8)])
    with pytest.raises(ValueError, match="unknown or missing class 'dog'"):
        reward(image, ["a dog"], [{"tag": "single_object", "include": [{"class": "dog", "count": 1}]}])


def test_a_flooded_canvas_is_not_an_object():
    """Found by RL: a policy painted the whole canvas blue with a few holes, which a fill-ratio
    classifier alone reads as one circle (reward 1 for "a photo of a circle")."""
    reward = ToyGenEvalReward()
    meta = next(m for m in world.all_prompts() if m["prompt"] == "a photo of a circle")
    image = np.empty((32, 32, 3), np.uint8)
    image[:] = world.PALETTE["blue"]
    rng = np.random.default_rng(0)
    holes = rng.random((32, 32)) < 0.2
    image[holes] = 255
    image[:, :2] = 255
    out = reward(_tensor([image]), [meta["prompt"]], [meta])
    assert out.scores.tolist() == [0.0]


def test_a_blunt_triangle_is_not_a_confident_circle():
    """Found by RL: a trapezoid (a triangle with its apex cut off) fills ~0.75 of its box, as a
    circle does (pi/4), so a fill-ratio classifier paid 1 for it under "a photo of a circle".
    The prototype-IoU classifier calls it a triangle or drops it below GenEval's threshold."""
    size = 12
    mask = world.shape_mask("triangle", 4, 4, size)
    ys, _ = np.nonzero(mask)
    trapezoid = mask.copy()
    trapezoid[: ys.min() + 4] = False  # cut the top third off
    fill = trapezoid.sum() / ((np.ptp(np.nonzero(trapezoid)[1]) + 1) * (np.ptp(np.nonzero(trapezoid)[0]) + 1))
    assert abs(fill - np.pi / 4) < 0.1  # the fill ratio alone cannot tell it from a circle
    name, confidence, _ = classify_component(trapezoid)
    assert name != "circle" or confidence < Thresholds().confidence
    reward = ToyGenEvalReward()
    meta = next(m for m in world.all_prompts() if m["prompt"] == "a photo of a circle")
    image = np.full((32, 32, 3), 255, np.uint8)
    image[trapezoid] = world.PALETTE["red"]
    assert reward(_tensor([image]), [meta["prompt"]], [meta]).scores.tolist() == [0.0]
