"""Triton kernels of precise_fast, shipped as ``precise_fast.kernels``.

They run on CUDA; under ``TRITON_INTERPRET=1`` they run on CPU, which is how CI tests them.
"""
