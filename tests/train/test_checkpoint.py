"""Atomic checkpoints: a crash mid-write leaves the previous one intact; pruning; validation."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from precise_fast.train.state.checkpoint import CheckpointManager, list_checkpoints, read_manifest, resolve_resume


def _manager(root, keep=2):
    return CheckpointManager(root, keep_last=keep, rank=0, world_size=1, barrier=lambda: None)


def _save(manager, epoch, value=None):
    def write_engine(folder):
        folder.mkdir(parents=True)
        torch.save({"w": torch.full((4,), float(epoch if value is None else value))}, folder / "weights.pt")

    return manager.save(epoch, write_engine=write_engine, trainer_state={"epoch": epoch}, rank_state={"rng": epoch})


def test_save_load_prune(tmp_path):
    m = _manager(tmp_path, keep=2)
    for e in (1, 2, 3):
        _save(m, e)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert (tmp_path / "latest").read_text().strip() == "epoch-000003"
    loaded = {}
    manifest, trainer, rank = m.load(tmp_path / "epoch-000003", read_engine=lambda f: loaded.update(torch.load(f / "weights.pt")))
    assert manifest["epoch"] == 3 and trainer == {"epoch": 3} and rank == {"rng": 3}
    assert torch.equal(loaded["w"], torch.full((4,), 3.0))
    assert resolve_resume("latest", tmp_path) == tmp_path / "epoch-000003"
    assert resolve_resume(str(tmp_path / "epoch-000002"), tmp_path) == tmp_path / "epoch-000002"


def test_a_damaged_checkpoint_is_not_a_checkpoint(tmp_path):
    m = _manager(tmp_path, keep=5)
    _save(m, 1)
    _save(m, 2)
    weights = tmp_path / "epoch-000002" / "ds" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-5])  # truncated after the fact
    assert read_manifest(tmp_path / "epoch-000002") is None
    assert resolve_resume("latest", tmp_path) == tmp_path / "epoch-000001"
    with pytest.raises(ValueError, match="world"):
        CheckpointManager(tmp_path, keep_last=2, rank=0, world_size=2, barrier=lambda: None).load(
            tmp_path / "epoch-000001", read_engine=lambda f: None)


def test_sigkill_mid_write_keeps_the_previous_checkpoint(tmp_path):
    """A real SIGKILL of a process while it writes checkpoint 2 (the crash hook fires after
    the weights are in the temporary folder): checkpoint 1 stays complete and is "latest";
    the next save removes the debris."""
    script = textwrap.dedent(f"""
        import os, torch
        from pathlib import Path
        from precise_fast.train.state.checkpoint import CheckpointManager
        m = CheckpointManager(Path({str(tmp_path)!r}), keep_last=3, rank=0, world_size=1, barrier=lambda: None)
        def write(folder):
            folder.mkdir(parents=True)
            torch.save(torch.zeros(1000), folder / "weights.pt")
        for epoch in (1, 2):
            m.save(epoch, write_engine=write, trainer_state={{"epoch": epoch}}, rank_state={{}})
        print("not reached")
    """)
    env = dict(os.environ, PRECISE_FAST_CRASH_AT="checkpoint_write:2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "not reached" not in proc.stdout
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    assert (tmp_path / ".tmp-epoch-000002" / "ds" / "weights.pt").is_file()  # it did die mid-write
    assert resolve_resume("latest", tmp_path) == tmp_path / "epoch-000001"
    m = _manager(tmp_path, keep=3)
    m.remove_stale()
    assert not (tmp_path / ".tmp-epoch-000002").exists()
    _save(m, 2)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1, 2]
