"""EMA of the trained weights."""

import pytest
import torch

from precise_fast.train.ema import EMA


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
