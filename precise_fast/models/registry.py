"""Where the policy's pinned Hugging Face model lives on this machine (never downloaded).

The pins and the two layouts (ours ``<root>/<org>/<name>``, the paper's
``$PRECISE_SDE_MODEL_ROOT/<local name>``) are :mod:`precise_fast.model_paths`. A missing
folder is an error that prints the repo id, the revision, every folder looked in and the
``hf download`` command to run on a machine with network.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..model_paths import (
    MODEL_ROOT_ENV,
    PAPER_ROOT_ENVS,
    PINNED_MODELS,
    PinnedModel,
    candidate_dirs,
    lookup_pinned,
    model_root,
)

__all__ = ["MODEL_ROOT_ENV", "PINNED_MODELS", "ModelNotFoundError", "PinnedModel", "lookup_pinned", "model_root",
           "resolve_model_path"]


class ModelNotFoundError(FileNotFoundError):
    """A model id or path that does not resolve to a local folder (we never download)."""


def resolve_model_path(path_or_id: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """A local folder for ``path_or_id``: an existing directory, or a pinned id found in our
    layout under the model root or in the paper's under ``$PRECISE_SDE_MODEL_ROOT``.

    Raises :class:`ModelNotFoundError` (repo id, revision, folders looked in, download command) otherwise.
    """
    candidate = Path(path_or_id).expanduser()
    if candidate.is_dir():
        return candidate
    entry = lookup_pinned(str(path_or_id))
    if entry is None:
        if candidate.exists():
            raise ModelNotFoundError(f"{candidate} is a file, not a diffusers pipeline folder")
        known = ", ".join(f"{m.alias} ({m.repo_id})" for m in PINNED_MODELS.values())
        raise ModelNotFoundError(
            f"{str(path_or_id)!r} is neither an existing folder nor a known model id (known: {known}). "
            "Models are never downloaded at run time: pass a local diffusers folder."
        )
    looked = candidate_dirs(entry, root)
    for folder in looked:
        if folder.is_dir():
            return folder
    base = model_root(root)
    paper_envs = " or ".join(f"${e}" for e in PAPER_ROOT_ENVS)
    if not looked:
        raise ModelNotFoundError(
            f"{entry.describe()} must be available locally, but no model root is set: set ${MODEL_ROOT_ENV} "
            f"(or the config's model_root) to a folder holding {entry.relative_dir}, or {paper_envs} to the paper's "
            f"model folder holding {entry.paper_dir}. With network, fetch it with: {entry.download_command(Path('<root>'))}"
        )
    where = "the model root " + str(base) if base is not None else "the paper's model root"
    raise ModelNotFoundError(
        f"{entry.describe()} is not under {where} (looked for {', '.join(str(f) for f in looked)}). "
        f"Models are never downloaded at run time; with network, fetch it with: "
        f"{entry.download_command(base if base is not None else Path('<root>'))}"
    )
