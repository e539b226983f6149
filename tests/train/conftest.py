"""Fixtures of the trainer tests: a one-rank process group in this process, the tiny model,
and small run configs derived from configs/tiny_cpu.yaml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_cpu.yaml"

# Overrides that make a tiny run as small as the tests need (no PNGs, no eval, no bars).
SMALL = (
    "run.epochs=1",
    "log.progress=false",
    "log.image_every=0",
    "eval.every=0",
    "checkpoint.every=0",
)


def small_config(tmp_path: Path, *overrides: str):
    from precise_fast.train.config import load_config

    return load_config(TINY_CONFIG, [f"run.output_dir={tmp_path / 'run'}", *SMALL, *overrides])


@pytest.fixture(scope="session")
def dist1():
    """A one-rank gloo process group (and DeepSpeed's CPU backend) for in-process engines."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from precise_fast.train.policy.distributed import init_distributed

    return init_distributed("cpu")


@pytest.fixture(scope="session")
def tiny_pipeline_dir():
    from precise_fast.models import tiny_pipeline_path

    return tiny_pipeline_path()


@pytest.fixture
def tiny_pipe(tiny_pipeline_dir):
    """A fresh (unshared: tests add adapters) tiny FLUX.2 Klein pipeline on CPU, float32."""
    from precise_fast.models import load_pipeline

    torch.manual_seed(0)
    return load_pipeline(tiny_pipeline_dir)
