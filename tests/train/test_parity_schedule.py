"""The paper's EMA and update schedules, on small hand-checkable cases.

Encodes Tencent-Hunyuan/Precise:
- precise_sde/core/ema.py (decay ``min((1+s)/(10+s), 0.9)``, update when ``(s+1) % 8 == 0``) as
  called from precise_sde/train/rl_trainer.py (``ema.step(params, global_step)`` after each
  minibatch's timestep loop, ``global_step`` incremented at each optimizer step);
- precise_sde/train/rl_trainer.py "rebatch for training": kept samples padded with
  zero-advantage ones to a multiple of ``num_batches_per_epoch``, reshaped into exactly that many
  minibatches, ``gradient_accumulation_steps`` of them per optimizer step, each microstep's
  loss the minibatch mean divided by (accumulation steps x timesteps).
"""

import pytest
import torch

from precise_fast.train.phases import update as update_phase
from precise_fast.train.config import ConfigError, load_config
from precise_fast.train.phases.credit import Credit, paper_rows
from precise_fast.train.policy.ema import EMA
from precise_fast.train.grpo.loss import LossRows
from precise_fast.train.grpo.transitions import Transitions

from .conftest import TINY_CONFIG


def _paper_ema_by_hand(values_per_call, steps_per_call, start):
    """The paper's EMAModuleWrapper.step, one call per minibatch, written out."""
    ema = start
    for value, s in zip(values_per_call, steps_per_call):
        if (s + 1) % 8 == 0:
            decay = min((1 + s) / (10 + s), 0.9)
            ema = ema + (1 - decay) * (value - ema)
    return ema


def test_paper_ema_equals_the_hand_schedule_over_100_steps():
    # 8 minibatches per optimizer step; the step counter moves after the 8th minibatch, before its EMA call.
    p = torch.nn.Parameter(torch.tensor([0.0]))
    ema = EMA([p], decay=0.9, interval=8)  # default schedule: the paper's
    assert ema.per_minibatch
    values, steps, s = [], [], 0
    for call in range(8 * 100):
        with torch.no_grad():
            p.fill_(float(call + 1))
        if call % 8 == 7:
            s += 1
        ema.step(s)
        values.append(float(call + 1))
        steps.append(s)
    want = _paper_ema_by_hand(values, steps, 0.0)
    torch.testing.assert_close(ema.shadow[0], torch.tensor([want]), rtol=1e-6, atol=1e-4)
    # 8 back-to-back updates per 8 optimizer steps: s = 7, 15, ... (each s seen by 8 calls).
    assert ema.num_updates == 8 * len([k for k in range(1, 101) if (k + 1) % 8 == 0])
    assert ema.decay_at(7) == pytest.approx(8 / 17) and ema.decay_at(15) == pytest.approx(16 / 25)
    assert ema.decay_at(87) == 0.9 and ema.decay_at(8) is None


def test_fixed_schedule_is_the_constant_decay_option():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    ema = EMA([p], decay=0.9, interval=8, schedule="fixed")
    assert not ema.per_minibatch and ema.decay_at(16) == 0.9 and ema.decay_at(7) is None
    with pytest.raises(ValueError, match="schedule"):
        EMA([p], 0.9, 8, schedule="sometimes")


def _credit(adv: torch.Tensor) -> Credit:
    keep = adv.abs().sum(dim=1) != 0
    n = adv.shape[0]
    z = torch.zeros(n)
    return Credit(advantages=adv, keep=keep, global_raw=z, global_valid=keep, global_components={},
                  global_component_valid={}, global_advantages=adv, global_keep=keep, global_prompt_index=z)


def _transitions(n: int, t: int) -> Transitions:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, t, 1, 1, generator=gen)
    zeros = torch.zeros(n, t)
    return Transitions(
        x=x, x_next=x.clone(), old_log_prob=zeros, old_mean=x.clone(), sigma=zeros, next_sigma=zeros, std=zeros,
        timestep=zeros, jacobian=torch.ones(n, t), step_index=zeros.long(), prompt_embeds=torch.zeros(n, 1, 1),
        text_ids=torch.zeros(n, 1, 4), latent_ids=torch.zeros(n, 1, 4), kind="precise",
    )


def test_padding_adds_zero_advantage_samples_up_to_the_minibatch_count():
    adv = torch.zeros(16, 3)
    adv[[1, 4, 9, 10, 13]] = torch.tensor([1.0, -2.0, 0.5]).expand(5, 3)  # 5 kept of 16
    data = paper_rows(_transitions(16, 3), _credit(adv), num_batches=4, generator=torch.Generator().manual_seed(1))
    assert data.batch_size == 8  # next multiple of 4
    assert int((data.advantages.abs().sum(dim=1) != 0).sum()) == 5
    assert torch.equal(data.weight, torch.ones(8))  # padding counts in each minibatch's mean
    exact = paper_rows(_transitions(16, 3), _credit(adv[:, :] * 0 + 1), num_batches=4, generator=torch.Generator())
    assert exact.batch_size == 16
    assert paper_rows(_transitions(16, 3), _credit(torch.zeros(16, 3)), num_batches=4, generator=torch.Generator()) is None


class _FakePolicy:
    """Stands in for the DeepSpeed engine: a single weight w, gradients recorded per step."""

    def __init__(self):
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.guard = type("G", (), {"check": staticmethod(lambda name, value: None)})()
        self.step_grads = []

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.step_grads.append(float(self.w.grad))
        self.w.grad = None
        return True, 0.0


def _fake_losses(policy, batch, cols, **kwargs):
    # loss of row (b, t) = -A[b, t] * w * x[b, t]: its gradient is -A * x, known by hand.
    idx = torch.as_tensor(cols)
    a = batch.advantages[:, idx].reshape(-1)
    x = batch.x[:, idx, 0, 0].reshape(-1)
    loss = -a * policy.w * x
    d = loss.detach()
    return LossRows(loss=loss, ratio=torch.ones_like(d), clipped=torch.zeros_like(d, dtype=torch.bool),
                    approx_kl=torch.zeros_like(d), policy=d, kl=torch.zeros_like(d))


@pytest.mark.parametrize("kept", [16, 11, 5])
def test_paper_schedule_makes_a_fixed_step_count_with_the_papers_gradient(monkeypatch, tmp_path, kept):
    monkeypatch.setattr(update_phase, "transition_losses", _fake_losses)
    cfg = load_config(TINY_CONFIG, ["sampler.num_batches_per_epoch=4", "train.gradient_accumulation_steps=2",
                                    "train.batch_size=3"])
    assert cfg.train.update_schedule == "paper"
    gen = torch.Generator().manual_seed(2)
    adv = torch.randn(16, 3, generator=gen)
    adv[kept:] = 0.0
    data = paper_rows(_transitions(16, 3), _credit(adv), num_batches=4, generator=torch.Generator().manual_seed(3))
    policy, calls = _FakePolicy(), []
    update_phase.train_epoch(policy, data, settings=update_phase.UpdateSettings.from_config(cfg), epoch_key=1, rank=0, world_size=1, per_forward=1, reference=None,
                             on_update=lambda applied: None, on_minibatch=lambda: calls.append(len(policy.step_grads)))
    assert len(policy.step_grads) == 2  # num_batches_per_epoch / accumulation, whatever was dropped
    assert calls == [0, 1, 1, 2]  # the EMA hook after every minibatch, after the step that ends a window
    m = data.batch_size // 4
    want = float((-data.advantages * data.x[:, :, 0, 0]).sum()) / (m * 2 * 3)  # both steps together
    assert sum(policy.step_grads) == pytest.approx(want, rel=1e-5)


def test_fixed_size_schedule_depends_on_the_kept_count(monkeypatch):
    monkeypatch.setattr(update_phase, "transition_losses", _fake_losses)
    cfg = load_config(TINY_CONFIG, ["sampler.num_batches_per_epoch=4", "train.gradient_accumulation_steps=2",
                                    "train.batch_size=3", "train.update_schedule=fixed_size"])
    data = _transitions(5, 3)
    data.advantages, data.weight = torch.ones(5, 3), torch.ones(5)
    policy = _FakePolicy()
    update_phase.train_epoch(policy, data, settings=update_phase.UpdateSettings.from_config(cfg), epoch_key=1, rank=0, world_size=1, per_forward=0, reference=None,
                             on_update=lambda applied: None)
    assert len(policy.step_grads) == 1  # 5 rows -> 2 minibatches of 3 -> one (short) window


def test_paper_schedule_needs_whole_windows():
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        load_config(TINY_CONFIG, ["sampler.num_batches_per_epoch=6", "train.gradient_accumulation_steps=4"])


@pytest.mark.parametrize(("schedule", "lag"), [("paper", 10.9), ("fixed", 55.7)])
def test_lag_at_the_first_recipe_eval(schedule, lag):
    # Weights that move one unit per optimizer step; the recipe's first eval comes after 50
    # epochs x 2 steps, 8 minibatches each. The numbers: ~11 (paper) vs ~56 steps behind.
    p = torch.nn.Parameter(torch.zeros(1))
    ema, s = EMA([p], 0.9, 8, schedule), 0
    for _ in range(100):
        for minibatch in range(8):
            if minibatch == 7:
                s += 1
                with torch.no_grad():
                    p.fill_(float(s))
                if not ema.per_minibatch:
                    ema.step(s)
            if ema.per_minibatch:
                ema.step(s)
    assert 100 - float(ema.shadow[0]) == pytest.approx(lag, abs=0.05)
