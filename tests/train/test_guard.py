"""Non-finite guard: a NaN/Inf update is skipped, counted, and never touches the weights.

Runs a real one-rank DeepSpeed ZeRO-2 engine (and ZeRO-0) in this process.
"""

import pytest
import torch

from precise_fast.train.config import load_config
from precise_fast.train.policy.zero import PolicyEngine

from .conftest import TINY_CONFIG


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _engine(stage):
    torch.manual_seed(0)
    net = _Net()
    cfg = load_config(TINY_CONFIG, [f"train.zero_stage={stage}", "train.lr=0.1"])
    return net, PolicyEngine(net, list(net.parameters()), cfg, torch.device("cpu"))


def _state(net, engine):
    weights = [p.detach().clone() for p in net.parameters()]
    return weights, engine.applied_steps


@pytest.mark.parametrize("stage", [2, 0])
@pytest.mark.parametrize("poison", ["gradient", "loss"])
def test_nonfinite_update_is_skipped(dist1, stage, poison):
    net, eng = _engine(stage)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    # A clean update first (so Adam has moments that a bad step could corrupt).
    eng.backward(eng.engine(x).pow(2).mean())
    assert eng.step()[0]
    before, steps = _state(net, eng)
    # Microbatch 1 is fine, microbatch 2 is poisoned: the whole update must be skipped.
    eng.backward(eng.engine(x).pow(2).mean())
    out = eng.engine(x)
    if poison == "gradient":
        # sqrt at 0: a finite loss (the extra term is 0) whose gradient is infinite.
        bad = out.pow(2).mean() + (out - out.detach()).sqrt().sum()
        assert torch.isfinite(bad)
    else:
        bad = out.pow(2).mean() * torch.tensor(float("inf"))
        eng.guard.check("loss", bad)
    eng.backward(bad)
    applied, _ = eng.step()
    assert not applied
    after, steps_after = _state(net, eng)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert steps_after == steps
    assert eng.guard.skipped_updates == 1 and eng.guard.skipped["gradient"] == 1
    if poison == "loss":
        assert eng.guard.skipped["loss"] == 1
    # The next clean update applies, from the same state as if the bad one never happened.
    eng.backward(eng.engine(x).pow(2).mean())
    assert eng.step()[0]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert not all(torch.equal(a, p.detach()) for a, p in zip(after, net.parameters()))


def test_skipped_update_matches_never_having_happened(dist1):
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    net_a, a = _engine(2)
    net_b, b = _engine(2)
    for eng in (a, b):
        eng.backward(eng.engine(x).pow(2).mean())
        eng.step()
    out = b.engine(x)
    b.backward((out * float("nan")).sum())
    assert not b.step()[0]
    for eng in (a, b):
        eng.backward(eng.engine(x).pow(2).mean())
        eng.step()
    assert all(torch.equal(p, q) for p, q in zip(net_a.parameters(), net_b.parameters()))
