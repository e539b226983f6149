"""Shared setup of the fused-kernel tests.

Without a GPU the Triton kernels run through the interpreter on CPU tensors: TRITON_INTERPRET
must be set before ``precise_fast.kernels.fused_step`` is first imported (triton.jit reads
it when a kernel is defined), so it is set here, before any test module imports it. On a
GPU host it stays unset and the Triton cases run compiled, on CUDA tensors
(``device_backends.py`` pairs every backend with the device it runs on).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Two cores, shared: never oversubscribe.
torch.set_num_threads(min(2, torch.get_num_threads()))
