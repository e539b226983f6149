"""Fixtures shared by the pytest-benchmark suites in bench/."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bandwidth import machine_info as precise_fast_machine_info  # noqa: E402
from bandwidth import stream_bandwidth_gbs  # noqa: E402

torch.set_num_threads(os.cpu_count() or 1)


@pytest.fixture(scope="session")
def stream_gbs():
    """This machine's streaming bandwidth, measured in the same run as the kernels."""
    return stream_bandwidth_gbs()


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what the numbers were measured on, next to pytest-benchmark's own fields."""
    machine_info["precise_fast"] = precise_fast_machine_info()
    machine_info["stream_add_gbs"] = round(stream_bandwidth_gbs(), 2)
