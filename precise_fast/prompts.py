"""Prompt sets: a ``.txt`` file (one prompt per line) or ``.jsonl`` (a ``prompt`` field per line;
the whole record travels as the sample's reward metadata, which GenEval needs).

Relative paths resolve against the working directory, the repository root, the project's
``shared/`` folder beside the checkout (where the real Pick-a-Pic and GenEval prompt sets
live: ``data/pickscore_train.txt`` resolves to ``../shared/data/pickscore_train.txt``), then
``$PRECISE_FAST_DATA``; the error lists every place looked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "PRECISE_FAST_DATA"


class PromptError(ValueError):
    """A prompt file that cannot be used; the message names the file (and line)."""


class PromptNotFound(PromptError, FileNotFoundError):
    pass


@dataclass(frozen=True)
class PromptSet:
    prompts: tuple[str, ...]
    metadata: tuple[dict, ...]
    path: Path

    def __len__(self) -> int:
        return len(self.prompts)


def resolve_data_path(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [Path.cwd() / p, REPO_ROOT / p, REPO_ROOT.parent / "shared" / p]
        if os.environ.get(DATA_ENV):
            candidates.append(Path(os.environ[DATA_ENV]) / p)
            candidates.append(Path(os.environ[DATA_ENV]) / p.name)
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise PromptNotFound(f"prompt file {path} not found (looked at {looked}; set ${DATA_ENV} to a folder holding it)")


def load_prompts(path: str | os.PathLike) -> PromptSet:
    """Read a prompt set; empty lines are skipped, an empty set is an error."""
    file = resolve_data_path(path)
    prompts, metadata = [], []
    try:
        lines = file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise PromptError(f"{file}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from err
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if file.suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptError(f"{file}:{number}: not valid JSON: {err}") from err
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise PromptError(f"{file}:{number}: a record needs a string 'prompt' field")
            prompts.append(record["prompt"])
            metadata.append(record)
        else:
            prompts.append(line)
            metadata.append({})
    if not prompts:
        raise PromptError(f"{file} holds no prompts")
    return PromptSet(tuple(prompts), tuple(metadata), file)
