"""Atomic, pruned checkpoints that a killed run can always resume from.

A checkpoint is a folder ``<root>/epoch-000012/`` holding DeepSpeed's files (``ds/``:
trained weights and optimizer partitions), ``trainer.pt`` (EMA, sampler position,
advantage tracker, counters, metric history, config), one ``rank00000.pt`` per rank (RNG
states and whatever that rank alone holds) and ``checkpoint.json``, the manifest with
every file's size and SHA-256 (hashed by rank 0 while publishing, after the fsync).

Writing is atomic: every rank writes into ``<root>/.tmp-<tag>/``; after a barrier rank 0
fsyncs every file, writes the manifest last, fsyncs, renames the folder to its final name
(atomic on POSIX within one filesystem) and fsyncs the parent. A crash at any moment leaves
either the previous checkpoints untouched plus a ``.tmp-*`` folder (removed at the next
start) or the new checkpoint complete. Only a folder whose manifest matches its files
counts as a checkpoint; the newest such folder is "latest" (the ``latest`` file is a
convenience pointer, never trusted over the manifests). The last ``keep_last`` are kept;
older ones are renamed away before deletion, so a half-deleted folder is never mistaken
for a checkpoint. Assumes a filesystem shared by all ranks (the usual cluster setup).

A checkpoint folder is input from outside (the manifest does not vouch for it: whoever
writes the folder writes the manifest), so no file of it is unpickled with code: every
``*.pt`` is read by torch's weights-only unpickler, allowing the few types that our files
and DeepSpeed's hold (:data:`SAFE_GLOBALS`); :func:`check_loadable` runs that unpickler over
every ``*.pt`` of a folder (without reading tensor data) before any model loads, and
DeepSpeed's own loads run under :func:`weights_only_loads`.

Resuming verifies the checksums (:func:`verify_checkpoint`): damage that keeps the size
(zeroed blocks) is caught too. ``latest`` falls back to the newest checkpoint that
verifies, warning about each broken one; an explicitly named checkpoint must verify.
Resuming from a checkpoint older than the newest abandons the later ones: they are moved
to ``<root>/abandoned/`` (:func:`set_aside_later`), so no later ``latest`` picks them up.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..lifecycle.faults import crash_point

MANIFEST = "checkpoint.json"
LATEST = "latest"
ABANDONED = "abandoned"
_LOW_SPACE = 1 << 20  # bytes free below which a failed write is taken for a full disk


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or resumed; the message names the folder."""


class DiskFullError(CheckpointError):
    """No space left while saving (may hit one rank only)."""
_TAG = re.compile(r"epoch-(\d+)")


def _safe_globals() -> list:
    """Types beyond torch's weights-only defaults that checkpoint files hold (listed with
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` over runs of ZeRO 0-3, LoRA and
    full fine-tuning): numpy's RNG state array (rank files; numpy 2 and 1 name its
    constructor differently) and DeepSpeed's ZeRO optimizer state (a loss scaler, a stage
    enum, fragment addresses). Each is data: built without calling anything else. fp16's
    DynamicLossScaler is not among them: float16 runs are refused (train/policy/zero.py)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    try:
        from numpy._core.multiarray import _reconstruct as reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct as reconstruct
    return [np.ndarray, np.dtype, *{type(np.dtype(t)) for t in (np.uint32, np.float64, np.int64)},
            (reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct"),
            LossScaler, ZeroStageEnum, fragment_address]


def _refusal(err: BaseException) -> str:
    """The line of torch's weights-only error that names what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(err).__name__])[0]


def load_checkpoint_file(path: Path, *, skip_data: bool = False):
    """``torch.load`` of one checkpoint file through the weights-only unpickler; a file that
    needs anything else (a pickle that would call code) is a :class:`CheckpointError`."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()), \
                (torch.serialization.skip_data() if skip_data else contextlib.nullcontext()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises UnpicklingError, RuntimeError, ...
        raise CheckpointError(f"{path} is refused: loading it would need more than tensors and plain data "
                              f"({_refusal(err)})") from None


def check_loadable(folder: Path) -> None:
    """Every ``*.pt`` under ``folder`` passes the weights-only unpickler (tensor data not read:
    1 GiB of tensors takes 1 ms)."""
    for path in sorted(Path(folder).rglob("*.pt")):
        load_checkpoint_file(path, skip_data=True)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in the block uses the weights-only unpickler with :func:`_safe_globals`,
    also one that asks for ``weights_only=False`` (DeepSpeed's ``load_checkpoint`` does):
    torch's own ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch, read at every call."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def verify_checkpoint(folder: Path) -> str | None:
    """None when every file of ``folder`` matches its manifest (size and SHA-256), else what is wrong."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"{MANIFEST} unreadable ({err.__class__.__name__})"
    sizes, digests = manifest.get("files"), manifest.get("sha256")
    if not isinstance(sizes, dict) or not isinstance(digests, dict) or set(sizes) != set(digests):
        return f"{MANIFEST} lists no SHA-256 for every file"
    for rel in sorted(sizes):
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != sizes[rel]:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {sizes[rel]}"
        if _sha256(p) != digests[rel]:
            return f"{rel} fails its SHA-256 check"
    return None


def _tagged(root: Path) -> list[tuple[int, Path]]:
    """Every ``epoch-*`` folder under ``root`` (complete or not), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), c) for c in root.iterdir() if (m := _TAG.fullmatch(c.name)) and c.is_dir()]
    return sorted(found)


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


def _newest_verified(root: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint under ``root`` that verifies (None: there is none at all);
    each broken newer one is named in a warning; raises when some exist but none verifies."""
    broken = []
    for _, folder in reversed(_tagged(root)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        broken.append(f"{folder.name} ({problem})")
        warn(f"checkpoint {folder} is broken, skipped: {problem}")
    if broken:
        raise CheckpointError(f"no checkpoint under {root} verifies: {'; '.join(broken)}")
    return None


def resolve_resume(spec: str, default_root: Path, *, warn: Callable[[str], None] = lambda _: None) -> Path | None:
    """``"latest"`` (in this run's checkpoint folder; None when there is none yet), a
    checkpoint folder, a checkpoints root, or a run's output folder; always a checkpoint
    that verifies (see the module docstring)."""
    if spec == "latest":
        return _newest_verified(Path(default_root), warn)
    p = Path(spec).expanduser()
    if (p / MANIFEST).is_file():
        problem = verify_checkpoint(p)
        if problem is not None:
            raise CheckpointError(f"--resume {spec}: checkpoint {p.name} is broken: {problem}")
        return p
    for candidate_root in (p, p / "checkpoints"):
        found = _newest_verified(candidate_root, warn)
        if found is not None:
            return found
    raise CheckpointError(f"--resume {spec}: no complete checkpoint there (a folder with a valid {MANIFEST})")


def set_aside_later(root: Path, epoch: int, *, warn: Callable[[str], None]) -> list[Path]:
    """Move the checkpoints newer than ``epoch`` (an abandoned timeline) to ``root/abandoned/``."""
    later = [folder for e, folder in _tagged(Path(root)) if e > epoch]
    if not later:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = Path(root) / ABANDONED / stamp
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for folder in later:
        os.rename(folder, dest / folder.name)
        moved.append(dest / folder.name)
    if (Path(root) / checkpoint_tag(epoch)).is_dir():  # the convenience pointer follows the live timeline
        (Path(root) / LATEST).write_text(checkpoint_tag(epoch) + "\n")
    _fsync_path(Path(root))
    warn(f"resuming from epoch {epoch}: the later checkpoints {', '.join(f.name for f in later)} belong to an "
         f"abandoned timeline and were moved to {dest}")
    return moved


def _disk_full(err: BaseException, where: Path) -> bool:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    try:  # torch.save reports a full disk as a RuntimeError ("file write failed")
        return isinstance(err, RuntimeError) and "write" in str(err) and shutil.disk_usage(where).free < _LOW_SPACE
    except OSError:
        return False


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
        trainer_state: dict | None,  # rank 0's (the only rank that writes it)
        rank_state: dict,
        export: Callable[[Path], None] | None = None,
        meta: dict | None = None,
    ) -> Path:
        try:
            return self._save(epoch, write_engine=write_engine, trainer_state=trainer_state, rank_state=rank_state,
                              export=export, meta=meta)
        except (OSError, RuntimeError) as err:
            if not _disk_full(err, self.root):
                raise
            shutil.rmtree(self.root / f".tmp-{checkpoint_tag(epoch)}", ignore_errors=True)
            raise DiskFullError(f"no space left on {self.root} while saving {checkpoint_tag(epoch)} "
                                  "(earlier checkpoints are intact; free space, then --resume)") from err

    def _save(self, epoch, *, write_engine, trainer_state, rank_state, export, meta) -> Path:
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
            sizes = _file_sizes(tmp)
            manifest = {"tag": tag, "epoch": int(epoch), "world_size": self.world_size, "created": time.time(),
                        **(meta or {}), "files": sizes, "sha256": {rel: _sha256(tmp / rel) for rel in sizes}}
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
            raise CheckpointError(f"{folder} is not a complete checkpoint")
        if manifest["world_size"] != self.world_size:
            raise CheckpointError(
                f"{folder} was written by {manifest['world_size']} ranks; this run has {self.world_size}. "
                "ZeRO partitions (and the rank-major slot layout) need the same world size to resume."
            )
        with weights_only_loads():
            read_engine(folder / "ds")
        trainer_state = load_checkpoint_file(folder / "trainer.pt")
        rank_state = load_checkpoint_file(folder / f"rank{self.rank:05d}.pt")
        return manifest, trainer_state, rank_state
