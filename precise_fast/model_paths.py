"""Where model weights live on this machine, for the policy and the reward scorers, and the one
error a miss raises. Nothing here imports torch or downloads anything: weights are never fetched
at run time, so every lookup ends in a local folder or a :class:`WeightsNotFoundError` that says
what to fetch and where to put it.

The pinned Hugging Face models are the Precise paper's (Tencent-Hunyuan/Precise
precise_sde/core/model_paths.py, and config/flux2_klein.py for the policy), plus the GenEval
detector its server loads. A pinned model is looked for in two layouts:

- ours: ``<model root>/<org>/<name>`` under ``$PRECISE_FAST_MODEL_ROOT`` (or a config's
  ``model_root``), what ``hf download <id> --revision <rev> --local-dir <root>/<org>/<name>`` writes;
- the paper's: ``$PRECISE_SDE_MODEL_ROOT/<local name>`` (or ``$PRECISE_SDE_LOCAL_MODEL_ROOT``),
  the folder names its ``model_paths.py`` uses, so a machine that mirrored the paper's models
  needs nothing else.

The policy (:func:`resolve_model_path`) takes a folder or a pinned id and has no default root.
The reward scorers (:func:`locate`) read fixed names under the model root, which defaults to
:data:`DEFAULT_MODEL_ROOT`; every scorer also takes an explicit path option that overrides its
entry, and an entry missing from our root is looked for in the paper's layout (:data:`PAPER_LAYOUT`):

=========== ================================================== ==========================================
scorer      path under the model root                          contents (source)
=========== ================================================== ==========================================
pickscore   ``pickscore/processor/``                           CLIP-H processor config + tokenizer files
                                                               (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``)
pickscore   ``pickscore/model/``                               ``config.json`` + ``model.safetensors`` or
                                                               ``pytorch_model.bin`` (``yuvalkirstain/PickScore_v1``)
clipscore   ``clip-vit-large-patch14/``                        model + processor files in one folder
                                                               (``openai/clip-vit-large-patch14``)
aesthetic   ``clip-vit-large-patch14/`` (shared with clipscore) as above
aesthetic   ``aesthetic/sac+logos+ava1-l14-linearMSE.pth``     LAION improved-aesthetic-predictor head
hpsv2       ``hpsv2/HPS_v2.1_compressed.pt``                   full open_clip ViT-H-14 state dict
                                                               (``xswu/HPSv2``). The base
                                                               ``open_clip_ViT-H-14.bin`` is NOT needed:
                                                               the HPS file holds every weight.
imagereward ``imagereward/ImageReward.pt``                     ImageReward v1.0 (``THUDM/ImageReward``)
imagereward ``imagereward/med_config.json``                    its BLIP text-encoder config (same repo)
imagereward ``imagereward/bert-base-uncased/``                 tokenizer files of ``bert-base-uncased``
geneval     ``geneval/mask2former_swin-s-p4-w7-224_lsj_8x2_    GenEval's Mask2Former detector; read by the
            50e_coco.pth``                                     GenEval *server*, not the trainer
geneval     ``geneval/open_clip_ViT-L-14-openai.bin``          open_clip ViT-L-14 ``openai`` state dict
                                                               (the server's colour classifier)
=========== ================================================== ==========================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODEL_ROOT_ENV = "PRECISE_FAST_MODEL_ROOT"
# The paper's override variables, in the order its model_paths.py reads them.
PAPER_ROOT_ENVS = ("PRECISE_SDE_MODEL_ROOT", "PRECISE_SDE_LOCAL_MODEL_ROOT")
# The reward scorers' root when neither the config nor the environment names one.
DEFAULT_MODEL_ROOT = "~/.cache/precise_fast/models"


class WeightsNotFoundError(FileNotFoundError):
    """Weights that are not on this machine (we never download). The message names what is
    missing, every place looked in and how to get it."""


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

# Reward files and folders under the model root (the table above).
PICKSCORE_PROCESSOR = "pickscore/processor"
PICKSCORE_MODEL = "pickscore/model"
CLIP_L14 = "clip-vit-large-patch14"
AESTHETIC_HEAD = "aesthetic/sac+logos+ava1-l14-linearMSE.pth"
HPS_CHECKPOINT = "hpsv2/HPS_v2.1_compressed.pt"
IMAGEREWARD_CHECKPOINT = "imagereward/ImageReward.pt"
IMAGEREWARD_MED_CONFIG = "imagereward/med_config.json"
IMAGEREWARD_BERT_TOKENIZER = "imagereward/bert-base-uncased"
GENEVAL_DETECTOR = "geneval/mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
GENEVAL_CLIP = "geneval/open_clip_ViT-L-14-openai.bin"

# Our relative path -> (pinned model, path inside its folder in the paper's layout).
PAPER_LAYOUT = {
    PICKSCORE_MODEL: ("pickscore", ""),
    PICKSCORE_PROCESSOR: ("clip-vit-h-14", ""),
    CLIP_L14: ("clip-vit-large-patch14", ""),
    HPS_CHECKPOINT: ("hpsv2.1", "HPS_v2.1_compressed.pt"),
    IMAGEREWARD_CHECKPOINT: ("imagereward", "ImageReward.pt"),
    IMAGEREWARD_MED_CONFIG: ("imagereward", "med_config.json"),
    GENEVAL_DETECTOR: ("geneval-mask2former", "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"),
}

_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HF_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_HF_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


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
    """Our model root: the argument, else ``$PRECISE_FAST_MODEL_ROOT``, else None (the policy's rule)."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(MODEL_ROOT_ENV)
    return Path(env).expanduser() if env else None


def resolve_model_root(root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The reward scorers' root as ``(root, source)``: :func:`model_root`, else :data:`DEFAULT_MODEL_ROOT`;
    ``source`` says which rule chose it (for error messages)."""
    ours = model_root(root)
    if ours is not None:
        return ours, "the model_root setting" if root is not None and str(root) != "" else f"${MODEL_ROOT_ENV}"
    default = Path(DEFAULT_MODEL_ROOT).expanduser()
    return default, f"the default ({DEFAULT_MODEL_ROOT}; set ${MODEL_ROOT_ENV} to change it)"


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


def resolve_model_path(path_or_id: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Path:
    """The policy's local folder for ``path_or_id``: an existing directory, or a pinned id found in
    our layout under the model root or in the paper's under ``$PRECISE_SDE_MODEL_ROOT``.

    Raises :class:`WeightsNotFoundError` (repo id, revision, folders looked in, download command) otherwise.
    """
    candidate = Path(path_or_id).expanduser()
    if candidate.is_dir():
        return candidate
    entry = lookup_pinned(str(path_or_id))
    if entry is None:
        if candidate.exists():
            raise WeightsNotFoundError(f"{candidate} is a file, not a diffusers pipeline folder")
        known = ", ".join(f"{m.alias} ({m.repo_id})" for m in PINNED_MODELS.values())
        raise WeightsNotFoundError(
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
        raise WeightsNotFoundError(
            f"{entry.describe()} must be available locally, but no model root is set: set ${MODEL_ROOT_ENV} "
            f"(or the config's model_root) to a folder holding {entry.relative_dir}, or {paper_envs} to the paper's "
            f"model folder holding {entry.paper_dir}. With network, fetch it with: {entry.download_command(Path('<root>'))}"
        )
    where = "the model root " + str(base) if base is not None else "the paper's model root"
    raise WeightsNotFoundError(
        f"{entry.describe()} is not under {where} (looked for {', '.join(str(f) for f in looked)}). "
        f"Models are never downloaded at run time; with network, fetch it with: "
        f"{entry.download_command(base if base is not None else Path('<root>'))}"
    )


def _where(root: Path | None, source: str | None) -> str:
    if root is None:
        return "an explicit path"
    return f"model root {root}, chosen by {source}"


def locate(
    rel_or_abs: str | os.PathLike,
    *,
    model_root: str | os.PathLike | None,
    scorer: str,
    what: str,
    hint: str,
    is_dir: bool = False,
) -> Path:
    """A reward scorer's file or folder, which must exist.

    ``rel_or_abs`` is relative to the model root unless absolute (an explicit override).
    Raises :class:`WeightsNotFoundError` naming the file, the place looked and the fix.
    """
    candidate = Path(rel_or_abs).expanduser()
    if candidate.is_absolute():
        path, root, source = candidate, None, None
    else:
        root, source = resolve_model_root(model_root)
        path = root / candidate
    exists = (lambda p: p.is_dir()) if is_dir else (lambda p: p.is_file())
    if exists(path):
        return path
    pin, paper_path = None, None
    if not candidate.is_absolute() and str(candidate) in PAPER_LAYOUT:
        alias, inner = PAPER_LAYOUT[str(candidate)]
        pin = PINNED_MODELS[alias]
        paper = paper_model_root()
        if paper is not None:
            paper_path = paper / pin.paper_dir / inner if inner else paper / pin.paper_dir
            if exists(paper_path):
                return paper_path
    kind = "directory" if is_dir else "file"
    also = f", nor {paper_path} (the paper's layout)" if paper_path is not None else ""
    source_repo = f" It comes from {pin.describe()}." if pin is not None else ""
    raise WeightsNotFoundError(
        f"{scorer}: {what} not found: no {kind} {path} ({_where(root, source)}){also}.{source_repo} "
        f"{hint} Nothing is downloaded at run time."
    )


def require_hf_model_dir(path: Path, *, scorer: str, hint: str) -> Path:
    """A transformers model folder needs config.json and a weights file."""
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in _HF_WEIGHT_FILES):
        missing.append(" or ".join(_HF_WEIGHT_FILES[::2]))
    if missing:
        raise WeightsNotFoundError(
            f"{scorer}: model folder {path} lacks {', '.join(missing)}. {hint} Nothing is downloaded at run time."
        )
    return path


def require_hf_processor_dir(path: Path, *, scorer: str, hint: str) -> Path:
    """A CLIP processor folder needs an image-processor config and tokenizer files."""
    missing = []
    if not any((path / f).is_file() for f in _HF_IMAGE_PROCESSOR_FILES):
        missing.append(" or ".join(_HF_IMAGE_PROCESSOR_FILES))
    if not any(all((path / f).is_file() for f in group) for group in _HF_TOKENIZER_FILES):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if missing:
        raise WeightsNotFoundError(
            f"{scorer}: processor folder {path} lacks {', '.join(missing)}. {hint} Nothing is downloaded at run time."
        )
    return path
