"""The prompt sampler: k images per prompt spread across ranks, world-size independent, resumable."""

from collections import Counter

import pytest

from precise_fast.train.phases.prompt_groups import GroupSampler


def _make(world, rank, num_batches=4, batch=3, k=4, size=10, spread=True, seed=7):
    return GroupSampler(size, group_size=k, batch_size=batch, num_batches=num_batches, world_size=world, rank=rank,
                        seed=seed, spread=spread)


def test_every_group_has_k_members_across_ranks():
    world = 2
    samplers = [_make(world, r) for r in range(world)]
    for _ in range(3):
        dealt = [s.next_epoch() for s in samplers]
        everything = [slot for _, batches, _ in dealt for b in batches for slot in b]
        assert len(everything) == world * 4 * 3
        per_group = Counter(s.group for s in everything)
        assert set(per_group.values()) == {4}
        assert len({(s.group, s.member) for s in everything}) == len(everything)
        # One prompt per group, and members do land on different ranks.
        assert all(len({s.prompt_index for s in everything if s.group == g}) == 1 for g in per_group)
        ranks_of = {g: {r for r, (_, batches, _) in enumerate(dealt) for b in batches for s in b if s.group == g} for g in per_group}
        assert any(len(r) > 1 for r in ranks_of.values())
        assert all(d[2] == dealt[0][2] for d in dealt)  # every rank knows the same global order


def test_prompt_stream_visits_every_prompt_once_per_pass():
    s = _make(1, 0, num_batches=5, batch=4, k=2, size=10)  # 10 groups per epoch = one pass
    _, _, slots = s.next_epoch()
    assert sorted({x.prompt_index for x in slots}) == list(range(10))


def test_world_size_does_not_change_the_samples():
    one = _make(1, 0, num_batches=8)
    two = [_make(2, r, num_batches=4) for r in range(2)]
    for _ in range(2):
        _, batches1, order1 = one.next_epoch()
        dealt = [t.next_epoch() for t in two]
        assert order1 == dealt[0][2]
        flat1 = [s for b in batches1 for s in b]
        flat2 = [s for _, batches, _ in dealt for b in batches for s in b]
        assert flat1 == flat2


def test_resume_position():
    a = _make(2, 1)
    a.next_epoch()
    b = _make(2, 1)
    b.load_state_dict(a.state_dict())
    assert a.next_epoch() == b.next_epoch()
    with pytest.raises(ValueError, match="prompts"):
        _make(2, 1, size=11).load_state_dict(a.state_dict())


def test_whole_groups_per_rank_for_g2rpo():
    samplers = [_make(2, r, num_batches=2, batch=2, k=3, spread=False) for r in range(2)]
    for r, s in enumerate(samplers):
        _, batches, _ = s.next_epoch()
        for b in batches:
            assert len(b) == 2 * 3
            groups = [x.group for x in b]
            assert groups == sorted(groups) and set(Counter(groups).values()) == {3}
            assert [x.member for x in b] == [0, 1, 2, 0, 1, 2]


def test_group_size_must_divide():
    with pytest.raises(ValueError, match="divide"):
        _make(2, 0, num_batches=1, batch=3, k=4)
