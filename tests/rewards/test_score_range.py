"""Scores out of range are invalid samples, never a crash (issue 25 item 10).

A remote GenEval server answering 1e300 (beyond float32) crashed the run: the client wrote the
value into a float32 tensor ("value cannot be converted to type float without overflow").
Scores beyond ``rewards.base.MAX_ABS_SCORE`` (or non-finite) are invalid, whoever scored them.
"""

import torch

from precise_fast.rewards import SENTINEL, MultiReward, RewardModel, ScoreOutput, build_reward
from precise_fast.rewards.base import MAX_ABS_SCORE, combine_rewards
from precise_fast.rewards.remote import GenEvalClient

from .conftest import reply
from .test_remote_geneval import FAST, meta


def test_a_remote_score_beyond_float32_is_an_invalid_sample(scripted_server):
    server = scripted_server(reply(200, {"results": [{"score": 1e300}, {"score": 0.5}, {"score": -1e30}]}))
    out = GenEvalClient(server.url, **FAST)(torch.rand(3, 3, 8, 8), ["a"] * 3, [meta()] * 3)
    assert out.valid.tolist() == [False, True, False]
    assert out.scores.tolist() == [SENTINEL, 0.5, SENTINEL]


class _Fixed(RewardModel):
    """A local scorer that returns given scores as they are (no ScoreOutput.from_scores)."""

    def __init__(self, values):
        self.values = torch.tensor(values, dtype=torch.float32)

    def __call__(self, images, prompts, metadata):
        return ScoreOutput(scores=self.values.clone(), valid=torch.ones(len(self.values), dtype=torch.bool))


def test_a_local_score_beyond_the_bound_is_an_invalid_sample(caplog):
    values = [0.25, 2 * MAX_ABS_SCORE, -float("inf"), -MAX_ABS_SCORE]
    reward = MultiReward({"r": _Fixed(values)})
    result = reward(torch.rand(4, 3, 8, 8), ["a"] * 4)
    assert result.component_valid["r"].tolist() == [True, False, False, True]
    assert result.per_component["r"].tolist() == [0.25, SENTINEL, SENTINEL, -MAX_ABS_SCORE]
    assert "2 scores" in caplog.text and "'r'" in caplog.text  # said, not silent
    from_scores = ScoreOutput.from_scores(torch.tensor(values))
    assert from_scores.valid.tolist() == [True, False, False, True]
    # Gathered values without masks (validity from the sentinel): the bound holds there too.
    _, valid = combine_rewards({"r": torch.tensor(values)}, {"r": 1.0})
    assert valid.tolist() == [True, False, False, True]


def test_a_non_finite_image_is_an_invalid_sample():
    """A NaN image became a black one in the uint8 conversion and was scored as valid
    (a diverged run's JPEG reward read 0.691 kB for every sample)."""
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images[1, 0, 2, 2] = float("nan")
    images[2] = float("inf")
    result = build_reward("jpeg_incompressibility")(images, ["a"] * 3)
    assert result.valid.tolist() == [True, False, False]
    assert result.per_component["jpeg_incompressibility"][1:].tolist() == [SENTINEL, SENTINEL]
    seen = []

    class _Seen(RewardModel):
        def __call__(self, images, prompts, metadata):
            seen.append(images.clone())
            return ScoreOutput.from_scores(torch.zeros(len(images)))

    MultiReward({"s": _Seen()})(images, ["a"] * 3)
    assert torch.isfinite(seen[0]).all()  # no scorer sees the non-finite pixels
