"""Timestep batching: one forward/backward over all trained timesteps of a minibatch gives the
same loss and gradients as the per-timestep loop (to float tolerance), on the tiny FLUX.2 Klein."""

import pytest
import torch

from precise_fast.models import apply_lora
from precise_fast.rollout import RolloutEngine
from precise_fast.train.phases.rescore import transition_losses
from precise_fast.train.grpo.transitions import from_rollout


@pytest.fixture
def case(tiny_pipe):
    transformer = tiny_pipe.transformer
    params = apply_lora(transformer, rank=4, alpha=4.0)
    with torch.no_grad():  # LoRA B starts at 0; give it weights so the adapter matters
        gen = torch.Generator().manual_seed(3)
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=6, height=64, width=64, max_text_len=16)
    rollout = engine.sample(prompts=["a red apple", "a red apple", "a blue car", "a blue car"], seeds=[1, 2, 3, 4],
                            decode=False)
    with torch.no_grad():  # the policy moved since sampling: ratios are not 1, clipping is exercised
        for p in params:
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    data = from_rollout(rollout, steps=range(5))
    data.advantages = torch.tensor([[1.0], [-1.0], [0.5], [-0.5]]).expand(-1, 5).contiguous()
    data.weight = torch.ones(4)
    return transformer, params, data


def _grads(transformer, params, data, chunks, ratio_kind, clip_range):
    """Per-(sample, timestep) losses (B, T) and the gradients of their mean."""
    for p in params:
        p.grad = None
    per_row = torch.zeros(data.batch_size, data.num_steps)
    for cols in chunks:
        rows = transition_losses(transformer, data, cols, clip_range=clip_range, ratio_kind=ratio_kind)
        (rows.loss.sum() / (data.batch_size * data.num_steps)).backward()
        per_row[:, cols] = rows.loss.detach().reshape(data.batch_size, len(cols))
    return per_row, [p.grad.clone() for p in params]


@pytest.mark.parametrize(("ratio_kind", "clip_range"), [("plain", 0.2), ("guard", 1e-4)])
def test_batched_equals_loop(case, ratio_kind, clip_range):
    transformer, params, data = case
    loop_loss, loop = _grads(transformer, params, data, [[c] for c in range(5)], ratio_kind, clip_range)
    batch_loss, batched = _grads(transformer, params, data, [list(range(5))], ratio_kind, clip_range)
    mixed_loss, mixed = _grads(transformer, params, data, [[0, 1, 2], [3, 4]], ratio_kind, clip_range)
    norm = torch.sqrt(sum((g**2).sum() for g in loop))
    assert norm > 0
    # Row by row (the total cancels: advantages sum to 0 and the guard loss divides by a small |J|).
    torch.testing.assert_close(batch_loss, loop_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed_loss, loop_loss, rtol=1e-5, atol=1e-6)
    for a, b, c in zip(loop, batched, mixed):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * float(norm))
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-6 * float(norm))


@pytest.mark.parametrize("overrides, rows", [
    # The paper schedule (the recipes'): a minibatch is a rank's rows over num_batches, up to one
    # sampling batch, whatever train.batch_size says.
    (["sampler.batch_size=8", "sampler.num_batches_per_epoch=2", "train.batch_size=2",
      "train.gradient_accumulation_steps=1"], 8),
    (["train.update_schedule=fixed_size", "train.batch_size=6"], 6),
])
def test_the_memory_probe_measures_the_largest_minibatch_the_schedule_forms(monkeypatch, overrides, rows):
    """CUDA's ``per_forward: auto`` probe (torch.cuda stood in for): it folds timesteps by the
    memory of the largest minibatch training will run, rows repeated where this epoch has fewer."""
    from pathlib import Path
    from types import SimpleNamespace

    from precise_fast.train.config import load_config
    from precise_fast.train.phases import update

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml", overrides)
    settings = update.UpdateSettings.from_config(cfg)
    for name, value in dict(synchronize=None, reset_peak_memory_stats=None, memory_allocated=0,
                            max_memory_allocated=10, empty_cache=None, mem_get_info=(1000, 2000)).items():
        monkeypatch.setattr(torch.cuda, name, lambda *a, value=value, **k: value)
    probed = []
    monkeypatch.setattr(update, "transition_losses", lambda policy, batch, cols, **k: probed.append((batch, cols)))
    monkeypatch.setattr(update, "all_reduce_", lambda t, op: t)
    data = SimpleNamespace(x=torch.zeros(1), batch_size=4, num_steps=10, select=lambda index: index.tolist())
    assert update.probe_per_forward(None, data, settings) == 10  # 60% of 1000 free over 10 a column, capped
    assert probed == [([i % 4 for i in range(rows)], [0])]


def test_train_stats_keep_device_tensors_until_the_summary():
    """Adding a minibatch's rows never reads a value back to the host (on a GPU that would wait
    for the backward just queued); the summary gives the same figures as the rows say, padding
    rows (weight 0) counted nowhere."""
    from types import SimpleNamespace

    from precise_fast.train.phases.update import TrainStats

    stats = TrainStats()
    for ratio, weight in (([0.5, 1.5, 9.0], [1.0, 1.0, 0.0]), ([0.9, 0.2], [0.0, 2.0]), ([3.0], [0.0])):
        r = torch.tensor(ratio)
        zeros = torch.zeros_like(r)
        stats.add(SimpleNamespace(ratio=r, clipped=zeros.bool(), approx_kl=zeros, policy=zeros, kl=zeros),
                  torch.tensor(weight))
        assert all(isinstance(v, torch.Tensor) for v in (stats.rows, stats.ratio_min, stats.ratio_max))
    out = stats.summary()
    assert (out["rows"], out["ratio_min"], out["ratio_max"]) == (4.0, pytest.approx(0.2), 1.5)
    assert out["ratio"] == pytest.approx((0.5 + 1.5 + 2 * 0.2) / 4)
