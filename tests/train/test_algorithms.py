"""Every algorithm and engine variant runs a real epoch end to end (one rank, in process):
G2RPO, the SDE window, the KL term (LoRA off as the reference, and a frozen copy for full
fine-tuning), ZeRO 0 / 1 / 3, full fine-tuning under ZeRO-3 (parameters gathered for rollouts)."""

import math

import pytest
import torch

from precise_fast.train.config import load_config
from precise_fast.train.phases.sample import SampleSettings, g2rpo_steps, trained_steps
from precise_fast.train.trainer import Trainer

from .conftest import REPO, SMALL

TINY = ("sampler.num_steps=6", "sampler.batch_size=4", "sampler.num_batches_per_epoch=2", "sampler.images_per_prompt=4",
        "train.batch_size=2", "train.gradient_accumulation_steps=1")


def _epoch(tmp_path, dist, config="tiny_cpu.yaml", *overrides):
    cfg = load_config(REPO / "configs" / config, [f"run.output_dir={tmp_path / 'run'}", *SMALL, *TINY, *overrides])
    trainer = Trainer(cfg, dist)
    try:
        with trainer.policy.gathered():  # ZeRO-3 holds partitions; gather to see the weights
            before = [p.detach().clone() for p in trainer.policy.params]
        metrics = trainer.run_epoch(1)
        with trainer.policy.gathered():
            changed = any(not torch.equal(a, p.detach()) for a, p in zip(before, trainer.policy.params))
    finally:
        trainer.close()
    assert metrics["train/applied_updates"] >= 1 and changed
    assert metrics["train/first_ratio_abs_dev"] == 0.0
    assert all(math.isfinite(v) for k, v in metrics.items() if k.startswith("train/"))
    return metrics


def test_g2rpo(dist1, tmp_path):
    m = _epoch(tmp_path, dist1, "tiny_cpu_g2rpo.yaml", "sampler.batch_size=1", "sampler.images_per_prompt=3",
               "algorithm.g2rpo_steps=[0,2,4]", "algorithm.g2rpo_steps_per_batch=2", "algorithm.g2rpo_granularities=[1,2]")
    assert m["advantage/kept_fraction"] > 0


def test_g2rpo_step_choice_is_seeded():
    settings = SampleSettings.from_config(load_config(REPO / "configs" / "tiny_cpu_g2rpo.yaml"))
    picks = {tuple(g2rpo_steps(settings, 0, b)) for b in range(8)}
    assert all(len(p) == 2 and set(p) <= {0, 2, 4, 6} for p in picks) and len(picks) > 1
    assert g2rpo_steps(settings, 3, 1) == g2rpo_steps(settings, 3, 1)


def test_sde_window(dist1, tmp_path):
    _epoch(tmp_path, dist1, "tiny_cpu_sde_window.yaml", "algorithm.window_size=2", "algorithm.window_start_max=3")
    settings = SampleSettings.from_config(load_config(REPO / "configs" / "tiny_cpu_sde_window.yaml"))
    starts = set()
    for epoch in range(12):
        mode, window, steps = trained_steps(settings, epoch)
        assert mode == "window" and steps == list(range(*window)) and len(steps) == 3
        starts.add(window[0])
    assert starts <= set(range(0, 6)) and len(starts) > 1


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_kl_to_the_base(dist1, tmp_path, finetune):
    m = _epoch(tmp_path, dist1, "tiny_cpu.yaml", "train.beta=0.5", f"model.finetune={finetune}", "train.lr=1e-2",
               "train.zero_stage=0" if finetune == "full" else "train.zero_stage=2")
    # The first minibatch is scored before any update (policy == base: KL exactly 0); the
    # second after one, so the epoch's mean KL term is positive.
    assert m["train/kl_loss"] > 0


@pytest.mark.parametrize(("stage", "finetune"), [(0, "lora"), (1, "lora"), (3, "lora"), (3, "full")])
def test_zero_stages(dist1, tmp_path, stage, finetune):
    _epoch(tmp_path, dist1, "tiny_cpu.yaml", f"train.zero_stage={stage}", f"model.finetune={finetune}", "train.lr=1e-3")


def test_zero3_ema_is_what_eval_sees(dist1, tmp_path):
    """Under ZeRO-3 the EMA tracks weight partitions; swapped in and gathered it must be the full EMA."""
    cfg = load_config(REPO / "configs" / "tiny_cpu.yaml", [f"run.output_dir={tmp_path / 'run'}", *SMALL, *TINY,
                                                           "train.zero_stage=3", "train.lr=1e-2", "train.ema_decay=0.5"])
    trainer = Trainer(cfg, dist1)
    try:
        trainer.run_epoch(1)
        params, shadow = trainer.policy.params, trainer.ema.shadow
        with trainer.policy.gathered():
            live = [p.detach().clone() for p in params]
        with trainer.ema.applied(), trainer.policy.gathered():
            seen = [p.detach().clone() for p in params]
        with trainer.policy.gathered():
            back = [p.detach().clone() for p in params]
    finally:
        trainer.close()
    assert all(torch.equal(s.flatten()[: v.numel()], v.flatten()) for s, v in zip(shadow, seen))
    assert any(not torch.equal(a, b) for a, b in zip(live, seen))  # the EMA is not the live weights
    assert all(torch.equal(a, b) for a, b in zip(live, back))
