"""Where reward-model weights live on disk, and the error raised when they are not there.

Weights are never downloaded at run time: every scorer reads a local directory under one
*model root*, resolved in this order:

1. the ``model_root`` argument (from the run config),
2. the environment variable ``PRECISE_FAST_MODEL_ROOT``,
3. the default ``~/.cache/precise_fast/models``.

Layout under the model root (fixed folder names; every scorer also takes an explicit path
option that overrides its entry). Sources are the public Hugging Face / GitHub releases:

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

The paper's layout is found too: with ``$PRECISE_SDE_MODEL_ROOT`` set, an entry missing from
our root is looked for under the paper's folder names (:data:`PAPER_LAYOUT`; the pins are
:mod:`precise_fast.model_paths`), and a miss names the repo id and revision.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..model_paths import PINNED_MODELS, paper_model_root

ENV_MODEL_ROOT = "PRECISE_FAST_MODEL_ROOT"
DEFAULT_MODEL_ROOT = "~/.cache/precise_fast/models"

# Folder / file names under the model root (the table above).
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


class MissingCheckpointError(FileNotFoundError):
    """A scorer's weights are not on disk. The message names the file and where we looked."""


def resolve_model_root(model_root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Return ``(root, source)``; ``source`` says which rule chose it (for error messages)."""
    if model_root is not None and str(model_root) != "":
        return Path(model_root).expanduser(), "the model_root setting"
    env = os.environ.get(ENV_MODEL_ROOT)
    if env:
        return Path(env).expanduser(), f"${ENV_MODEL_ROOT}"
    return Path(
        DEFAULT_MODEL_ROOT
    ).expanduser(), f"the default ({DEFAULT_MODEL_ROOT}; set ${ENV_MODEL_ROOT} to change it)"


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
    """Resolve a checkpoint path and require that it exists.

    ``rel_or_abs`` is relative to the model root unless absolute (an explicit override).
    Raises :class:`MissingCheckpointError` naming the file, the place looked and the fix.
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
    raise MissingCheckpointError(
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
        raise MissingCheckpointError(
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
        raise MissingCheckpointError(
            f"{scorer}: processor folder {path} lacks {', '.join(missing)}. {hint} Nothing is downloaded at run time."
        )
    return path
