"""Atomic, pruned checkpoints that a killed run can always resume from.

A checkpoint is a folder ``<root>/epoch-000012/`` holding DeepSpeed's files (``ds/``:
trained weights and optimizer partitions), ``trainer.pt`` (EMA, sampler position,
advantage tracker, counters, metric history, config), one ``rank00000.pt`` per rank (RNG
states and whatever that rank alone holds) and ``checkpoint.json``, the manifest with
every file's size.

Writing is atomic: every rank writes into ``<root>/.tmp-<tag>/``; after a barrier rank 0
fsyncs every file, writes the manifest last, fsyncs, renames the folder to its final name
(atomic on POSIX within one filesystem) and fsyncs the parent. A crash at any moment leaves
either the previous checkpoints untouched plus a ``.tmp-*`` folder (removed at the next
start) or the new checkpoint complete. Only a folder whose manifest matches its files
counts as a checkpoint; the newest such folder is "latest" (the ``latest`` file is a
convenience pointer, never trusted over the manifests). The last ``keep_last`` are kept;
older ones are renamed away before deletion, so a half-deleted folder is never mistaken
for a checkpoint. Assumes a filesystem shared by all ranks (the usual cluster setup).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .faults import crash_point

MANIFEST = "checkpoint.json"
LATEST = "latest"
_TAG = re.compile(r"epoch-(\d+)")


def checkpoint_tag(epoch: int) -> str:
    return f"epoch-{int(epoch):06d}"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def _file_sizes(root: Path) -> dict[str, int]:
    sizes = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST:
                sizes[rel] = p.stat().st_size
    return sizes


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a complete checkpoint folder, or None (missing, unreadable or files differ)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    files = manifest.get("files")
    if not isinstance(files, dict):
        return None
    for rel, size in files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != size:
            return None
    return manifest


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (epoch, folder), oldest first."""
    out = []
    if not root.is_dir():
        return out
    for child in root.iterdir():
        m = _TAG.fullmatch(child.name)
        if m and child.is_dir() and read_manifest(child) is not None:
            out.append((int(m.group(1)), child))
    return sorted(out)


def resolve_resume(spec: str, default_root: Path) -> Path | None:
    """``"latest"`` (in this run's checkpoint folder; None when there is none yet), a
    checkpoint folder, a checkpoints root, or a run's output folder."""
    if spec == "latest":
        found = list_checkpoints(default_root)
        return found[-1][1] if found else None
    p = Path(spec).expanduser()
    for candidate_root in (p, p / "checkpoints"):
        if read_manifest(candidate_root) is not None:
            return candidate_root
        found = list_checkpoints(candidate_root)
        if found:
            return found[-1][1]
    raise FileNotFoundError(f"--resume {spec}: no complete checkpoint there (a folder with a valid {MANIFEST})")


class CheckpointManager:
    """Collective save (every rank calls it) with rank 0 publishing; see the module docstring."""

    def __init__(self, root: Path, *, keep_last: int, rank: int, world_size: int, barrier: Callable[[], None]):
        self.root = Path(root)
        self.keep_last = int(keep_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.barrier = barrier

    def remove_stale(self) -> None:
        """Drop what an interrupted save or prune left (rank 0; call before training starts)."""
        if self.rank == 0 and self.root.is_dir():
            for child in self.root.iterdir():
                if child.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(child, ignore_errors=True)
        self.barrier()

    def save(
        self,
        epoch: int,
        *,
        write_engine: Callable[[Path], None],
        trainer_state: dict,
        rank_state: dict,
        export: Callable[[Path], None] | None = None,
        meta: dict | None = None,
    ) -> Path:
        tag = checkpoint_tag(epoch)
        tmp = self.root / f".tmp-{tag}"
        final = self.root / tag
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        write_engine(tmp / "ds")  # collective: DeepSpeed writes each rank's partitions
        torch.save(rank_state, tmp / f"rank{self.rank:05d}.pt")
        if self.rank == 0:
            torch.save(trainer_state, tmp / "trainer.pt")
            if export is not None:
                export(tmp / "export")
        crash_point("checkpoint_write", self.rank)
        self.barrier()
        if self.rank == 0:
            _fsync_tree(tmp)
            manifest = {"tag": tag, "epoch": int(epoch), "world_size": self.world_size, "created": time.time(),
                        **(meta or {}), "files": _file_sizes(tmp)}
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_path(tmp)
            if final.exists():  # the same epoch saved again (never in a normal run): replace it
                trash = self.root / f".trash-{tag}"
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, final)
            _fsync_path(self.root)
            self._write_latest(tag)
            self._prune()
        self.barrier()
        return final

    def _write_latest(self, tag: str) -> None:
        pointer = self.root / f".tmp-{LATEST}"
        pointer.write_text(tag + "\n")
        with open(pointer) as f:
            os.fsync(f.fileno())
        os.replace(pointer, self.root / LATEST)
        _fsync_path(self.root)

    def _prune(self) -> None:
        complete = list_checkpoints(self.root)
        for _, folder in complete[: max(0, len(complete) - self.keep_last)]:
            trash = self.root / f".trash-{folder.name}"
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def load(self, folder: Path, *, read_engine: Callable[[Path], None]) -> tuple[dict, dict, dict]:
        """``(manifest, trainer_state, this rank's state)``; DeepSpeed state goes through ``read_engine``."""
        manifest = read_manifest(folder)
        if manifest is None:
            raise ValueError(f"{folder} is not a complete checkpoint")
        if manifest["world_size"] != self.world_size:
            raise ValueError(
                f"{folder} was written by {manifest['world_size']} ranks; this run has {self.world_size}. "
                "ZeRO partitions (and the rank-major slot layout) need the same world size to resume."
            )
        read_engine(folder / "ds")
        trainer_state = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False)
        rank_state = torch.load(folder / f"rank{self.rank:05d}.pt", map_location="cpu", weights_only=False)
        return manifest, trainer_state, rank_state
