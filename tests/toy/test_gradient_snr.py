"""The estimator of bench/gradient_snr.py (the measurement behind docs/SAMPLER_STUDY.md's
finding that the toy GenEval gradient has no detectable signal at 64-sample epochs): on
synthetic gradients it must find no signal in pure noise and the planted signal otherwise."""

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gradient_snr.py"


def _estimator():
    spec = importlib.util.spec_from_file_location("gradient_snr", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.signal_to_noise


def test_pure_noise_has_no_signal_and_a_planted_direction_is_found():
    signal_to_noise = _estimator()
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randn(2000, generator=gen, dtype=torch.float64) for _ in range(64)]
    none = signal_to_noise(noise)
    assert abs(none["halfcos"]) < 0.1
    assert abs(none["signal"]) < 0.05 * none["noise"] / 8  # |E g|^2 ~ 0 within its error (noise / n)

    mean = torch.zeros(2000, dtype=torch.float64)
    mean[0] = 10.0  # |E g|^2 = 100 against noise 2000 per draw: snr 1 after 20 draws
    some = signal_to_noise([g + mean for g in noise])
    assert 8 < some["minibatches_for_snr1"] < 50
    assert some["halfcos"] > 0.3
