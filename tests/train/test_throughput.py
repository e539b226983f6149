"""Throughput in the trainer (issue 24 item 8): images/s of rollout and update on every epoch line
and in TensorBoard, MFU where the GPU's peak is known, and FLOP counts that equal what torch's
FlopCounterMode sees the rollout engine and the update actually run."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from precise_fast.models import apply_lora
from precise_fast.models.flops import peak_bf16_flops
from precise_fast.rollout import RolloutEngine, sample_g2rpo
from precise_fast.train.phases.rescore import transition_losses
from precise_fast.train.policy.reference import lora_reference
from precise_fast.train.grpo.transitions import from_rollout
from precise_fast.train.report.throughput import Throughput, device_peak_flops, phase_metrics, throughput_line

from .conftest import small_config

FAST = ("sampler.num_batches_per_epoch=2", "sampler.num_steps=4", "sampler.images_per_prompt=4")
H100 = "NVIDIA H100 80GB HBM3"


def test_mfu_only_with_a_known_peak():
    assert device_peak_flops(torch.device("cpu")) is None
    flops, seconds = 3.0e15, 2.0
    with_peak = phase_metrics("rollout", 64, flops, seconds, world_size=2, peak_flops=peak_bf16_flops(H100))
    assert with_peak["throughput/rollout_images_per_s"] == 32.0
    assert with_peak["throughput/rollout_tflops_per_s"] == pytest.approx(750.0)  # per GPU: 3e15 / 2 s / 2 GPUs
    assert with_peak["throughput/rollout_mfu"] == pytest.approx(750e12 / 989e12)
    without = phase_metrics("rollout", 64, flops, seconds, world_size=2, peak_flops=peak_bf16_flops("cpu"))
    assert "throughput/rollout_mfu" not in without and without["throughput/rollout_images_per_s"] == 32.0
    assert throughput_line(with_peak) == "rollout 32 img/s MFU 75.8%"
    assert throughput_line(without) == "rollout 32 img/s"
    assert phase_metrics("update", 0, 0.0, 1.0, 1, 989e12) == {}  # nothing trained: no rate


@pytest.fixture
def lora_case(tiny_pipe):
    transformer = tiny_pipe.transformer
    apply_lora(transformer, rank=4, alpha=4.0)
    engine = RolloutEngine(tiny_pipe, kind="precise", num_steps=5, height=64, width=64, max_text_len=16)
    embeds = engine.prompt_encoder.encode_uncached(["a red apple", "a blue car", "a cat"])
    throughput = Throughput(transformer.config, engine.layout.seq_len, lora_rank=4, lora_targets="paper",
                            reference=True, inner_epochs=1, world_size=1, peak_flops=None)
    return transformer, engine, embeds, throughput


def _counted(fn):
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as two bmms
        out = fn()
    return out, counter.get_total_flops()


def test_rollout_flops_are_what_the_engine_ran(lora_case):
    transformer, engine, embeds, throughput = lora_case
    rollout, counted = _counted(lambda: engine.sample(embeds, seeds=[1, 2, 3], decode=False))
    assert dict(engine.forward_rows) == {embeds.shape[1]: 3 * 5}
    assert throughput.rollout_flops(engine.forward_rows) == counted
    # G2RPO's branches: anchor, per step the stochastic hop, per (step, granularity) the completion.
    before = engine.forward_rows.copy()
    _, counted = _counted(lambda: sample_g2rpo(engine, embeds[:2], init_seeds=[1, 2], member_seeds=[[3, 4], [5, 6]],
                                                      steps=[0, 2], granularities=[1, 2], decode=False))
    assert throughput.rollout_flops(engine.forward_rows - before) == counted


def test_update_flops_are_what_a_lora_update_with_a_reference_runs(lora_case):
    transformer, engine, embeds, throughput = lora_case
    data = from_rollout(engine.sample(embeds, seeds=[1, 2, 3], decode=False), steps=range(3))
    data.advantages = torch.tensor([[1.0], [-1.0], [0.5]]).expand(-1, 3).contiguous()
    reference = lora_reference(transformer, transformer)

    def update():
        rows = transition_losses(transformer, data, [0, 1, 2], clip_range=0.2, ratio_kind="plain", beta=0.04,
                                 reference=reference)
        rows.loss.sum().backward()

    _, counted = _counted(update)
    assert throughput.update_flops(data.batch_size * 3, data.prompt_embeds.shape[1]) == counted


def _run_one_epoch(tmp_path, dist1, monkeypatch, peak):
    from precise_fast.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "device_peak_flops", lambda device: peak)
    t = trainer_module.Trainer(small_config(tmp_path, *FAST), dist1)
    try:
        t.run()
    finally:
        t.close()
    return tmp_path / "run"


def test_epoch_line_and_tensorboard_carry_images_per_s(tmp_path, dist1, monkeypatch, capsys):
    run = _run_one_epoch(tmp_path / "cpu", dist1, monkeypatch, None)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1"))
    assert " img/s" in line and "rollout " in line and "update " in line and "MFU" not in line
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # 2 batches x 4 images sampled; every kept sample trained (the tiny config has 1 inner epoch).
    images = 2 * 4
    assert metrics["throughput/rollout_images_per_s"] == pytest.approx(images / metrics["time/rollout_s"])
    assert 0 < metrics["throughput/update_images_per_s"] <= images / metrics["time/train_s"] * 1.0001
    assert "throughput/rollout_mfu" not in metrics

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(run / "tensorboard")).Reload().Tags()["scalars"]
    assert {"throughput/rollout_images_per_s", "throughput/update_images_per_s"} <= set(scalars)

    # The same CPU run told its device is an H100: MFU on the line and in the scalars.
    run = _run_one_epoch(tmp_path / "h100", dist1, monkeypatch, peak_bf16_flops(H100))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch 1/1"))
    assert line.count("MFU") == 2
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["throughput/update_mfu"] == pytest.approx(metrics["throughput/update_tflops_per_s"] * 1e12 / 989e12)


def test_the_update_time_is_the_steps_own(tmp_path, dist1, monkeypatch):
    """``time/train_s`` (the update's images/s and MFU) counts the optimizer steps, not the check
    of the updated policy that follows them (a clock stood in for: each call advances it by the
    seconds the phase in progress is given)."""
    from types import SimpleNamespace

    from precise_fast.train import trainer as trainer_module

    now = [0.0]
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    real_train, real_check = trainer_module.train_epoch, trainer_module.check_updated_policy

    def train_epoch(*args, **kwargs):
        out = real_train(*args, **kwargs)
        now[0] += 2.0
        return out

    def check_updated_policy(*args, **kwargs):
        now[0] += 100.0
        return real_check(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", train_epoch)
    monkeypatch.setattr(trainer_module, "check_updated_policy", check_updated_policy)
    t = trainer_module.Trainer(small_config(tmp_path, *FAST), dist1)
    try:
        metrics = t.run_epoch(1)
    finally:
        t.close()
    assert metrics["time/train_s"] == 2.0
