"""The Triton kernels (backend "triton") against the reference, through TRITON_INTERPRET=1 on CPU.

The interpreter runs a program in numpy: shapes stay small (1x7, 3x1100 crosses one
1024-element program boundary with a ragged tail).
"""

from __future__ import annotations

import os

import pytest
import torch

from .backend_checks import check_grad, check_mixed_dtypes, check_sample, check_score
from precise_fast.sde import KINDS

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 7), (3, 1100)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_sample_matches_reference(kind, dtype, shape):
    check_sample("triton", kind, shape, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_reference(kind, dtype, shape):
    check_score("triton", kind, shape, dtype)


@pytest.mark.parametrize("kind", ["precise", "dance_grpo"])
def test_non_contiguous_and_explicit_noise(kind):
    check_sample("triton", kind, (2, 515), torch.bfloat16, strided=True, explicit_noise=True)
    check_sample("triton", kind, (2, 515), torch.float16, strided=True)
    check_score("triton", kind, (2, 515), torch.float32, strided=True, with_old=False)


@pytest.mark.parametrize(
    "need_x,with_old,use_mean", [(False, False, False), (True, True, True)], ids=["v", "all"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["precise", "flow_grpo", "cps", "ode"])
def test_gradients_match_reference_autograd(kind, dtype, need_x, with_old, use_mean):
    if kind == "ode" and not (with_old or use_mean):
        pytest.skip("ode has no log-prob: nothing to differentiate")
    check_grad("triton", kind, (2, 1100), dtype, need_x=need_x, with_old=with_old, use_mean=use_mean)


def test_mixed_input_dtypes():
    check_mixed_dtypes("triton", "precise")
