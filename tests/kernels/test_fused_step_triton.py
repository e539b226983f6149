"""The Triton kernels (backend "triton") against the reference, on every device they run on.

On a GPU host the cases run compiled on CUDA tensors (marked gpu); without one, on CPU
tensors through TRITON_INTERPRET=1 (conftest.py). The interpreter runs a program in numpy:
shapes stay small (1x7, 3x1100 crosses one 1024-element program boundary with a ragged tail).
"""

from __future__ import annotations

import pytest
import torch

from .backend_checks import check_grad, check_mixed_dtypes, check_sample, check_sample_out, check_score
from .device_backends import CUDA_TRITON, TRITON
import precise_fast.sde.ops as ops
from precise_fast.sde import KINDS, sample_step

needs_cpu_kernel = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 7), (3, 1100)]


@pytest.mark.parametrize("case", TRITON)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_sample_matches_reference(case, kind, dtype, shape):
    check_sample(case, kind, shape, dtype)


@pytest.mark.parametrize("case", TRITON)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_reference(case, kind, dtype, shape):
    check_score(case, kind, shape, dtype)


@pytest.mark.parametrize("case", TRITON)
@pytest.mark.parametrize("kind", ["precise", "dance_grpo"])
def test_non_contiguous_and_explicit_noise(case, kind):
    check_sample(case, kind, (2, 515), torch.bfloat16, strided=True, explicit_noise=True)
    check_sample(case, kind, (2, 515), torch.float16, strided=True)
    check_score(case, kind, (2, 515), torch.float32, strided=True, with_old=False)


@pytest.mark.parametrize("case", TRITON)
@pytest.mark.parametrize("return_mean", [True, False], ids=["mean", "no-mean"])
@pytest.mark.parametrize("kind", ["precise", "ode"])
def test_sample_into_out_buffers(case, kind, return_mean):
    check_sample_out(case, kind, (3, 1100), torch.bfloat16, return_mean=return_mean)
    check_sample_out(case, kind, (2, 9), torch.float32, return_mean=return_mean, explicit_noise=True)


@pytest.mark.parametrize("case", TRITON)
@pytest.mark.parametrize(
    "need_x,with_old,use_mean", [(False, False, False), (True, True, True)], ids=["v", "all"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "cps", "ode"])
def test_gradients_match_reference_autograd(case, kind, dtype, need_x, with_old, use_mean):
    if kind == "ode" and not (with_old or use_mean):
        pytest.skip("ode has no log-prob: nothing to differentiate")
    check_grad(case, kind, (2, 1100), dtype, need_x=need_x, with_old=with_old, use_mean=use_mean)


@pytest.mark.parametrize("case", TRITON)
def test_mixed_input_dtypes(case):
    check_mixed_dtypes(case, "precise")


# ----------------------------------------------------------------------------- the real size, on the GPU
# 16 x 131072 (FLUX.2 Klein's 512x512 latent, the benchmark shape): 128 programs per row, 2048
# per launch, as the C++ kernels' test_full_size. Compiled Triton on CUDA only: the
# interpreter would take minutes per case on CPU.
FULL = (16, 131072)


@pytest.mark.parametrize("case", [CUDA_TRITON])
@pytest.mark.parametrize("mode", ["sample", "score"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["precise", "flow_grpo"])
def test_full_size(case, kind, dtype, mode):
    if mode == "sample":
        check_sample(case, kind, FULL, dtype)
    else:
        check_score(case, kind, FULL, dtype)


@pytest.mark.parametrize("case", [CUDA_TRITON])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_full_size_gradients(case, dtype):
    check_grad(case, "precise", FULL, dtype, need_x=True, with_old=True, use_mean=True)


@needs_cpu_kernel
@pytest.mark.parametrize("case", [CUDA_TRITON])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_full_size_samples_are_bitwise_the_cpu_kernels(case, dtype):
    """One seed, bitwise the same means and samples as the C++ CPU kernel at the real size
    (the sm_90 PTX rules of test_sm90_compile.py, seen in the results)."""
    gen = torch.Generator().manual_seed(3)
    x, v = (torch.randn(FULL, generator=gen).to(dtype) for _ in range(2))
    s, n = torch.linspace(1.0, 0.3, FULL[0]), torch.linspace(0.9, 0.2, FULL[0])
    sd = 0.5 * n
    seeds = torch.arange(FULL[0], dtype=torch.int64) * 7919 + 2**33
    for kind in ("precise", "flow_grpo"):
        want, want_lp, want_mean = sample_step(x, v, s, n, sd, kind=kind, seeds=seeds, step_index=5, return_mean=True,
                                               backend="cpu")
        got, got_lp, got_mean = sample_step(*(t.cuda() for t in (x, v, s, n, sd)), kind=kind, seeds=seeds.cuda(),
                                            step_index=5, return_mean=True, backend="triton")
        assert torch.equal(got_mean.cpu(), want_mean), f"{kind}: means differ"
        assert torch.equal(got.cpu(), want), f"{kind}: samples differ"
        # The per-row sums add in another order (blocks of 1024 vs the CPU's chunks).
        torch.testing.assert_close(got_lp.cpu(), want_lp, rtol=1e-5, atol=1e-5)
