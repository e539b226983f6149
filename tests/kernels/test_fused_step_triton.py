"""The Triton kernels (backend "triton") against the reference, on every device they run on.

On a GPU host the cases run compiled on CUDA tensors (marked gpu); without one, on CPU
tensors through TRITON_INTERPRET=1 (conftest.py). The interpreter runs a program in numpy:
shapes stay small (1x7, 3x1100 crosses one 1024-element program boundary with a ragged tail).
"""

from __future__ import annotations

import pytest
import torch

from .backend_checks import check_grad, check_mixed_dtypes, check_sample, check_sample_out, check_score
from .device_backends import TRITON
from precise_fast.sde import KINDS

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
