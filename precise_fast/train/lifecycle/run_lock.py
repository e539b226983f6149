"""One run per run folder: a lock that the run's global rank 0 holds for the run's life.

Two trainings started into one folder interleave ``metrics.jsonl``, write two TensorBoard
files and break the next ``--resume`` (issue 25 item 7). The lock is ``<run_dir>/run.lock``:

- The kernel lock is ``flock`` on that file, held through one open file for the process's
  life. The kernel drops it when the holder exits in any way (kill -9 included), so a dead
  holder never leaves a stale lock on its host, and there is nothing to take over by hand.
- The file's content records the holder (host, pid, start time, command) so that a refused
  start can name it. The file is never deleted (a start that opened the old file while a
  new one was created could lock a different inode): a released lock is an empty file.
- Across hosts: on Linux, ``flock`` on NFS is carried out as a POSIX lock on the server
  (NLM / NFSv4), and GPFS, CephFS and Lustre (with the ``flock`` mount option) lock
  cluster-wide, so a start on another node is refused too. On a filesystem whose locks are
  node-local (Lustre ``localflock``, BeeGFS without global locks) two hosts could both get
  it; a start that finds another host's record that was never released warns about it.
- A filesystem without ``flock`` at all (``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP``) falls back
  to creating the file with ``O_EXCL``: a record left by a dead process of this host is
  taken over; one from another host is refused, naming it, to be removed by hand once that
  run is known to be gone.

Only global rank 0 locks; the other ranks learn its decision through a broadcast
(:func:`acquire_agreed`), so every rank raises the same one-line :class:`RunLockError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOCK_NAME = "run.lock"
_NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


class RunFolderError(ValueError):
    """A run folder that cannot be used (a file in its place, another run in it); the message names it."""


class RunLockError(RunFolderError):
    """The run folder is held by another run, or cannot hold a lock; the message names the holder."""


def describe_holder() -> dict:
    """This process as a lock record: host, pid, start time (UTC) and command line."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}


def holder_text(record: dict | None) -> str:
    if not record:
        return "a process that has not recorded itself yet"
    return (f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')}"
            + (f": {record['command']}" if record.get("command") else ""))


def _parse(text: str) -> dict | None:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _read_record(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    return _parse(os.read(fd, 1 << 16).decode("utf-8", "replace"))


def _write_record(fd: int, record: dict | None) -> None:
    os.ftruncate(fd, 0)
    if record:
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_run_folder(run_dir: str | os.PathLike) -> None:
    """Refuse a run folder path that names a file (or lies below one)."""
    run_dir = Path(run_dir)
    for path in (run_dir, *run_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "" if path == run_dir else f" ({path} is a file)"
                raise RunFolderError(f"run.output_dir {run_dir} is a file, not a folder{what}: choose another run.output_dir")
            return


def _folder(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunLockError(f"run.output_dir {run_dir}: cannot create the folder ({err.strerror}: {err.filename})") from None
    return run_dir


class RunLock:
    """The lock on one run folder, held by this process until :meth:`release` (or its exit)."""

    def __init__(self, path: Path, fd: int | None, *, kernel: bool):
        self.path = path
        self._fd = fd
        self._kernel = kernel

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, record: dict | None = None,
                warn: Callable[[str], None] = lambda _: None) -> "RunLock":
        """Lock ``run_dir`` (created if missing) or raise :class:`RunLockError` naming the holder."""
        path = _folder(Path(run_dir)) / LOCK_NAME
        record = record or describe_holder()
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(path, os.O_RDWR), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            if holder is None:  # the holder is between its flock and its record: read once more
                time.sleep(0.2)
                holder = _read_record(fd)
            os.close(fd)
            raise RunLockError(f"run folder {path.parent} is in use by another run ({holder_text(holder)}); "
                               "wait for it to end, stop it, or choose another run.output_dir") from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            if created:  # no flock, but this process created the file: it is ours (O_EXCL)
                _write_record(fd, record)
                return cls(path, fd, kernel=False)
            os.close(fd)
            return cls._acquire_exclusive(path, record)
        previous = _read_record(fd)
        if previous and previous.get("host") != record["host"]:
            warn(f"{path} names a holder that never released it ({holder_text(previous)}); if that run is still "
                 "alive, this filesystem's locks do not reach across hosts: stop one of the two")
        _write_record(fd, record)
        return cls(path, fd, kernel=True)

    @classmethod
    def _acquire_exclusive(cls, path: Path, record: dict) -> "RunLock":
        """Without flock: the record file itself, created with O_EXCL (see the module docstring)."""
        for _ in range(2):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _parse(path.read_text(errors="replace"))
                stale = (holder is not None and holder.get("host") == record["host"] and isinstance(holder.get("pid"), int)
                         and not _pid_alive(holder["pid"]))
                if not stale:
                    if holder is None:  # a start that died between creating the file and recording itself
                        where = f"; if no run is going, remove {path}"
                    elif holder.get("host") != record["host"]:
                        where = (f"; this filesystem has no flock, so a holder on another host cannot be checked: "
                                 f"remove {path} once that run is known to be gone")
                    else:
                        where = ""
                    raise RunLockError(f"run folder {path.parent} is in use by another run ({holder_text(holder)}){where}; "
                                       "wait for it to end or choose another run.output_dir") from None
                # A dead holder of this host: move its record aside under a name of our own, then retry
                # O_EXCL. If another starter took it over first, what we moved is its live record: put it
                # back (link: never over a third one's) and report the live holder.
                aside = path.with_name(f"{LOCK_NAME}.stale-{record['pid']}")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(path, aside)
                    moved = _parse(aside.read_text(errors="replace"))
                    if moved != holder:
                        with contextlib.suppress(FileExistsError):
                            os.link(aside, path)
                        aside.unlink()
                        raise RunLockError(f"run folder {path.parent} is in use by another run ({holder_text(moved)}); "
                                           "wait for it to end or choose another run.output_dir")
                    aside.unlink()
                continue
            _write_record(fd, record)
            return cls(path, fd, kernel=False)
        raise RunLockError(f"run folder {path.parent}: could not take over the stale {path}")

    def release(self) -> None:
        """Empty the record and drop the lock (the file stays: see the module docstring)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _write_record(fd, None)
            if not self._kernel:
                os.unlink(self.path)
        finally:
            os.close(fd)  # closing the only open file of this lock releases the flock

    # ``with RunLock.acquire(run_dir) as lock:`` holds the folder for the block.
    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire_agreed(run_dir: str | os.PathLike, *, is_main: bool, broadcast: Callable[[object], object],
                   warn: Callable[[str], None] = lambda _: None) -> RunLock | None:
    """Global rank 0 locks ``run_dir`` (and gets the lock; the other ranks None); every rank
    gets rank 0's decision through ``broadcast`` (from rank 0: a collective, every rank calls
    this) and raises the same :class:`RunLockError` when it was refused."""
    lock, answer = None, None
    if is_main:
        try:
            lock = RunLock.acquire(run_dir, warn=warn)
        except RunLockError as err:
            answer = str(err)
    answer = broadcast(answer)
    if answer is not None:
        if lock is not None:
            lock.release()
        raise RunLockError(answer)
    return lock
