"""Checkpoint integrity (issue 13): per-file SHA-256 in the manifest, verified on resume;
a broken latest checkpoint is skipped with a warning naming it; none verifying is a clear
error; after a rollback the abandoned later checkpoints are set aside; a full disk while
saving is a one-line error that leaves the earlier checkpoints intact."""

import errno
import json

import pytest
import torch

from precise_fast.train.state.checkpoint import (
    CheckpointError,
    CheckpointManager,
    list_checkpoints,
    resolve_resume,
    set_aside_later,
    verify_checkpoint,
)


def _manager(root, keep=5):
    return CheckpointManager(root, keep_last=keep, rank=0, world_size=1, barrier=lambda: None)


def _save(manager, epoch, numel=4096):
    def write_engine(folder):
        folder.mkdir(parents=True)
        torch.save({"w": torch.full((numel,), float(epoch))}, folder / "weights.pt")

    return manager.save(epoch, write_engine=write_engine, trainer_state={"epoch": epoch}, rank_state={"rng": epoch})


def _zero_inside(path, offset=1024, length=4096):
    """Same-size damage: overwrite ``length`` bytes in the middle of the file with zeros."""
    data = bytearray(path.read_bytes())
    assert len(data) > offset + length
    data[offset:offset + length] = bytes(length)
    path.write_bytes(bytes(data))


def test_manifest_holds_a_sha256_of_every_file(tmp_path):
    folder = _save(_manager(tmp_path), 1)
    manifest = json.loads((folder / "checkpoint.json").read_text())
    assert set(manifest["sha256"]) == set(manifest["files"]) and "ds/weights.pt" in manifest["sha256"]
    assert all(len(h) == 64 for h in manifest["sha256"].values())
    assert verify_checkpoint(folder) is None


def test_same_size_corruption_falls_back_with_a_warning_naming_it(tmp_path):
    m = _manager(tmp_path)
    _save(m, 1)
    _save(m, 2)
    _zero_inside(tmp_path / "epoch-000002" / "ds" / "weights.pt")
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1, 2]  # sizes alone cannot tell
    problem = verify_checkpoint(tmp_path / "epoch-000002")
    assert problem is not None and "ds/weights.pt" in problem
    warnings = []
    assert resolve_resume("latest", tmp_path, warn=warnings.append) == tmp_path / "epoch-000001"
    assert len(warnings) == 1 and "epoch-000002" in warnings[0] and "ds/weights.pt" in warnings[0]


def test_truncated_latest_is_skipped_with_a_warning(tmp_path):
    m = _manager(tmp_path)
    _save(m, 1)
    _save(m, 2)
    weights = tmp_path / "epoch-000002" / "ds" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-5])
    warnings = []
    assert resolve_resume("latest", tmp_path, warn=warnings.append) == tmp_path / "epoch-000001"
    assert len(warnings) == 1 and "epoch-000002" in warnings[0]


def test_no_checkpoint_verifies_is_a_clear_error(tmp_path):
    m = _manager(tmp_path)
    _save(m, 1)
    _save(m, 2)
    for tag in ("epoch-000001", "epoch-000002"):
        _zero_inside(tmp_path / tag / "ds" / "weights.pt")
    with pytest.raises(CheckpointError, match="no checkpoint .* verifies.*epoch-000002.*epoch-000001"):
        resolve_resume("latest", tmp_path, warn=lambda _: None)
    # An explicitly named broken checkpoint is refused, never replaced by another.
    with pytest.raises(CheckpointError, match="epoch-000001.*SHA-256"):
        resolve_resume(str(tmp_path / "epoch-000001"), tmp_path, warn=lambda _: None)


def test_latest_with_no_checkpoint_at_all_is_none(tmp_path):
    assert resolve_resume("latest", tmp_path / "missing", warn=lambda _: None) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume(str(tmp_path / "typo"), tmp_path, warn=lambda _: None)


def test_rollback_sets_the_abandoned_timeline_aside(tmp_path):
    """``--resume epoch-1`` in a run that reached epoch 3: epochs 2 and 3 belong to an
    abandoned timeline; a later plain ``--resume`` must continue the new one, not jump back."""
    m = _manager(tmp_path)
    for e in (1, 2, 3):
        _save(m, e)
    warnings = []
    moved = set_aside_later(tmp_path, 1, warn=warnings.append)
    assert [p.name for p in moved] == ["epoch-000002", "epoch-000003"]
    assert len(warnings) == 1 and "epoch-000002" in warnings[0] and "epoch-000003" in warnings[0]
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    assert all(p.is_dir() and verify_checkpoint(p) is None for p in moved)  # kept, not deleted
    _save(m, 2)  # the new timeline's epoch 2
    assert resolve_resume("latest", tmp_path, warn=warnings.append) == tmp_path / "epoch-000002"
    assert torch.load(tmp_path / "epoch-000002" / "trainer.pt") == {"epoch": 2}
    assert set_aside_later(tmp_path, 2, warn=warnings.append) == []


def test_full_disk_while_saving_is_one_clear_error(tmp_path):
    m = _manager(tmp_path)
    _save(m, 1)

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "weights.pt"))

    with pytest.raises(CheckpointError, match=f"no space left on {tmp_path}"):
        m.save(2, write_engine=full, trainer_state={}, rank_state={})
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    assert verify_checkpoint(tmp_path / "epoch-000001") is None


def test_torch_write_failure_on_a_full_disk_is_named_and_other_failures_are_not_masked(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError ("file write failed"); it counts as a
    full disk only when the disk is in fact (nearly) full, else the error stays as it was."""
    from collections import namedtuple

    from precise_fast.train.state import checkpoint as ckpt_module

    m = _manager(tmp_path)

    def torch_fails(folder):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: "
                           "file write failed")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt_module.shutil, "disk_usage", lambda _: usage(10 << 30, 10 << 30, 4096))
    with pytest.raises(ckpt_module.DiskFullError, match="no space left on"):
        m.save(1, write_engine=torch_fails, trainer_state={}, rank_state={})
    monkeypatch.setattr(ckpt_module.shutil, "disk_usage", lambda _: usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(RuntimeError, match="file write failed") as info:
        m.save(1, write_engine=torch_fails, trainer_state={}, rank_state={})
    assert not isinstance(info.value, CheckpointError)
