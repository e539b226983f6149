"""Session-wide test settings shared by every test folder."""

import os

import pytest
import torch

# CI has 2 cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests skip where no CUDA GPU exists (scripts/gpu_check.sh runs them)."""
    _run_named_tests_first(items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _run_named_tests_first(items):
    """Tests whose node id starts with one of the whitespace-separated prefixes in
    ``$PRECISE_FAST_TESTS_FIRST`` run first, in the order the prefixes are named; the rest keep
    their collected order. scripts/gpu_check.sh names its broad checks there: its test step has
    a time limit, and a run cut at that limit should have spent the time on them."""
    prefixes = os.environ.get("PRECISE_FAST_TESTS_FIRST", "").split()
    if not prefixes:
        return

    def rank(item):
        return next((i for i, prefix in enumerate(prefixes) if item.nodeid.startswith(prefix)), len(prefixes))

    items.sort(key=rank)  # stable: ties keep the collected order


def pytest_collection_finish(session):
    """With ``$PRECISE_FAST_TESTS_COLLECTED`` set, the node ids this run will run, one a line:
    bench/gpu_report.py names from it the tests a run cut at its time limit never reached."""
    path = os.environ.get("PRECISE_FAST_TESTS_COLLECTED")
    if path:
        with open(path, "w") as f:
            f.writelines(item.nodeid + "\n" for item in session.items)


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
