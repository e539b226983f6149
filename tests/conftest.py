"""Session-wide test settings shared by every test folder."""

import os

import pytest
import torch

# CI has 2 cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests skip where no CUDA GPU exists (scripts/gpu_check.sh runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def gen():
    """A seeded CPU generator: every random test is reproducible."""
    return torch.Generator().manual_seed(1234)


# The tiny FLUX.2 Klein pipeline, shared by the model-layer and rollout tests.


@pytest.fixture(scope="session")
def tiny_dir():
    """Folder of the tiny diffusers pipeline (built once per test process)."""
    from precise_fast.models.tiny import process_tiny_pipeline_path

    return process_tiny_pipeline_path(0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    """A loaded tiny pipeline shared by tests that do not modify it."""
    from precise_fast.models import load_pipeline

    return load_pipeline(tiny_dir)


@pytest.fixture
def fresh_pipe(tiny_dir):
    """A private copy for tests that change weights, adapters or attention processors."""
    from precise_fast.models import load_pipeline

    return load_pipeline(tiny_dir)
