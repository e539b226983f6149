"""GenEval scoring rules (detector-agnostic part of the GenEval server)."""

import numpy as np
import pytest
from PIL import Image

from precise_fast.rewards.servers.geneval_logic import (
    CLASS_NAMES,
    GenEvalScorer,
    Thresholds,
    evaluate_correct,
    evaluate_partial,
    relative_position,
    select_objects,
    validate_metadata,
)


def obj(x1, y1, x2, y2, score=0.95):
    return (np.array([x1, y1, x2, y2, score], dtype=np.float64), None)


def raw_from(objects):
    """{class: [(box5, mask)]} -> per-class (boxes, masks) in COCO order, like the detector."""
    out = []
    for name in CLASS_NAMES:
        items = objects.get(name, [])
        boxes = np.array([b for b, _ in items], dtype=np.float64).reshape(-1, 5)
        out.append((boxes, None))
    return out


def no_colors(name, k):
    raise AssertionError("no colour check expected")


def fixed_colors(mapping):
    return lambda name, k: mapping[name][:k]


def test_relative_position():
    left, right = obj(0, 40, 20, 60), obj(60, 40, 80, 60)
    assert relative_position(left, right) == {"left of"}
    assert relative_position(right, left) == {"right of"}
    top, bottom = obj(40, 0, 60, 20), obj(40, 60, 60, 80)
    assert relative_position(top, bottom) == {"above"}  # image y grows downwards
    assert relative_position(bottom, top) == {"below"}
    # Centres closer than 0.1 x the summed sizes: no relation.
    assert relative_position(obj(0, 0, 100, 100), obj(5, 5, 105, 105)) == set()
    # Diagonal: both relations.
    assert relative_position(obj(0, 0, 10, 10), obj(90, 90, 100, 100)) == {"left of", "above"}


def test_select_objects_thresholds_order_and_cap():
    cats = [obj(i, 0, i + 5, 5, score=s) for i, s in enumerate([0.2, 0.95, 0.5, 0.92])]
    raw = raw_from({"cat": cats})
    picked = select_objects(raw, "single_object", Thresholds())
    assert [b[4] for b, _ in picked["cat"]] == [0.95, 0.92, 0.5]  # > 0.3, most confident first
    picked = select_objects(raw, "counting", Thresholds())
    assert [b[4] for b, _ in picked["cat"]] == [0.95, 0.92]  # counting uses 0.9
    many = raw_from({"dog": [obj(i, 0, i + 5, 5, 0.99) for i in range(20)]})
    assert len(select_objects(many, "counting", Thresholds())["dog"]) == 16
    # IoU suppression when enabled (GenEval's default 1.0 disables it).
    dupes = raw_from({"cup": [obj(0, 0, 10, 10, 0.9), obj(0, 0, 10, 11, 0.8), obj(50, 50, 60, 60, 0.7)]})
    assert len(select_objects(dupes, "two_object", Thresholds())["cup"]) == 3
    assert len(select_objects(dupes, "two_object", Thresholds(max_overlap=0.5))["cup"]) == 2
    with pytest.raises(ValueError, match="classes"):
        select_objects(raw[:10], "single_object", Thresholds())


def test_single_and_two_objects():
    meta = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    both = {"cat": [obj(0, 0, 10, 10)], "dog": [obj(20, 0, 30, 10)]}
    assert evaluate_correct(both, meta, no_colors, 0.1)[0]
    assert evaluate_partial(both, meta, no_colors, 0.1)[:2] == (True, 1.0)
    only_cat = {"cat": [obj(0, 0, 10, 10)]}
    assert not evaluate_correct(only_cat, meta, no_colors, 0.1)[0]
    assert evaluate_partial(only_cat, meta, no_colors, 0.1)[:2] == (False, 0.5)


def test_counting_exact_and_partial_credit():
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 3}], "exclude": [{"class": "cup", "count": 4}]}
    three = {"cup": [obj(i * 10, 0, i * 10 + 5, 5) for i in range(3)]}
    two = {"cup": three["cup"][:2]}
    five = {"cup": [obj(i * 10, 0, i * 10 + 5, 5) for i in range(5)]}
    assert evaluate_correct(three, meta, no_colors, 0.1)[0]
    assert evaluate_partial(three, meta, no_colors, 0.1)[:2] == (True, 1.0)
    assert not evaluate_correct(two, meta, no_colors, 0.1)[0]
    assert evaluate_partial(two, meta, no_colors, 0.1)[1] == pytest.approx(1 - 1 / 3)
    # Too many: GenEval fails it through the exclude clause; the credit is 1 - |3 - 5| / 3.
    assert not evaluate_correct(five, meta, no_colors, 0.1)[0]
    strict, score, _ = evaluate_partial(five, meta, no_colors, 0.1)
    assert not strict and score == pytest.approx(1 / 3)
    # Far too many gives negative credit, as in Flow-GRPO's formula.
    one = {"tag": "single_object", "include": [{"class": "cup", "count": 1}]}
    assert evaluate_partial(five, one, no_colors, 0.1)[1] == pytest.approx(-3.0)
    # GenEval's criterion is "at least": five cups pass the single-object check.
    assert evaluate_correct(five, one, no_colors, 0.1)[0]


def test_colors_and_color_attribution():
    meta = {
        "tag": "color_attr",
        "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "bus", "count": 1, "color": "blue"}],
    }
    objects = {"car": [obj(0, 0, 10, 10)], "bus": [obj(20, 0, 30, 10)]}
    good = fixed_colors({"car": ["red"], "bus": ["blue"]})
    bad = fixed_colors({"car": ["red"], "bus": ["green"]})
    assert evaluate_correct(objects, meta, good, 0.1)[0]
    assert evaluate_partial(objects, meta, good, 0.1)[:2] == (True, 1.0)
    assert not evaluate_correct(objects, meta, bad, 0.1)[0]
    strict, score, reasons = evaluate_partial(objects, meta, bad, 0.1)
    assert not strict and score == pytest.approx(3 / 4) and "blue bus" in reasons[0]
    # Missing object with a colour requirement: count credit 0 and colour credit 0.
    strict, score, _ = evaluate_partial({"car": objects["car"]}, meta, good, 0.1)
    assert score == pytest.approx((1 + 1 + 0 + 0) / 4)


def test_position():
    meta = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
    }
    dog = obj(60, 40, 80, 60)
    ok = {"dog": [dog], "cat": [obj(0, 40, 20, 60)]}
    wrong = {"dog": [dog], "cat": [obj(90, 40, 99, 60)]}
    assert evaluate_correct(ok, meta, no_colors, 0.1)[0]
    assert evaluate_partial(ok, meta, no_colors, 0.1)[:2] == (True, 1.0)
    assert not evaluate_correct(wrong, meta, no_colors, 0.1)[0]
    # Counts right (1 + 1), relation wrong: the corrected form gives one credit of 0 (mean 2/3);
    # the paper's default appends 0 and 1 (mean 3/4, the next assertion).
    assert evaluate_partial(wrong, meta, no_colors, 0.1, "zero")[:2] == (False, pytest.approx(2 / 3))
    assert evaluate_partial(wrong, meta, no_colors, 0.1)[:2] == (False, pytest.approx(3 / 4))
    # No target object: the relation cannot hold.
    assert not evaluate_correct({"cat": ok["cat"]}, meta, no_colors, 0.1)[0]


def test_metadata_validation():
    good = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
    }
    assert validate_metadata(good) is good
    for bad, message in [
        ({"include": [{"class": "dog", "count": 1}]}, "tag"),
        ({"tag": "x", "include": []}, "include"),
        ({"tag": "x", "include": [{"class": "unicorn", "count": 1}]}, "unicorn"),
        ({"tag": "x", "include": [{"class": "dog", "count": 0}]}, "count"),
        ({"tag": "x", "include": [{"class": "dog", "count": True}]}, "count"),
        ({"tag": "x", "include": [{"class": "dog", "count": 1, "color": "teal"}]}, "colour"),
        ({"tag": "x", "include": [{"class": "dog", "count": 1, "position": ["left of", 0]}]}, "position"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_metadata(bad)


class SceneDetector:
    """Test double for the detector: returns the objects listed for each image."""

    def __init__(self, scenes):
        self.scenes = scenes
        self.calls = 0

    def detect(self, images):
        self.calls += 1
        return [raw_from(self.scenes[int(img[0, 0, 0])]) for img in images]


def test_scorer_end_to_end_with_injected_detector():
    scenes = {0: {"cat": [obj(0, 0, 10, 10)]}, 1: {}}
    calls = []

    def colors(image, objects, name):
        calls.append(name)
        return ["black"] * len(objects)

    scorer = GenEvalScorer(SceneDetector(scenes), colors)
    images = [Image.new("RGB", (32, 32), (i, 0, 0)) for i in (0, 1)]
    meta = {
        "tag": "colors",
        "include": [{"class": "cat", "count": 1, "color": "black"}],
        "prompt": "a photo of a black cat",
    }
    results = scorer.score(images, [meta, meta])
    assert results[0]["strict_correct"] and results[0]["correct"] and results[0]["score"] == 1.0
    assert not results[1]["correct"] and results[1]["score"] == 0.0 and "found 0" in results[1]["reason"]
    assert calls == ["cat"]  # classified once per image and class, shared by both criteria
    assert scorer.score(images[:1], [meta], only_strict=True)[0]["correct"] is None
