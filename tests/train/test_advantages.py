"""GRPO / G2RPO advantages and reward normalisation, edge cases first."""

import math

import pytest
import torch

from precise_fast.rewards import SENTINEL
from precise_fast.train.grpo.advantages import AdvantageTracker, g2rpo_advantages, grpo_advantages, keep_mask


def _naive(rewards, valid, groups, eps=1e-4, clip=5.0):
    """The formula of shared/SAMPLERS.md, one group at a time."""
    out = [0.0] * len(rewards)
    for g in set(groups):
        members = [i for i, gi in enumerate(groups) if gi == g and valid[i] and math.isfinite(rewards[i])]
        if not members:
            continue
        vals = [rewards[i] for i in members]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        for i in members:
            out[i] = max(-clip, min(clip, (rewards[i] - mean) / (std + eps)))
    return out


def test_matches_the_formula_on_random_groups(gen):
    n = 48
    rewards = torch.randn(n, generator=gen) * 3
    valid = torch.rand(n, generator=gen) > 0.2
    groups = torch.randint(0, 7, (n,), generator=gen)
    got = grpo_advantages(rewards, valid, groups)
    want = torch.tensor(_naive(rewards.tolist(), valid.tolist(), groups.tolist()))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_all_equal_group_rewards_give_zero_and_are_dropped():
    # 0.1 three times in float64: the float mean is 0.10000000000000002, not 0.1; the
    # advantage must still be exactly 0 (not ~1e-13), or the samples would not be dropped.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 2.0, 4.0], dtype=torch.float64)
    assert (rewards[:3].sum() / 3) != rewards[0]
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = grpo_advantages(rewards, torch.ones(6, dtype=torch.bool), groups)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert (adv[3:] != 0).all()
    assert keep_mask(adv).tolist() == [False] * 3 + [True] * 3


def test_sentinel_and_nan_rewards_are_invalid():
    rewards = torch.tensor([SENTINEL, 1.0, 2.0, float("nan"), 5.0, 7.0])
    valid = torch.tensor([False, True, True, True, True, True])  # the NaN is flagged only by its value
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = grpo_advantages(rewards, valid, groups)
    assert adv[0] == 0 and adv[3] == 0
    assert torch.isfinite(adv).all()
    # Invalid members do not enter the statistics: group 0 is {1, 2}, group 1 is {5, 7}.
    torch.testing.assert_close(adv[[1, 2, 4, 5]], torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-3, rtol=0)


def test_one_image_per_prompt_has_no_signal():
    rewards = torch.tensor([3.0, 1.0, 2.0, -1.0])
    adv = grpo_advantages(rewards, torch.ones(4, dtype=torch.bool), torch.arange(4))
    assert torch.equal(adv, torch.zeros(4))
    assert not keep_mask(adv).any()


def test_single_valid_member_gets_zero():
    rewards = torch.tensor([4.0, SENTINEL, SENTINEL])
    adv = grpo_advantages(rewards, torch.tensor([True, False, False]), torch.zeros(3, dtype=torch.long))
    assert torch.equal(adv, torch.zeros(3))


def test_clip():
    rewards = torch.tensor([100.0] + [0.0] * 99)
    adv = grpo_advantages(rewards, torch.ones(100, dtype=torch.bool), torch.zeros(100, dtype=torch.long), clip=5.0)
    assert adv[0] == 5.0 and adv.max() == 5.0


def test_g2rpo_sums_zscores_over_granularities(gen):
    n, k, g = 12, 3, 2
    rewards = torch.randn(n, k, g, generator=gen)
    valid = torch.ones(n, k, g, dtype=torch.bool)
    groups = torch.arange(n) // 4
    # The GRPO z-score form (algorithm.g2rpo_zscore=grpo); the paper's form: test_parity_g2rpo.py.
    adv = g2rpo_advantages(rewards, valid, groups, clip=100.0, eps=1e-4, unbiased=False)
    assert adv.shape == (n, k)
    want = torch.zeros(n, k)
    for step in range(k):
        for gran in range(g):
            want[:, step] += torch.tensor(_naive(rewards[:, step, gran].tolist(), [True] * n, groups.tolist(), clip=100.0))
    torch.testing.assert_close(adv, want, atol=1e-5, rtol=1e-5)
    # A (group, step) whose rewards are all equal at every granularity carries nothing.
    rewards[:4, 1] = 0.5
    assert torch.equal(g2rpo_advantages(rewards, valid, groups)[:4, 1], torch.zeros(4))


def test_keep_mask_per_step():
    adv = torch.tensor([[0.0, 0.0], [0.0, 0.3], [1.0, 0.0]])
    assert keep_mask(adv).tolist() == [False, True, True]


def test_tracker_counts_and_roundtrip():
    tracker = AdvantageTracker()
    stats = tracker.update([0, 0, 1, 1], torch.tensor([1.0, 3.0, SENTINEL, 2.0]),
                           torch.tensor([True, True, False, True]), torch.tensor([True, True, False, False]))
    assert stats["invalid_fraction"] == 0.25 and stats["dropped_fraction"] == 0.5
    assert tracker.last_mean == {0: 2.0, 1: 2.0}
    restored = AdvantageTracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.state_dict() == tracker.state_dict()


@pytest.mark.parametrize("normalize", [True, False])
def test_credit_normalises_components_over_the_global_batch(normalize):
    """assign_credit on one rank: sentinels excluded from the statistics, invalid -> advantage 0."""
    from types import SimpleNamespace

    from precise_fast.train.config import load_config
    from precise_fast.train.phases.credit import CreditSettings, assign_credit

    from .conftest import TINY_CONFIG

    cfg = load_config(TINY_CONFIG, [f"reward.normalize={str(normalize).lower()}"])
    a = torch.tensor([1.0, 2.0, SENTINEL, 4.0, 10.0, 10.0])
    b = torch.tensor([0.0, 100.0, 50.0, 0.0, 200.0, 0.0])
    rollouts = SimpleNamespace(
        rewards={"a": a, "b": b},
        valid={"a": a != SENTINEL, "b": torch.ones(6, dtype=torch.bool)},
        group_ids=torch.tensor([0, 0, 0, 1, 1, 1]),
        prompt_index=torch.tensor([5, 5, 5, 9, 9, 9]),
    )
    credit = assign_credit(rollouts, weights={"a": 1.0, "b": 1.0}, settings=CreditSettings.from_config(cfg), rank=0, num_steps=3)
    assert credit.advantages.shape == (6, 3)
    assert (credit.advantages[2] == 0).all() and not credit.keep[2]
    assert credit.global_raw[2] == SENTINEL
    valid = torch.tensor([True, True, False, True, True, True])
    if normalize:
        # Each component over its own valid samples: b scored sample 2, so it counts in b's statistics.
        za = (a[valid] - a[valid].mean()) / (a[valid].std(unbiased=False) + 1e-8)
        zb = (b - b.mean()) / (b.std(unbiased=False) + 1e-8)
        combined = torch.zeros(6)
        combined[valid] = za + zb[valid]
    else:
        combined = torch.where(valid, a + b, torch.zeros(6))
    want = torch.tensor(_naive(combined.tolist(), valid.tolist(), [0, 0, 0, 1, 1, 1]))
    torch.testing.assert_close(credit.advantages[:, 0], want, atol=1e-4, rtol=1e-4)
