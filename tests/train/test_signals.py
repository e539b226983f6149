"""TERM / INT stop the trainer at a safe point (issue 13 item 6; train/lifecycle/signals.py,
train/supervise.py). In process: the signal is recorded, a checkpoint being written is
finished, a partial epoch is abandoned. The slow test runs the real thing: ``make train``'s
launch line (supervisor -> ``deepspeed`` runner -> launcher -> 2 CPU ranks), TERM to the
supervisor mid-run, then a resume that a scheduler's TERM to the ranks themselves stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from precise_fast.train.state.checkpoint import list_checkpoints, verify_checkpoint
from precise_fast.train.lifecycle.signals import StopRequest, StopRequested

from ..child_env import child_env
from .conftest import REPO, TINY_CONFIG, small_config
from .process_tree import assert_none_left

FAST = ("sampler.num_batches_per_epoch=2", "sampler.num_steps=4", "sampler.images_per_prompt=4")


def test_a_signal_is_recorded_and_stops_at_the_next_check():
    previous = signal.getsignal(signal.SIGTERM)
    stop = StopRequest()
    try:
        assert stop.agreed() == 0
        stop.check("nowhere")  # nothing requested: no stop
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a repeat (launcher + scheduler) does not change the cause
        assert stop.agreed() == signal.SIGTERM
        with pytest.raises(StopRequested, match="stopped by SIGTERM after epoch 3") as info:
            stop.check("after epoch 3")
        assert info.value.exit_code == 143
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_term_during_a_checkpoint_finishes_it_then_stops(tmp_path, dist1, monkeypatch):
    from precise_fast.train import trainer as trainer_module
    from precise_fast.train.state.checkpoint import CheckpointManager

    real_save = CheckpointManager._save

    def save_with_term(self, epoch, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the checkpoint is being written
        return real_save(self, epoch, **kwargs)

    monkeypatch.setattr(CheckpointManager, "_save", save_with_term)
    stop = StopRequest()
    t = trainer_module.Trainer(small_config(tmp_path, *FAST, "run.epochs=3", "checkpoint.every=1"), dist1, stop=stop)
    try:
        with pytest.raises(StopRequested, match="after epoch 1"):
            t.run()
    finally:
        t.close()
        stop.restore()
    root = tmp_path / "run" / "checkpoints"
    assert [e for e, _ in list_checkpoints(root)] == [1]
    assert verify_checkpoint(root / "epoch-000001") is None
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_term_while_sampling_abandons_the_epoch(tmp_path, dist1):
    from precise_fast.train import trainer as trainer_module

    stop = StopRequest(install=False)
    t = trainer_module.Trainer(small_config(tmp_path, *FAST, "run.epochs=2", "checkpoint.every=1"), dist1, stop=stop)
    try:
        stop.signum = signal.SIGTERM
        with pytest.raises(StopRequested, match="while sampling epoch 1"):
            t.run()
    finally:
        t.close()
    assert list_checkpoints(tmp_path / "run" / "checkpoints") == []
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""


# ------------------------------------------------------------------ the real 2-rank job

RUN = ("run.epochs=40", "sampler.batch_size=2", "sampler.num_batches_per_epoch=2", "sampler.images_per_prompt=2",
       "sampler.num_steps=4", "train.batch_size=2", "log.progress=false", "log.image_every=0", "eval.every=0",
       "checkpoint.every=1", "checkpoint.keep_last=3")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, log: Path, *, resume: bool) -> subprocess.Popen:
    """``make train``'s launch line: supervisor -> deepspeed runner -> launcher -> 2 ranks."""
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    overrides = [a for o in (*RUN, f"run.output_dir={out}") for a in ("--set", o)]
    cmd = [sys.executable, "-m", "precise_fast.train.supervise", "--grace", "120", "--", deepspeed, "--num_gpus", "2",
           "--master_port", str(_free_port()), "--module", "precise_fast.train", "--config", str(TINY_CONFIG),
           *overrides, *(["--resume"] if resume else [])]
    env = child_env()
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_checkpoint_after(root: Path, epoch: int, proc: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(e > epoch for e, _ in list_checkpoints(root)):
            return
        assert proc.poll() is None, f"the job ended early (rc {proc.returncode}):\n{log.read_text()[-4000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint after epoch {epoch} within {timeout} s:\n{log.read_text()[-4000:]}")


def _ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    below = psutil.Process(proc.pid).children(recursive=True)
    return [p for p in below if "precise_fast.train" in p.cmdline() and any(a.startswith("--local_rank=") for a in p.cmdline())]


def _stopped_cleanly(proc: subprocess.Popen, family: list[psutil.Process], log: Path) -> None:
    rc = proc.wait(timeout=300)
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM, f"rc={rc}\n{text[-4000:]}"
    assert "stopped by SIGTERM" in text, text[-4000:]
    assert_none_left(family)


def _checkpoints_valid(root: Path) -> list[int]:
    epochs = [e for e, _ in list_checkpoints(root)]
    assert epochs and all(verify_checkpoint(f) is None for _, f in list_checkpoints(root))
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    return epochs


@pytest.mark.slow
def test_term_to_make_train_stops_every_process_and_the_run_resumes(tmp_path):
    out, root = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # 1. TERM to the supervisor (what `kill <make train>` / Ctrl-C reach) mid-run.
    log1 = tmp_path / "first.log"
    first = _start(out, log1, resume=False)
    try:
        _wait_for_checkpoint_after(root, 1, first, log1)
        family = psutil.Process(first.pid).children(recursive=True)
        assert len(_ranks(first)) == 2
        first.send_signal(signal.SIGTERM)
        _stopped_cleanly(first, family, log1)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    done = _checkpoints_valid(root)
    assert max(done) < 40
    # 2. It resumes; a scheduler's TERM to the ranks themselves stops it the same way.
    log2 = tmp_path / "second.log"
    second = _start(out, log2, resume=True)
    try:
        _wait_for_checkpoint_after(root, max(done), second, log2)
        family = psutil.Process(second.pid).children(recursive=True)
        ranks = _ranks(second)
        assert len(ranks) == 2
        for rank in ranks:
            rank.send_signal(signal.SIGTERM)
        _stopped_cleanly(second, family, log2)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
    assert "resumed from" in log2.read_text()
    later = _checkpoints_valid(root)
    assert max(later) > max(done)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(set(epochs)) and epochs[0] == 1  # each epoch once, in order


def test_term_after_an_undue_epoch_saves_it_then_stops(tmp_path, dist1, monkeypatch):
    """``checkpoint.every: 0`` would save only the last of 3 epochs; a TERM during epoch 1's
    training still keeps epoch 1 (its checkpoint is written before the stop)."""
    from precise_fast.train import trainer as trainer_module

    stop = StopRequest(install=False)
    real_train_epoch = trainer_module.train_epoch

    def train_then_term(*args, **kwargs):
        stop.signum = signal.SIGTERM  # arrives after sampling: the next safe point is the epoch's end
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_epoch", train_then_term)
    t = trainer_module.Trainer(small_config(tmp_path, *FAST, "run.epochs=3"), dist1, stop=stop)
    try:
        with pytest.raises(StopRequested, match=r"after epoch 1 \(checkpoint epoch-000001 complete\)"):
            t.run()
    finally:
        t.close()
    root = tmp_path / "run" / "checkpoints"
    assert [e for e, _ in list_checkpoints(root)] == [1] and verify_checkpoint(root / "epoch-000001") is None
