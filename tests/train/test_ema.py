"""EMA of the trained weights."""

import pytest
import torch

from precise_fast.train.policy.ema import EMA


def test_update_rule_interval_and_exact_restore():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([p], decay=0.9, interval=2, schedule="fixed")
    with torch.no_grad():
        p.copy_(torch.tensor([3.0, 4.0]))
    assert not ema.step(1)  # not on the interval
    torch.testing.assert_close(ema.shadow[0], torch.tensor([1.0, 2.0]))
    assert ema.step(2)
    torch.testing.assert_close(ema.shadow[0], torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 4]))
    live = p.detach().clone()
    with ema.applied():
        torch.testing.assert_close(p.detach(), ema.shadow[0])
    assert torch.equal(p.detach(), live)
    with pytest.raises(RuntimeError), ema.applied():  # restored even when the block raises
        raise RuntimeError
    assert torch.equal(p.detach(), live)


def test_state_roundtrip_and_shape_check():
    p = torch.nn.Parameter(torch.randn(3))
    ema = EMA([p], decay=0.5, interval=1, schedule="fixed")
    ema.step(1)
    other = EMA([torch.nn.Parameter(torch.zeros(3))], decay=0.5, interval=1, schedule="fixed")
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], ema.shadow[0]) and other.num_updates == 1
    with pytest.raises(ValueError, match="EMA"):
        EMA([torch.nn.Parameter(torch.zeros(4))], 0.5, 1).load_state_dict(ema.state_dict())


def test_bf16_weights_get_a_float32_shadow():
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    assert EMA([p], 0.9, 1).shadow[0].dtype == torch.float32


def test_paper_ramp_reaches_the_decay_where_the_closed_form_says():
    """Tencent-Hunyuan/Precise precise_sde/core/ema.py: decay min((1 + s) / (10 + s), decay)."""
    p = [torch.nn.Parameter(torch.zeros(1))]
    for decay, expected in ((0.9, 80), (0.97, 290), (0.5, 8), (0.05, 0)):
        ema = EMA(p, decay, 1)
        reached = ema.decay_reached_at()
        assert reached == expected, decay
        assert ema.decay_at(reached) == decay and (reached == 0 or ema.decay_at(reached - 1) < decay)
    assert EMA(p, 0.97, 1, schedule="fixed").decay_reached_at() == 0
    # With ema_interval 8 the updates run at s = 7, 15, ...: the first at s >= 80 is s = 87.
    ema = EMA(p, 0.9, 8)
    assert ema.decay_reached_at() == 87 and ema.decay_at(87) == 0.9
    assert all(ema.decay_at(s) is None for s in range(80, 87)) and ema.decay_at(79) < 0.9


def test_a_short_run_is_told_its_ema_decay_never_took_effect():
    """The main job makes 40 optimizer steps: 0.9 would need 80, so setting it changes nothing."""
    ema = EMA([torch.nn.Parameter(torch.zeros(1))], 0.9, 1)
    note = ema.unreached_decay_note(40)
    assert "train.ema_decay=0.9 never took effect" in note and "step 80" in note and "decay 0.820" in note
    assert ema.unreached_decay_note(80) is None
    assert EMA([torch.nn.Parameter(torch.zeros(1))], 0.9, 1, schedule="fixed").unreached_decay_note(1) is None
