"""Where a start begins (issue 13 item 2), decided before any model loads (train/resume.py):
``--resume`` never silently starts over, ``--resume-or-start`` may, and a fresh start never
overwrites an earlier run's metrics.jsonl / TensorBoard events."""

import pytest
import torch

from precise_fast.train.checkpoint import CheckpointError, CheckpointManager
from precise_fast.train.resume import RunFolderError, choose_start


def _old_run(out):
    """What a run leaves before its first checkpoint: metrics and TensorBoard events."""
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    (out / "metrics.jsonl").write_text('{"epoch": 1, "reward_mean": 1.0}\n')


def _checkpoint(out, epoch=1):
    m = CheckpointManager(out / "checkpoints", keep_last=3, rank=0, world_size=1, barrier=lambda: None)

    def write(folder):
        folder.mkdir(parents=True)
        torch.save({"w": torch.zeros(3)}, folder / "w.pt")

    return m.save(epoch, write_engine=write, trainer_state={}, rank_state={})


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    for out in (tmp_path / "never_created", tmp_path):
        with pytest.raises(CheckpointError, match="nothing to resume"):
            choose_start(out, "latest", or_start=False, warn=pytest.fail)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        choose_start(tmp_path, str(tmp_path / "mistyped"), or_start=False, warn=pytest.fail)


def test_resume_or_start_starts_fresh_and_keeps_the_old_logs(tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    warnings = []
    assert choose_start(out, None, or_start=True, warn=warnings.append) is None
    assert not (out / "metrics.jsonl").exists() and not (out / "tensorboard").exists()
    (kept,) = (out / "previous").iterdir()
    assert (kept / "metrics.jsonl").read_text().startswith('{"epoch": 1')
    assert (kept / "tensorboard" / "events.out.tfevents.1.host").is_file()
    assert len(warnings) == 1 and str(kept) in warnings[0]


def test_resume_or_start_resumes_when_there_is_a_checkpoint(tmp_path):
    folder = _checkpoint(tmp_path)
    assert choose_start(tmp_path, None, or_start=True, warn=pytest.fail) == folder
    assert choose_start(tmp_path, "latest", or_start=False, warn=pytest.fail) == folder


def test_fresh_start_refuses_a_folder_holding_a_run(tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    with pytest.raises(RunFolderError, match="already holds a run .*metrics.jsonl.*tensorboard"):
        choose_start(out, None, or_start=False, warn=pytest.fail)
    assert (out / "metrics.jsonl").is_file()  # untouched
    other = tmp_path / "ckpt_only"
    _checkpoint(other)
    with pytest.raises(RunFolderError, match="checkpoints/"):
        choose_start(other, None, or_start=False, warn=pytest.fail)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("run: {}\n")  # a run that died while loading left only this
    assert choose_start(empty, None, or_start=False, warn=pytest.fail) is None
