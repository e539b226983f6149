"""Pinned Hugging Face models of the paper and where they live on this machine.

Nothing here downloads. A model id resolves to a folder under the model root:
``$PRECISE_FAST_MODEL_ROOT`` (or the ``model_root`` a config passes), laid out as
``<root>/<org>/<name>`` - exactly what
``hf download <id> --revision <rev> --local-dir <root>/<org>/<name>`` writes on a machine
with network. A missing folder is an error that prints that command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODEL_ROOT_ENV = "PRECISE_FAST_MODEL_ROOT"


@dataclass(frozen=True)
class PinnedModel:
    """A Hugging Face repository the recipe uses.

    ``revision`` is the commit the paper's runs used when it is known; ``None`` means the
    pin was not available when this table was written (no network here), and the folder
    found under the model root is used as-is - record its commit in your run config.
    """

    alias: str
    repo_id: str
    revision: str | None
    role: str

    @property
    def relative_dir(self) -> Path:
        return Path(*self.repo_id.split("/"))

    def download_command(self, root: Path) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{rev} --local-dir {root / self.relative_dir}"


# Precise paper (arXiv 2605.23522), FLUX.2 Klein recipe. The 4B Klein model is the policy;
# the Base variant is the non-distilled checkpoint BFL recommends for fine-tuning.
PINNED_MODELS: dict[str, PinnedModel] = {
    m.alias: m
    for m in (
        PinnedModel("flux2-klein-4b", "black-forest-labs/FLUX.2-klein-4B", None, "policy (step-distilled)"),
        PinnedModel("flux2-klein-base-4b", "black-forest-labs/FLUX.2-klein-base-4B", None, "policy (base, non-distilled)"),
    )
}


class ModelNotFoundError(FileNotFoundError):
    """A model id or path that does not resolve to a local folder (we never download)."""


def model_root(root: str | os.PathLike | None = None) -> Path | None:
    """The model root: the argument, else ``$PRECISE_FAST_MODEL_ROOT``, else ``None``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(MODEL_ROOT_ENV)
    return Path(env) if env else None


def lookup_pinned(name: str) -> PinnedModel | None:
    """The table entry for an alias (``flux2-klein-4b``) or a repo id (``black-forest-labs/FLUX.2-klein-4B``)."""
    if name in PINNED_MODELS:
        return PINNED_MODELS[name]
    for entry in PINNED_MODELS.values():
        if entry.repo_id.lower() == name.lower():
            return entry
    return None


def resolve_model_path(path_or_id: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """A local folder for ``path_or_id``: an existing directory, or a pinned id under the model root.

    Raises :class:`ModelNotFoundError` (with the download command where it can) otherwise.
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
    base = model_root(root)
    if base is None:
        raise ModelNotFoundError(
            f"{entry.repo_id} must be available locally, but no model root is set: set ${MODEL_ROOT_ENV} "
            f"(or the config's model_root) to a folder holding {entry.relative_dir}. With network, fetch it with: "
            f"{entry.download_command(Path('<root>'))}"
        )
    folder = base / entry.relative_dir
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{entry.repo_id} is not under the model root {base} (looked for {folder}). "
            f"Models are never downloaded at run time; with network, fetch it with: {entry.download_command(base)}"
        )
    return folder
