"""Session-wide test settings shared by every test folder."""

import os

import pytest
import torch

# CI has 2 cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    """A seeded CPU generator: every random test is reproducible."""
    return torch.Generator().manual_seed(1234)
