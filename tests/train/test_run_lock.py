"""One run per run folder (issue 25 item 7; train/lifecycle/run_lock.py): two trainings started into one
folder both ran, interleaving metrics.jsonl. Now the second start is refused (exit 2) naming
the holder, and a holder killed with SIGKILL leaves no stale lock behind."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from precise_fast.train.lifecycle import run_lock
from precise_fast.train.lifecycle.run_lock import LOCK_NAME, RunFolderError, RunLock, RunLockError

from ..child_env import child_env
from .conftest import REPO, TINY_CONFIG

def _train(out, *extra):
    args = [sys.executable, "-m", "precise_fast.train", "--config", str(TINY_CONFIG),
            "--set", f"run.output_dir={out}", "--set", "log.progress=false", "--set", "log.image_every=0",
            "--set", "eval.every=0", "--set", "sampler.num_batches_per_epoch=2", "--set", "sampler.num_steps=4",
            "--set", "sampler.images_per_prompt=4", *extra]
    return subprocess.Popen(args, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_holder(path, pid, proc, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if json.loads(path.read_text()).get("pid") == pid:
                return
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    pytest.fail(f"{path} never named pid {pid}")


@pytest.mark.slow  # two training processes
def test_a_second_training_into_the_same_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    first = _train(out, "--set", "run.epochs=100000")
    try:
        _wait_for_holder(out / LOCK_NAME, first.pid, first)
        second = _train(out, "--set", "run.epochs=1")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if "error" in line]
        assert len(lines) == 1, err
        assert f"run folder {out} is in use by another run" in lines[0]
        assert f"host {socket.gethostname()}, pid {first.pid}, started " in lines[0]
        assert first.poll() is None  # the holder goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The kernel dropped the dead holder's lock: the folder can be taken at once.
    with RunLock.acquire(out) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert (out / LOCK_NAME).read_text() == ""  # released: an empty record, the file stays


HOLDER = "import sys, time; from precise_fast.train.lifecycle.run_lock import RunLock\n" \
         "with RunLock.acquire(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n"


def test_a_lock_held_by_another_process_is_refused_and_freed_by_its_death(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockError, match=f"in use by another run \\(host .*, pid {holder.pid}, started "):
            RunLock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    RunLock.acquire(tmp_path).release()


def test_without_flock_a_dead_holder_of_this_host_is_taken_over_and_another_host_is_refused(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    path = tmp_path / LOCK_NAME
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    path.write_text(json.dumps({"host": host, "pid": dead.pid, "started": "then"}))
    lock = RunLock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockError, match=f"pid {os.getpid()}"):  # held (live pid of this host)
        RunLock.acquire(tmp_path)
    lock.release()
    assert not path.exists() and not list(tmp_path.glob(f"{LOCK_NAME}.stale-*"))
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "started": "then"}))
    with pytest.raises(RunLockError, match=f"host other-node, pid 1.*remove {path}"):
        RunLock.acquire(tmp_path)
    path.write_text("")  # a start that died before recording itself
    with pytest.raises(RunLockError, match=f"not recorded itself yet.*if no run is going, remove {path}"):
        RunLock.acquire(tmp_path)


def test_a_file_where_the_run_folder_should_be_is_one_line(tmp_path):
    target = tmp_path / "run"
    target.write_text("not a folder")
    with pytest.raises(RunFolderError, match=f"run.output_dir {target} is a file, not a folder"):
        RunLock.acquire(target)
    with pytest.raises(RunFolderError, match=f"run.output_dir {target / 'below'} is a file, not a folder \\({target} is a file\\)"):
        RunLock.acquire(target / "below")
