"""Fixtures of the rollout tests: the tiny FLUX.2 Klein pipeline, built once per session."""

import pytest

from precise_fast.models import load_pipeline
from precise_fast.models.tiny import process_tiny_pipeline_path


@pytest.fixture(scope="session")
def tiny_dir():
    """Folder of the tiny diffusers pipeline (built once per test process)."""
    return process_tiny_pipeline_path(0)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    """A loaded tiny pipeline shared by tests that do not modify it."""
    return load_pipeline(tiny_dir)


@pytest.fixture
def fresh_pipe(tiny_dir):
    """A private copy for tests that change weights, adapters or attention processors."""
    return load_pipeline(tiny_dir)
