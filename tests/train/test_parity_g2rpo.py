"""G2RPO against its authors' code (github.com/bcmi/Granular-GRPO fastvideo/train_g2rpo_hps.py,
scripts/finetune/finetune_g2rpo_hps.sh), on small cases written out by hand.

- completion: the schedule ``sigmas[:k+2] + sigmas[k+2::g]`` walked from index ``k+1`` with Euler
  (``flow_grpo_step`` at eta 0), the image being the last step's x0-prediction (``pred_original``);
- advantages: per granularity ``(r - mean) / (std + 1e-8)`` with torch's unbiased std, summed;
- one optimizer step per branching step;
- defaults: ``--eta_step_list 0 1 2 3 4 5 6 7``, ``--granular_list 1 2``.
"""

import pytest
import torch

from precise_fast.rollout import granular_path
from precise_fast.train.phases import update as update_phase
from precise_fast.train.grpo.advantages import g2rpo_advantages
from precise_fast.train.config import AlgorithmConfig, load_config

from .conftest import REPO
from .test_parity_schedule import _FakePolicy, _fake_losses, _transitions


def _velocity(x, sigma):  # any smooth field: the comparison is about which sigmas are visited
    return torch.sin(3 * x) + sigma * x


def _authors_completion(z, sigmas, k, g):
    """sample_reference_model's completion: run_ode_sample_step over range(k+1, len(sched)-1)."""
    sched = torch.cat((sigmas[: k + 2], sigmas[k + 2 :: g]))
    pred_original = None
    for i in range(k + 1, len(sched) - 1):
        v = _velocity(z, sched[i])
        pred_original = z - sched[i] * v
        z = z + (sched[i + 1] - sched[i]) * v
    return pred_original


def _our_completion(z, sigmas, path):
    for a, b in zip(path, path[1:]):
        z = z + (sigmas[b] - sigmas[a]) * _velocity(z, sigmas[a])
    return z


@pytest.mark.parametrize("n", [6, 16, 20])
@pytest.mark.parametrize("g", [1, 2, 3])
def test_completion_path_is_the_authors(n, g):
    sigmas = torch.linspace(1, 0, n + 1, dtype=torch.float64) ** 1.3
    z0 = torch.linspace(-1, 1, 7, dtype=torch.float64)
    for k in range(n - 1):  # k = n - 1 has no completion (the authors' loop would be empty)
        want = _authors_completion(z0, sigmas, k, g)
        got = _our_completion(z0, sigmas, granular_path(k + 1, n, g))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert granular_path(3, 8, 2) == [3, 4, 6, 8] and granular_path(2, 8, 2) == [2, 3, 5, 8]  # 7 computed, unused
    assert granular_path(2, 8, 2, "exact_end") == [2, 3, 5, 7, 8] and granular_path(2, 8, 2, "stride") == [2, 4, 6, 8]


def test_advantages_are_the_authors_zscore():
    gen = torch.Generator().manual_seed(4)
    members, steps, grans = 12, 3, 2
    rewards = torch.randn(2 * members, steps, grans, generator=gen, dtype=torch.float64)
    groups = torch.arange(2 * members) // members
    want = torch.zeros(2 * members, steps, dtype=torch.float64)
    for j in range(grans):  # train_one_step: per granularity, per prompt group
        for i in range(2):
            block = rewards[i * members : (i + 1) * members, :, j]
            want[i * members : (i + 1) * members] += (block - block.mean(dim=0)) / (block.std(dim=0) + 1e-8)
    got = g2rpo_advantages(rewards, torch.ones_like(rewards, dtype=torch.bool), groups, clip=100.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_defaults_are_the_authors():
    a = AlgorithmConfig()
    assert a.g2rpo_steps == list(range(8)) and a.g2rpo_granularities == [1, 2]
    assert (a.g2rpo_completion, a.g2rpo_zscore) == ("paper", "paper")


def test_one_optimizer_step_per_branching_step(monkeypatch):
    monkeypatch.setattr(update_phase, "transition_losses", _fake_losses)
    cfg = load_config(REPO / "configs" / "tiny_cpu_g2rpo.yaml", ["train.batch_size=2", "train.gradient_accumulation_steps=4"])
    data = _transitions(6, 4)  # 6 members x 4 branching steps
    data.advantages = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    data.weight = torch.ones(6)
    policy = _FakePolicy()
    update_phase.train_epoch(policy, data, settings=update_phase.UpdateSettings.from_config(cfg), epoch_key=0, rank=0, world_size=1, per_forward=0, reference=None,
                             on_update=lambda applied: None)
    assert len(policy.step_grads) == 4  # one per branching step, whatever the accumulation setting
    # Each step: the mean over the members of that step's loss (the authors' torch.mean over the group).
    per_step = (-data.advantages * data.x[:, :, 0, 0]).mean(dim=0)
    assert sorted(policy.step_grads) == pytest.approx(sorted(per_step.tolist()), rel=1e-5)
