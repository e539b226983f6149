"""Throughput of the reference (eager PyTorch) sampler step: the baseline every fast path beats.

Run: ``pytest bench/bench_reference_step.py --benchmark-only``. Each benchmark records the
bytes it must move at minimum and the achieved GB/s in ``extra_info``, next to the machine's
streaming bandwidth measured in the same run.
"""

import pytest
import torch

from precise_fast.sde import flux2_sigmas, noise_std, reference_step

BATCH, ELEMENTS = 16, 131072  # FLUX.2 Klein latent at 512x512: 128 channels x 32 x 32


def _inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, ELEMENTS, generator=gen).to(dtype)
    v = torch.randn(BATCH, ELEMENTS, generator=gen).to(dtype)
    sigmas = flux2_sigmas(20, 1024)
    std = noise_std(sigmas, "precise", 1.5)
    rows = torch.arange(BATCH) % 20
    return x, v, sigmas[rows], sigmas[rows + 1], std[rows]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["sample", "score"])
def test_reference_step(benchmark, stream_gbs, dtype, mode):
    x, v, s, s_next, std = _inputs(dtype)
    prev = reference_step(x, v, s, s_next, std, kind="precise").prev_sample if mode == "score" else None
    result = benchmark(lambda: reference_step(x, v, s, s_next, std, kind="precise", prev_sample=prev))
    assert torch.isfinite(result.log_prob).all()
    # Minimum traffic: read x, v (and prev), write prev (sample) and the fp32 mean.
    tensors_read = 3 if mode == "score" else 2
    min_bytes = x.numel() * (tensors_read * x.element_size() + (x.element_size() if mode == "sample" else 0) + 4)
    gbs = min_bytes / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(
        {"min_bytes": min_bytes, "achieved_gbs": round(gbs, 2), "stream_gbs": round(stream_gbs, 2),
         "fraction_of_stream": round(gbs / stream_gbs, 3)}
    )
