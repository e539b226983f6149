"""Multi-reward weighting, per-component normalisation and sentinel propagation."""

import concurrent.futures
import threading

import numpy as np
import pytest
import torch

from precise_fast.model_paths import WeightsNotFoundError
from precise_fast.rewards import (
    PRESETS,
    SENTINEL,
    MultiReward,
    RewardModel,
    ScoreOutput,
    build_reward,
    combine_rewards,
    normalize_rewards,
    parse_spec,
    standardize,
)


class Table(RewardModel):
    """Returns fixed scores; ``invalid`` lists the samples it 'could not score'."""

    def __init__(self, values, invalid=(), name="table"):
        self.values = torch.tensor(values, dtype=torch.float32)
        self.invalid = list(invalid)
        self.name = name
        self.calls = 0

    def __call__(self, images, prompts, metadata):
        self.calls += 1
        valid = torch.ones(len(self.values), dtype=torch.bool)
        valid[self.invalid] = False
        return ScoreOutput.from_scores(self.values.clone(), valid)


def _z(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / (x.std() + 1e-8)  # population std, like np.std / Flow-GRPO


def test_standardize_ignores_invalid_entries():
    values = torch.tensor([1.0, 2.0, 4.0, SENTINEL, 7.0])
    valid = torch.tensor([True, True, True, False, True])
    z = standardize(values, valid)
    np.testing.assert_allclose(z[valid].numpy(), _z([1, 2, 4, 7]), rtol=1e-6, atol=1e-6)
    assert z[3].item() == 0.0


def test_normalize_rewards_matches_reference_and_propagates_sentinel():
    a = torch.tensor([0.5, 0.7, 0.1, 0.9, 0.3, 0.6])
    b = torch.tensor([22.0, 21.0, SENTINEL, 23.5, 20.0, 21.5])  # sample 2: b could not score it
    valid = {"a": torch.ones(6, dtype=torch.bool), "b": b != SENTINEL}
    combined, ok = normalize_rewards({"a": a, "b": b}, {"a": 1.0, "b": 0.5}, valid)
    keep = [0, 1, 3, 4, 5]
    za = _z(a.numpy())  # a is standardised over all six (its own valid set)
    zb = _z(b.numpy()[keep])
    expected = za[keep] + 0.5 * zb
    np.testing.assert_allclose(combined[keep].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert ok.tolist() == [True, True, False, True, True, True]
    assert combined[2].item() == SENTINEL


def test_validity_can_be_inferred_from_the_sentinel():
    a = torch.tensor([1.0, SENTINEL, 3.0])
    b = torch.tensor([2.0, 5.0, SENTINEL])
    combined, ok = normalize_rewards({"a": a, "b": b}, {"a": 1, "b": 1})
    assert ok.tolist() == [True, False, False]
    assert combined[1:].tolist() == [SENTINEL, SENTINEL]
    # Each component is standardised over its own valid entries: a over {1, 3} -> -1 for
    # sample 0, b over {2, 5} -> -1 for sample 0.
    assert combined[0].item() == pytest.approx(-2.0)


def test_explicit_mask_keeps_a_legitimate_minus_ten():
    # A 10 kB JPEG scores exactly -10 under jpeg_compressibility: not a failure.
    x = torch.tensor([-10.0, -12.0, -8.0])
    combined, ok = combine_rewards({"jpeg": x}, {"jpeg": 1.0}, {"jpeg": torch.ones(3, dtype=torch.bool)})
    assert ok.all() and combined.tolist() == [-10.0, -12.0, -8.0]


def test_zero_weight_component_is_logged_not_used():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([SENTINEL, 100.0, 200.0])
    combined, ok = combine_rewards({"a": a, "b": b}, {"a": 2.0, "b": 0.0})
    assert ok.all()
    torch.testing.assert_close(combined, 2 * a)


def test_degenerate_batches():
    same = torch.full((4,), 3.0)
    combined, ok = normalize_rewards({"x": same}, {"x": 1.0})
    assert ok.all() and (combined == 0).all()
    none = torch.full((3,), SENTINEL)
    combined, ok = normalize_rewards({"x": none}, {"x": 1.0})
    assert not ok.any() and (combined == SENTINEL).all()
    nan = torch.tensor([1.0, float("nan"), 3.0])
    combined, ok = normalize_rewards({"x": nan}, {"x": 1.0}, torch.ones(3, dtype=torch.bool))
    assert ok.tolist() == [True, False, True] and torch.isfinite(combined).all()


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        combine_rewards({"a": torch.zeros(3), "b": torch.zeros(4)}, {})
    with pytest.raises(ValueError, match="unknown"):
        combine_rewards({"a": torch.zeros(3)}, {"b": 1.0})
    with pytest.raises(ValueError, match="weight"):
        combine_rewards({"a": torch.zeros(3)}, {"a": float("nan")})


def test_gathered_normalisation_equals_union():
    # Two "ranks" score halves; normalising the gathered batch is normalising the union.
    a0, a1 = torch.tensor([1.0, 2.0, SENTINEL]), torch.tensor([4.0, 8.0, 3.0])
    gathered = {"a": torch.cat([a0, a1])}
    combined, ok = normalize_rewards(gathered, {"a": 1.0})
    np.testing.assert_allclose(combined[ok].numpy(), _z([1, 2, 4, 8, 3]), rtol=1e-5, atol=1e-5)


def test_multireward_weights_sentinels_and_normalisation(images, prompts):
    a = Table([0.1, 0.5, 0.3, 0.9, 0.2, 0.4], name="a")
    b = Table([20, 21, 22, 23, 24, 25], invalid=[4], name="b")
    reward = MultiReward({"a": a, "b": b}, {"a": 1.0, "b": 2.0})
    result = reward(images, prompts)
    assert result.per_component["b"][4].item() == SENTINEL and not result.component_valid["b"][4]
    assert result.valid.tolist() == [True, True, True, True, False, True]
    torch.testing.assert_close(result.combined[result.valid], (a.values + 2 * b.values)[result.valid])
    assert result.combined[4].item() == SENTINEL
    normed = MultiReward({"a": a, "b": b}, {"a": 1.0, "b": 2.0}, normalize=True)(images, prompts)
    want, _ = normalize_rewards(result.per_component, result.weights, result.component_valid)
    torch.testing.assert_close(normed.combined, want)


class SlowRemote(RewardModel):
    """A 'remote' scorer whose answer arrives on another thread after local scoring."""

    remote = True

    def __init__(self, local: Table, fail=False):
        self.local, self.fail, self.name = local, fail, "remote"
        self.started = threading.Event()

    def submit(self, images, prompts, metadata):
        fut = concurrent.futures.Future()

        def answer():
            if self.local.calls != 1:  # the local scorer must have run while we were "on the network"
                fut.set_exception(AssertionError(f"local scorer ran {self.local.calls} times before the answer"))
            elif self.fail:
                fut.set_exception(RuntimeError("remote down"))
            else:
                fut.set_result(ScoreOutput.from_scores(torch.arange(6, dtype=torch.float32)))

        self.started.set()
        timer = threading.Timer(0.05, answer)
        timer.start()
        return fut

    def __call__(self, images, prompts, metadata):
        return self.submit(images, prompts, metadata).result()


def test_remote_components_overlap_local_scoring(images, prompts):
    local = Table([1.0] * 6, name="local")
    remote = SlowRemote(local)
    result = MultiReward({"remote": remote, "local": local})(images, prompts)
    torch.testing.assert_close(result.per_component["remote"], torch.arange(6, dtype=torch.float32))
    torch.testing.assert_close(result.combined, torch.arange(6, dtype=torch.float32) + 1)
    local = Table([1.0] * 6, name="local")
    failing = MultiReward({"remote": SlowRemote(local, fail=True), "local": local})
    with pytest.raises(RuntimeError, match="remote down"):
        failing(images, prompts)


class NeverAnswers(RewardModel):
    remote = True
    name = "stuck"

    def submit(self, images, prompts, metadata):
        return concurrent.futures.Future()  # a broken remote scorer: its future never resolves

    def __call__(self, images, prompts, metadata):
        raise AssertionError("not called")


def test_a_stuck_remote_scorer_cannot_hang_the_batch(images, prompts):
    reward = MultiReward({"stuck": NeverAnswers(), "a": Table([0.0] * 6)}, remote_timeout_s=0.2)
    with pytest.raises(TimeoutError, match="stuck"):
        reward(images, prompts)


def test_batch_checks(images, prompts):
    reward = MultiReward({"a": Table([0.0] * 6)})
    with pytest.raises(ValueError, match="one prompt per image"):
        reward(images, prompts[:3])
    with pytest.raises(ValueError, match="metadata"):
        reward(images, prompts, [{}])
    with pytest.raises(TypeError, match="floating"):
        reward((images * 255).to(torch.uint8), prompts)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reward(images[0], prompts)


def test_spec_parsing():
    assert PRESETS["mix"] == {"pickscore": 1.0, "clipscore": 1.0, "hpsv2": 1.0}
    assert parse_spec("mix") == {k: (k, 1.0, {}) for k in ("pickscore", "clipscore", "hpsv2")}
    spec = parse_spec({"mix": 2.0, "geneval": {"weight": 0.5, "urls": ["http://127.0.0.1:9"]}})
    assert spec["hpsv2"] == ("hpsv2", 2.0, {}) and spec["geneval"] == ("geneval", 0.5, {"urls": ["http://127.0.0.1:9"]})
    assert (
        parse_spec({"ur_align": {"scorer": "unifiedreward", "aspects": {"alignment": 1}}})["ur_align"][0]
        == "unifiedreward"
    )
    with pytest.raises(ValueError, match="twice"):
        parse_spec({"mix": 1.0, "pickscore": 1.0})
    with pytest.raises(ValueError):
        parse_spec({"pickscore": "heavy"})


def test_mix_preset_end_to_end(model_root, tiny_arch, images, prompts):
    # The mix preset's three scorers (HPS on the tiny open_clip architecture).
    reward = build_reward(
        {"pickscore": 1.0, "clipscore": 1.0, "hpsv2": {"arch": tiny_arch}}, model_root=model_root, normalize=True
    )
    result = reward(images, prompts, None)
    assert set(result.per_component) == {"pickscore", "clipscore", "hpsv2"} and result.valid.all()
    want = sum(standardize(v, torch.ones(6, dtype=torch.bool)) for v in result.per_component.values())
    torch.testing.assert_close(result.combined, want)
    assert "pickscore_raw" in result.extras and "clipscore_cosine" in result.extras


def test_mix_preset_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="pickscore"):
        build_reward("mix", model_root=tmp_path)


def test_non_finite_scores_become_sentinels():
    # e.g. a half-precision overflow inside a scorer: those samples are "could not score".
    out = ScoreOutput.from_scores(torch.tensor([1.5, float("nan"), float("inf"), -2.0]))
    assert out.valid.tolist() == [True, False, False, True]
    assert out.scores.tolist() == [1.5, SENTINEL, SENTINEL, -2.0]
    explicit = ScoreOutput.from_scores(torch.tensor([1.0, 2.0]), torch.tensor([True, False]))
    assert explicit.scores.tolist() == [1.0, SENTINEL] and explicit.scores.dtype == torch.float32


def test_a_second_reward_borrows_the_components_built_the_same_way(monkeypatch):
    """The eval's reward beside the training's (train/report/evaluator.py): a component of the
    same name, scorer, options, device, dtype and model root is the training one's object, not a
    second copy of its models; the borrower never closes it."""
    train = build_reward({"jpeg_compressibility": 1.0, "jpeg_incompressibility": 1.0})
    closed = []
    for name, component in train.components.items():
        monkeypatch.setattr(component, "close", lambda name=name: closed.append(name))
    evaluation = build_reward({"jpeg_compressibility": 2.0, "jpeg_incompressibility": {"quality": 50}}, reuse=train)
    assert evaluation.components["jpeg_compressibility"] is train.components["jpeg_compressibility"]
    assert evaluation.components["jpeg_incompressibility"] is not train.components["jpeg_incompressibility"]
    assert evaluation.weights == {"jpeg_compressibility": 2.0, "jpeg_incompressibility": 1.0}
    assert evaluation.borrowed == {"jpeg_compressibility"}
    other_dtype = build_reward({"jpeg_compressibility": 1.0}, dtype=torch.float16, reuse=train)
    assert other_dtype.components["jpeg_compressibility"] is not train.components["jpeg_compressibility"]
    evaluation.close()
    assert closed == []
    train.close()
    assert sorted(closed) == ["jpeg_compressibility", "jpeg_incompressibility"]
