"""The shapes world's generator and prompt sets.

Metadata form and tags: GenEval's (github.com/djghosh13/geneval ``prompts/evaluation_metadata.jsonl``,
here ``../shared/data/geneval_test_metadata.jsonl``); checked with our own validator.
"""

import json

import numpy as np
import pytest

from precise_fast.prompts import load_prompts
from precise_fast.rewards.servers.geneval_logic import TAGS, relative_position, validate_metadata
from precise_fast.rewards.shapes import world


def test_every_prompt_is_valid_geneval_metadata_and_every_tag_appears():
    records = world.all_prompts()
    for r in records:
        validate_metadata(r, class_names=world.SHAPES)
    assert {r["tag"] for r in records} == set(TAGS)
    assert len({r["prompt"] for r in records}) == len(records)


def test_position_prompts_read_like_geneval():
    r = next(r for r in world.all_prompts() if r["prompt"] == "a photo of a circle right of a square")
    assert r["include"] == [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["right of", 0]}]


def test_split_is_disjoint_covers_everything_and_holds_out_every_tag():
    records = world.all_prompts()
    train, test = world.split_prompts(records)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len(train) + len(test) == len(records)
    assert {r["tag"] for r in test} == set(TAGS) == {r["tag"] for r in train}


def test_shipped_prompt_sets_are_the_generators_output(tmp_path):
    train_path, test_path = world.write_prompt_sets(tmp_path)
    for name, path in (("train", train_path), ("test", test_path)):
        shipped = load_prompts(f"configs/toy/{name}.jsonl")
        assert [json.dumps(m) for m in shipped.metadata] == path.read_text().splitlines()


def test_render_is_deterministic_in_the_seed():
    meta = world.all_prompts()[-1]
    a, objs_a = world.render(meta, 7)
    b, objs_b = world.render(meta, 7)
    c, _ = world.render(meta, 8)
    assert np.array_equal(a, b) and objs_a == objs_b
    assert not np.array_equal(a, c)
    s1, s2 = world.sample(3), world.sample(3)
    assert np.array_equal(s1[0], s2[0]) and s1[1:] == s2[1:]


@pytest.mark.parametrize("seed", range(20))
def test_renders_obey_their_metadata(seed):
    """Counts, colours, no touching objects, and relations that hold under GenEval's own rule."""
    for meta in world.all_prompts():
        image, objects = world.render(meta, seed)
        assert image.shape == (world.IMAGE_SIZE, world.IMAGE_SIZE, 3) and image.dtype == np.uint8
        for ci, req in enumerate(meta["include"]):
            mine = [o for o in objects if o["clause"] == ci]
            assert len(mine) == req["count"] and all(o["class"] == req["class"] for o in mine)
            if "color" in req:
                assert all(o["color"] == req["color"] for o in mine)
            if "position" in req:
                rel, target = req["position"]
                for o in mine:
                    for t in (t for t in objects if t["clause"] == target):
                        boxes = [np.array([x, y, x + s - 1, y + s - 1, 1.0]) for x, y, s in (o["box"], t["box"])]
                        assert relative_position((boxes[0], None), (boxes[1], None)) == {rel}
        for i, a in enumerate(objects):
            for b in objects[:i]:
                assert world._boxes_clear(a["box"], b["box"])
        for o in objects:  # on the token lattice and inside the canvas
            x0, y0, size = o["box"]
            assert x0 % world.LATTICE == 0 and y0 % world.LATTICE == 0
            assert world.SIZE_RANGE[0] <= size <= world.SIZE_RANGE[1]
            assert x0 + size <= world.IMAGE_SIZE and y0 + size <= world.IMAGE_SIZE


def test_unknown_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown shape 'hexagon'"):
        world.shape_mask("hexagon", 0, 0, 10)
