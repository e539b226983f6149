"""Build and install precise_fast.

The C++ CPU extension (``precise_fast._C``, sources ``csrc/*.cpp``, OpenMP) is always
built. The CUDA sources (``csrc/*.cu``) join it only when asked
(``PRECISE_FAST_BUILD_CUDA=1``) or when a CUDA toolkit and a GPU are both present;
``PRECISE_FAST_BUILD_CUDA=0`` forbids them. ``PRECISE_FAST_SKIP_EXT=1`` installs the pure
Python package only (every op then falls back to the reference, with a warning).

The Triton kernels live in the top-level ``kernels/`` folder and ship as
``precise_fast.kernels`` (a top-level package named ``kernels`` would clash with the PyPI
library of that name).

Build here with: ``pip install --no-build-isolation -e .`` (torch must already be installed).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None or value == "" else value


def _want_cuda() -> bool:
    flag = _flag("PRECISE_FAST_BUILD_CUDA")
    if flag is not None:
        return flag not in ("0", "false", "no")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False
    return CUDA_HOME is not None and torch.cuda.is_available()


def _extensions():
    if _flag("PRECISE_FAST_SKIP_EXT") not in (None, "0"):
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    if not cpp:
        return [], {}
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # C++20: torch 2.14's headers need it. -fno-math-errno lets GCC vectorise sqrtf in the
    # Box-Muller loop (with errno it keeps a scalar call). -fopenmp: at::parallel_for is inlined
    # from ATen/ParallelOpenMP.h, whose `omp parallel` region needs it to run on several threads.
    # -ffp-contract=off: GCC fuses a * b + c into FMA only in the AVX2 / AVX-512 variants,
    # which moved 4% of the normals by 1 ulp against the baseline build; without it every
    # CPU variant gives bitwise the same noise and samples (tests/kernels/test_cpu_isa_variants.py).
    cxx_flags = ["-O3", "-std=c++20", "-fno-math-errno", "-ffp-contract=off", *openmp]
    # No --use_fast_math: its approximate division and sqrt would move the CUDA Philox
    # normals several ulp away from the CPU and Triton ones (csrc/step_coefficients.h).
    # --fmad=false mirrors the CPU build's -ffp-contract=off: the same IEEE float
    # operations in the same order, so the CUDA noise can match the CPU's bit for bit.
    nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "--fmad=false"]
    if _want_cuda() and cu:
        ext = CUDAExtension(
            "precise_fast._C",
            cpp + cu,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("PRECISE_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=openmp,
        )
    else:
        ext = CppExtension(
            "precise_fast._C",
            cpp,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=cxx_flags,
            extra_link_args=openmp,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


# What a user's environment may hold: ranges, not requirements.txt's exact pins (those set up
# .venv for the README's two commands). Tested at both ends: torch 2.14.1 / triton 3.8.0 /
# transformers 5.23.0 / numpy 2.4.6 on Python 3.11 (.venv, the whole suite), and torch 2.11.0 /
# triton 3.6.0 / transformers 5.17.0 / numpy 2.5.2 on Python 3.12 (the lent GPU machine's image:
# scripts/device_rehearsal.sh runs the whole suite there). tests/test_install_requires.py holds
# both ends inside these ranges. Upper bounds stop at the first untested minor release for the
# libraries whose internals the project reaches into (torch.library, diffusers' transformer,
# peft's LoRA layers, deepspeed's engine), at the next major release for the others.
INSTALL_REQUIRES = [
    "torch>=2.11,<2.15",
    'triton>=3.6,<3.9; sys_platform == "linux" and platform_machine == "x86_64"',
    "torchvision>=0.26,<0.30",
    "numpy>=2.4,<2.6",
    "diffusers>=0.42.1,<0.43",
    "transformers>=5.17,<5.24",
    "peft>=0.21.2,<0.22",
    "deepspeed>=0.19.8,<0.20",
    "open_clip_torch>=3.3,<3.4",
    "tokenizers>=0.23.2,<0.24",
    "safetensors>=0.8,<0.9",
    "pyyaml>=6.0.3,<7",
    "tqdm>=4.70,<5",
    "rich>=15,<16",
    "tensorboard>=2.21,<3",
    "matplotlib>=3.11,<4",
    "scipy>=1.17,<2",
    "httpx>=0.28.1,<0.29",
    "psutil>=7.2,<8",
    "filelock>=3.12,<5",  # models/tiny.py: the cache build lock (also a dependency of torch and transformers)
]


ext_modules, cmdclass = _extensions()

setup(
    name="precise_fast",
    version="0.1.0",
    description="Fast, trustworthy GRPO post-training of flow-matching text-to-image models (Precise sampler)",
    python_requires=">=3.11",
    classifiers=["Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"],
    packages=find_packages(include=["precise_fast", "precise_fast.*"]) + ["precise_fast.kernels"],
    package_dir={"precise_fast.kernels": "kernels"},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "gpu": ["flash-attn>=2.6"],
        "test": ["pytest>=9.2", "pytest-benchmark>=5.3.1", "pytest-timeout>=2.4", "import-linter>=2.17"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["precise-fast=precise_fast.cli:main"]},
)
