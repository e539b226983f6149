"""Per-item JSONL files of an eval folder, written so a killed eval loses at most one batch.

Each rank appends its records to ``items.rank<r>.jsonl`` and flushes + fsyncs after every
batch; a line cut short by a kill is ignored on reading. When every rank is done, rank 0
merges all of them (and any earlier ``items.jsonl``) into ``items.jsonl``, sorted, one
record per (checkpoint identity, target, index), then removes the shards. An item is done
when its record is in any of these files, whatever the world size that wrote it.

The identity is ``checkpoint_sha256`` (the evaluated LoRA's content, eval/jobs.py), not the
step: the step of a rolled-back run, or of another run, names other weights. Records written
before the identity existed keep a key of their own (``legacy:<step>:<checkpoint>``): they
stay in ``items.jsonl`` but match no job, so those items are scored again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

MERGED = "items.jsonl"


def item_key(record: dict) -> tuple[str, str, int]:
    identity = record.get("checkpoint_sha256") or f"legacy:{int(record['step'])}:{record.get('checkpoint')}"
    return (str(identity), str(record["target"]), int(record["index"]))


def _order(record: dict) -> tuple:
    """``items.jsonl`` reads by step, then target and index (then identity)."""
    return (int(record["step"]), str(record["target"]), int(record["index"]), item_key(record)[0])


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("items.rank*.jsonl")) + ([folder / MERGED] if (folder / MERGED).is_file() else [])


def read_records(folder: Path) -> dict[tuple, dict]:
    """Every complete record under ``folder`` by key (the first one written wins)."""
    out: dict[tuple, dict] = {}
    for path in _files(Path(folder)):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    key = item_key(record)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a line cut short by a kill
                out.setdefault(key, record)
    return out


class ShardWriter:
    """Appends this rank's records; every :meth:`write` is durable when it returns."""

    def __init__(self, folder: Path, rank: int):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"items.rank{rank:05d}.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        # A previous run killed mid-line left a fragment: start on a fresh line.
        if self._file.tell() and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")

    def write(self, records: Iterable[dict]) -> None:
        for r in records:
            self._file.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def merge(folder: Path) -> list[dict]:
    """Rank 0, after every rank finished: one sorted ``items.jsonl``; returns its records."""
    folder = Path(folder)
    records = sorted(read_records(folder).values(), key=_order)
    tmp = folder / (MERGED + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MERGED)
    for shard in folder.glob("items.rank*.jsonl"):
        shard.unlink()
    return records
