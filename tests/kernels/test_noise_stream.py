"""The one Philox noise stream: known answers, replay, layout independence, agreement
across backends, and the distribution of the normals."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import precise_fast.sde.ops as ops
from .device_backends import ALL
from precise_fast.sde import philox_normal, sample_step
from precise_fast.sde.philox import philox4x32

needs_cpu = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")


def _words(*values):
    return tuple(torch.tensor(v, dtype=torch.int64) for v in values)


@pytest.mark.parametrize(
    "counter,key,expected",
    [
        # Known-answer vectors of Random123's kat_vectors for philox4x32_10.
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(_words(*counter), _words(*key))
    assert tuple(int(w) for w in out) == expected


def _backend_normals(case, seeds, step, m):
    """The Philox normals of one backend on its device, brought back to CPU."""
    device, backend = case
    seeds = seeds.to(device)
    if backend == "reference":
        return philox_normal(seeds, step, (seeds.shape[0], m)).cpu()
    step = torch.as_tensor(step).to(device)
    if backend in ("cpu", "cuda"):
        return torch.ops.precise_fast.philox_normal(seeds, step, m).cpu()
    from precise_fast.kernels.fused_step import triton_philox_normal

    return triton_philox_normal(seeds, step, m).cpu()


REFERENCE = ("cpu", "reference")
CASES = [pytest.param(REFERENCE, id="cpu-reference")] + ALL


@pytest.mark.parametrize("case", CASES)
def test_replay_is_bitwise(case):
    seeds = torch.tensor([3, -7, 2**40 + 5], dtype=torch.int64)  # negative and > 32-bit seeds too
    a = _backend_normals(case, seeds, 11, 1030)
    b = _backend_normals(case, seeds.clone(), 11, 1030)
    assert torch.equal(a, b)
    c = _backend_normals(case, seeds, 12, 1030)
    assert (a != c).float().mean() > 0.99, "another step must give other noise"


@pytest.mark.parametrize("case", CASES)
def test_noise_does_not_depend_on_batch_layout(case):
    seeds = torch.tensor([10, 20, 30, 40], dtype=torch.int64)
    full = _backend_normals(case, seeds, 5, 2053)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = _backend_normals(case, seeds[perm], 5, 2053)
    assert torch.equal(permuted, full[perm])
    single = _backend_normals(case, seeds[1:2], 5, 2053)
    assert torch.equal(single[0], full[1])
    # A per-row step index equals running the rows one by one.
    steps = torch.tensor([5, 6, 5, 9])
    mixed = _backend_normals(case, seeds, steps, 2053)
    assert torch.equal(mixed[3], _backend_normals(case, seeds[3:4], 9, 2053)[0])
    assert torch.equal(mixed[0], full[0])
    # A longer row continues the same stream: element i never depends on the row length.
    longer = _backend_normals(case, seeds, 5, 4099)
    assert torch.equal(longer[:, :2053], full)


@needs_cpu
def test_cpu_agrees_with_reference_across_chunks():
    """Rows long enough for several parallel chunks (16384 elements) and a ragged tail."""
    seeds = torch.tensor([1, 2**33 + 1], dtype=torch.int64)
    ref = _backend_normals(REFERENCE, seeds, 2**32 + 3, 40003)  # a step above 32 bits: c3 is used
    got = _backend_normals(("cpu", "cpu"), seeds, 2**32 + 3, 40003)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ALL)
def test_backends_agree_with_the_reference_to_float_rounding(case):
    seeds = torch.tensor([0, 1, 987654321], dtype=torch.int64)
    ref = _backend_normals(REFERENCE, seeds, 7, 3001)
    got = _backend_normals(case, seeds, 7, 3001)
    # The reference rounds float64 Box-Muller once; the kernels' float32 polynomials stay
    # within a few ulp (|z| < 5.8, ulp(4) = 4.8e-7).
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("case", [c for c in ALL if c.id != "cpu-cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_one_seed_gives_bitwise_the_same_noise_and_sample_on_every_backend(case, dtype):
    """Issue 12 #5: the kernels' float32 noise math is the same IEEE operations everywhere
    (no FMA contraction, correctly rounded division and sqrt), so normals and samples are
    bitwise those of the C++ CPU kernel; only the per-row sums may differ in order."""
    device, backend = case
    seeds = torch.tensor([0, 5, 2**35 + 3], dtype=torch.int64)
    assert torch.equal(_backend_normals(case, seeds, 9, 2053), _backend_normals(("cpu", "cpu"), seeds, 9, 2053))
    gen = torch.Generator().manual_seed(1)
    x, v = (torch.randn(3, 2053, generator=gen).to(dtype) for _ in range(2))
    s, n, sd = torch.tensor([1.0, 0.8, 0.3]), torch.tensor([0.9, 0.5, 0.0]), torch.tensor([0.7, 0.3, 1e-6])
    for kind in ("precise", "flow_grpo"):
        want, _, want_mean = sample_step(x, v, s, n, sd, kind=kind, seeds=seeds, step_index=4, return_mean=True,
                                         backend="cpu")
        got, _, got_mean = sample_step(*(t.to(device) for t in (x, v, s, n, sd)), kind=kind, seeds=seeds.to(device),
                                       step_index=4, return_mean=True, backend=backend)
        assert torch.equal(got_mean.cpu(), want_mean), f"{backend} {kind}: means differ"
        assert torch.equal(got.cpu(), want), f"{backend} {kind}: samples differ"


@pytest.mark.parametrize("case", CASES)
def test_sample_mode_draws_the_stream(case):
    """With x = v = 0 and std = 1 (dance_grpo: mean = 0) the sample IS the noise."""
    shape = (3, 5, 67)
    seeds = torch.tensor([9, 8, 7])
    device, backend = case
    zeros = torch.zeros(shape, device=device)
    prev, _, _ = sample_step(zeros, zeros, 0.5, 0.4, 1.0, kind="dance_grpo", seeds=seeds.to(device), step_index=4,
                             backend=backend)
    expected = _backend_normals(case, seeds, 4, 5 * 67).reshape(shape)
    assert torch.equal(prev.cpu(), expected)


@needs_cpu
def test_normal_statistics():
    """One million normals of the CPU kernel: moments, KS against N(0, 1), per lane, independence."""
    seeds = torch.arange(8, dtype=torch.int64) * 1000003
    z = _backend_normals(("cpu", "cpu"), seeds, 0, 131072).to(torch.float64)
    n = z.numel()
    assert abs(z.mean().item()) < 5 / n**0.5
    # Var of the sample variance of N(0,1) is 2 / n.
    assert abs(z.var().item() - 1) < 5 * (2 / n) ** 0.5
    # Fourth moment 3 (kurtosis), standard error sqrt(96 / n).
    assert abs((z**4).mean().item() - 3) < 5 * (96 / n) ** 0.5
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-4
    # Each of the 4 Box-Muller lanes (cos/sin of two pairs) is normal on its own.
    lanes = z.reshape(-1, 4)
    for lane in range(4):
        assert stats.kstest(lanes[:, lane].numpy(), "norm").pvalue > 1e-4, f"lane {lane}"
    # Lanes, neighbours and rows are uncorrelated (|r| < 5 / sqrt(n)).
    corr = torch.corrcoef(lanes.T)
    off_diag = corr - torch.eye(4, dtype=torch.float64)
    assert off_diag.abs().max() < 5 / lanes.shape[0] ** 0.5
    rows = torch.corrcoef(z)
    assert (rows - torch.eye(8, dtype=torch.float64)).abs().max() < 5 / z.shape[1] ** 0.5
    # Consecutive steps are independent streams.
    z_next = _backend_normals(("cpu", "cpu"), seeds, 1, 131072).to(torch.float64)
    r = torch.corrcoef(torch.stack([z.flatten(), z_next.flatten()]))[0, 1]
    assert abs(r) < 5 / n**0.5


def test_reference_normal_statistics():
    z = philox_normal(torch.tensor([5, 6]), 3, (2, 50000)).to(torch.float64)
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-4
    assert abs(z.mean().item()) < 5 / z.numel() ** 0.5


def test_philox_normal_rejects_bad_arguments():
    with pytest.raises(ValueError, match="seeds must have shape"):
        philox_normal(torch.tensor([1, 2]), 0, (3, 4))
    with pytest.raises(TypeError, match="integers"):
        philox_normal(torch.tensor([1.0]), 0, (1, 4))
    with pytest.raises(ValueError, match="step_index"):
        philox_normal(torch.tensor([1, 2]), torch.tensor([1, 2, 3]), (2, 4))
