"""Settings of the launcher tests."""

import pytest


@pytest.fixture(autouse=True)
def _no_visible_devices_setting(monkeypatch):
    """The launcher reads CUDA_VISIBLE_DEVICES (multinode.plan): the tests set it where they mean it."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
