"""The pinned Hugging Face models of the paper, and the two local layouts we find them in.

One table for the policy (``precise_fast.models.registry``) and the reward scorers
(``precise_fast.rewards.paths``); nothing here imports torch or downloads anything. The pins
are the Precise paper's (Tencent-Hunyuan/Precise precise_sde/core/model_paths.py, and
config/flux2_klein.py for the policy), plus the GenEval detector its server loads.

Layouts a pinned model is looked for in:

- ours: ``<model root>/<org>/<name>`` under ``$PRECISE_FAST_MODEL_ROOT`` (or a config's
  ``model_root``), what ``hf download <id> --revision <rev> --local-dir <root>/<org>/<name>`` writes;
- the paper's: ``$PRECISE_SDE_MODEL_ROOT/<local name>`` (or ``$PRECISE_SDE_LOCAL_MODEL_ROOT``),
  the folder names its ``model_paths.py`` uses, so a machine that mirrored the paper's models
  needs nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODEL_ROOT_ENV = "PRECISE_FAST_MODEL_ROOT"
# The paper's override variables, in the order its model_paths.py reads them.
PAPER_ROOT_ENVS = ("PRECISE_SDE_MODEL_ROOT", "PRECISE_SDE_LOCAL_MODEL_ROOT")


@dataclass(frozen=True)
class PinnedModel:
    """A Hugging Face repository the recipe uses, at the commit the paper's runs used.

    ``revision`` None: no pin is known (the folder found is used as-is; record its commit).
    ``paper_dir``: the folder name under the paper's model root.
    """

    alias: str
    repo_id: str
    revision: str | None
    paper_dir: str
    role: str

    @property
    def relative_dir(self) -> Path:
        return Path(*self.repo_id.split("/"))

    def download_command(self, root: Path) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo_id}{rev} --local-dir {root / self.relative_dir}"

    def describe(self) -> str:
        return f"{self.repo_id} (revision {self.revision or 'not pinned'})"


PINNED_MODELS: dict[str, PinnedModel] = {
    m.alias: m
    for m in (
        # The paper trains the base (non-distilled) 4B Klein; the step-distilled one is kept as an option.
        PinnedModel("flux2-klein-base-4b", "black-forest-labs/FLUX.2-klein-base-4B",
                    "a3b4f4849157f664bdbc776fd7453c2783562f4d", "FLUX.2-klein-base-4B", "policy (base, non-distilled)"),
        PinnedModel("flux2-klein-4b", "black-forest-labs/FLUX.2-klein-4B", None, "FLUX.2-klein-4B",
                    "policy (step-distilled; not the paper's)"),
        PinnedModel("clip-vit-large-patch14", "openai/clip-vit-large-patch14",
                    "32bd64288804d66eefd0ccbe215aa642df71cc41", "clip-vit-large-patch14", "CLIPScore / aesthetic backbone"),
        PinnedModel("clip-vit-h-14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                    "1c2b8495b28150b8a4922ee1c8edee224c284c0c", "CLIP-ViT-H-14-laion2B-s32B-b79K", "PickScore processor"),
        PinnedModel("pickscore", "yuvalkirstain/PickScore_v1",
                    "a4e4367c6dfa7288a00c550414478f865b875800", "PickScore_v1", "PickScore model"),
        PinnedModel("hpsv2.1", "xswu/HPSv2", "697403c78157020a1ae59d23f111aa58ced35b0a", "hpsv2.1", "HPS v2.1"),
        PinnedModel("imagereward", "zai-org/ImageReward", "5736be03b2652728fb87788c9797b0570450ab72", "ImageReward",
                    "ImageReward v1.0"),
        PinnedModel("unifiedreward-2.0", "CodeGoat24/UnifiedReward-2.0-qwen35-9b",
                    "f01548b009741e12ff9817ed91dba94701ed9579", "UnifiedReward-2.0-qwen35-9b", "UnifiedReward server model"),
        PinnedModel("geneval-mask2former", "tsbpp/geneval_mask2former", "22b5a198cedf6b45e45165cf1c865d58de4a2832",
                    "geneval_mask2former", "GenEval server detector"),
    )
}


def lookup_pinned(name: str) -> PinnedModel | None:
    """The entry for an alias, a repo id or the paper's folder name (case-insensitive for the last two)."""
    if name in PINNED_MODELS:
        return PINNED_MODELS[name]
    low = str(name).lower()
    for entry in PINNED_MODELS.values():
        if low in (entry.repo_id.lower(), entry.paper_dir.lower()):
            return entry
    return None


def model_root(root: str | os.PathLike | None = None) -> Path | None:
    """Our model root: the argument, else ``$PRECISE_FAST_MODEL_ROOT``, else None."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(MODEL_ROOT_ENV)
    return Path(env).expanduser() if env else None


def paper_model_root() -> Path | None:
    """The paper's model root from its environment variables, or None."""
    for name in PAPER_ROOT_ENVS:
        value = os.environ.get(name)
        if value:
            return Path(value).expanduser()
    return None


def candidate_dirs(entry: PinnedModel, root: str | os.PathLike | None = None) -> list[Path]:
    """Where ``entry`` may live, in lookup order: our layout, then the paper's."""
    out = []
    ours = model_root(root)
    if ours is not None:
        out.append(ours / entry.relative_dir)
    paper = paper_model_root()
    if paper is not None:
        out.append(paper / entry.paper_dir)
    return out
