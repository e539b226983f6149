"""The policy engine on a GPU host: what DeepSpeed adds around the policy's own forward (nothing a
CUDA graph cannot capture), and which GPU a rank takes.

The rollout engine captures calls of the transformer module itself, which ``deepspeed.initialize``
hooks (its forward pre-hook starts the throughput timer). DeepSpeed's default timer synchronizes
the device in that hook once two optimizer steps have passed; a device synchronize inside a
stream capture is an error on CUDA, so later captures (a new eval plan, an SDE window) would fail.
Runs a real one-rank DeepSpeed engine in this process, counting the accelerator's synchronize calls.
"""

import pytest
import torch

from precise_fast.train.config import load_config
from precise_fast.train.policy.zero import PolicyEngine, deepspeed_config

from .conftest import TINY_CONFIG


def test_the_throughput_timer_is_off():
    ds = deepspeed_config(load_config(TINY_CONFIG))
    assert ds["timers"] == {"throughput": {"enabled": False}}


@pytest.mark.parametrize("stage", [2, 0])
def test_module_calls_never_synchronize_the_device_after_updates(dist1, monkeypatch, stage):
    from deepspeed.accelerator import get_accelerator

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    cfg = load_config(TINY_CONFIG, [f"train.zero_stage={stage}", "train.lr=0.1"])
    engine = PolicyEngine(net, list(net.parameters()), cfg, torch.device("cpu"))
    syncs = []
    monkeypatch.setattr(get_accelerator(), "synchronize", lambda *a, **k: syncs.append(1))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    for _ in range(4):  # DeepSpeed's timer starts synchronizing at its second step
        engine.backward(engine.engine(x).pow(2).mean())
        assert engine.step()[0]
        syncs.clear()
        with torch.no_grad():
            net(x)  # as the rollout engine calls it (and captures it on a GPU)
        assert syncs == []


@pytest.mark.parametrize("local_rank, count, want", [("0", 1, "cuda:0"), ("3", 4, "cuda:3"), ("1", 1, None)])
def test_each_rank_takes_the_gpu_of_its_local_rank_or_says_there_is_none(monkeypatch, local_rank, count, want):
    """More processes on a host than GPUs (``precise-fast train`` starts the paper's 8 unless
    ``--num-gpus`` says otherwise) is one clear line, not NCCL's "invalid device ordinal"."""
    from precise_fast.train.policy.distributed import pick_device

    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if want is None:
        with pytest.raises(RuntimeError, match=r"LOCAL_RANK 1 but this host shows 1 CUDA device\(s\): start at most 1 "
                                                r"processes per node \(--num-gpus 1\)"):
            pick_device("cuda")
    else:
        assert str(pick_device("auto")) == want
