"""The C++ kernels against the reference: every kind x mode x dtype x odd shape, on CPU
(backend "cpu") and, where a GPU and the CUDA build exist, CUDA (backend "cuda", marked gpu)."""

from __future__ import annotations

import pytest
import torch

import precise_fast.sde.ops as ops
from .backend_checks import check_grad, check_mixed_dtypes, check_sample, check_sample_out, check_score
from .device_backends import NATIVE
from .fused_cases import latents, step_rows
from precise_fast.sde import KINDS, sample_step, score_step

pytestmark = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 1x7: less than one Philox group per lane set and one block; 3x4099: crosses blocks,
# ragged tail; 2x3x5x7: a 4-d latent (rows of 105 elements).
SHAPES = [(1, 7), (3, 4099), (2, 3, 5, 7)]


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_sample_matches_reference(case, kind, dtype, shape):
    check_sample(case, kind, shape, dtype)


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_reference(case, kind, dtype, shape):
    check_score(case, kind, shape, dtype)


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "ode"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_inputs(case, kind, dtype):
    check_sample(case, kind, (3, 1031), dtype, strided=True)
    check_sample(case, kind, (3, 1031), dtype, strided=True, explicit_noise=True, seed=1)
    check_score(case, kind, (3, 1031), dtype, strided=True)


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize("kind", ["cps", "dance_precise", "dance_grpo"])
def test_explicit_noise(case, kind):
    check_sample(case, kind, (3, 4099), torch.bfloat16, explicit_noise=True)


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize("mode", ["sample", "score"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["precise", "flow_grpo"])
def test_full_size(case, kind, dtype, mode):
    """16 x 131072: the benchmark shape, many chunks per row, both threads busy."""
    if mode == "sample":
        check_sample(case, kind, (16, 131072), dtype)
    else:
        check_score(case, kind, (16, 131072), dtype)


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize(
    "need_x,with_old,use_mean",
    [(False, False, False), (True, False, False), (False, True, False), (True, True, True)],
    ids=["v", "v+x", "v+guard", "all"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_reference_autograd(case, kind, dtype, need_x, with_old, use_mean):
    if kind == "ode" and not (with_old or use_mean):
        pytest.skip("ode has no log-prob: nothing to differentiate")
    check_grad(case, kind, (3, 1031), dtype, need_x=need_x, with_old=with_old, use_mean=use_mean)


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize("return_mean", [True, False], ids=["mean", "no-mean"])
@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "ode"])
def test_sample_into_out_buffers(case, kind, return_mean):
    check_sample_out(case, kind, (3, 4099), torch.bfloat16, return_mean=return_mean)
    check_sample_out(case, kind, (2, 3, 5, 7), torch.float32, return_mean=return_mean, explicit_noise=True)


def test_results_do_not_depend_on_thread_count():
    x, v = latents((4, 40000), torch.float32, 0), latents((4, 40000), torch.float32, 1)
    sigma, next_sigma, std = step_rows("precise", 4)
    seeds = torch.tensor([5, 6, 7, 8])
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            prev, lp, _ = sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=seeds, backend="cpu")
            lp2, _, bias = score_step(x, v, prev, sigma, next_sigma, std, kind="precise", old_mean=x.float(), backend="cpu")
            outs.append((prev, lp, lp2, bias))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_sample_mode_is_not_differentiable():
    x = latents((2, 9), torch.float32, 0)
    v = latents((2, 9), torch.float32, 1).requires_grad_(True)
    sigma, next_sigma, std = step_rows("precise", 2)
    prev, lp, _ = sample_step(x, v, sigma, next_sigma, std, kind="precise", seeds=torch.tensor([1, 2]), backend="cpu")
    assert not prev.requires_grad and not lp.requires_grad


def test_scalar_step_values_broadcast():
    x, v = latents((2, 33), torch.float32, 0), latents((2, 33), torch.float32, 1)
    seeds = torch.tensor([1, 2])
    a = sample_step(x, v, 0.9, 0.8, 0.3, kind="cps", seeds=seeds, step_index=4, backend="cpu")
    b = sample_step(
        x, v, torch.full((2,), 0.9), torch.tensor(0.8), torch.full((2,), 0.3), kind="cps", seeds=seeds,
        step_index=torch.tensor([4, 4]), backend="cpu",
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("case", NATIVE)
@pytest.mark.parametrize("kind", ["precise", "flow_grpo"])
def test_mixed_input_dtypes(case, kind):
    check_mixed_dtypes(case, kind)
