"""The (device, backend) pairs every correctness, gradient and opcheck test runs on.

As pytorch/extension-cpp does, each check runs on "cpu" and "cuda" alike: a CUDA case is
marked ``gpu`` and skipped only where no GPU (or no CUDA build) exists, never rewritten to
CPU tensors. Triton runs on CUDA tensors on a GPU host, and on CPU tensors through the
interpreter (TRITON_INTERPRET=1, set by conftest.py) where there is no GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

import precise_fast.sde.ops as ops

HAS_CUDA = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_no_ext = pytest.mark.skipif(not ops.native_available(), reason=f"precise_fast._C not built: {ops.native_error()}")
_no_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
_no_cuda_ext = pytest.mark.skipif(
    HAS_CUDA and not ops.native_cuda_available(), reason="precise_fast._C built without its CUDA kernels"
)
_no_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="GPU host: the Triton kernels compile for CUDA (the cuda-triton case runs them)"
)
_interpreter_on = pytest.mark.skipif(HAS_CUDA and INTERPRETING, reason="TRITON_INTERPRET=1 is set on a GPU host")

CPU_CPP = pytest.param(("cpu", "cpu"), marks=_no_ext, id="cpu-cpu")
CUDA_CPP = pytest.param(("cuda", "cuda"), marks=[pytest.mark.gpu, _no_gpu, _no_ext, _no_cuda_ext], id="cuda-cuda")
CPU_TRITON = pytest.param(("cpu", "triton"), marks=_no_interpreter, id="cpu-triton")
CUDA_TRITON = pytest.param(("cuda", "triton"), marks=[pytest.mark.gpu, _no_gpu, _interpreter_on], id="cuda-triton")

# The C++ extension's kernels (CPU, and CUDA when built with it) and the Triton kernels.
NATIVE = [CPU_CPP, CUDA_CPP]
TRITON = [CPU_TRITON, CUDA_TRITON]
ALL = NATIVE + TRITON


def to(device: str, *tensors):
    """The tensors on ``device`` (None stays None): inputs are built seeded on CPU, then moved."""
    out = tuple(None if t is None else t.to(device) for t in tensors)
    return out[0] if len(out) == 1 else out
