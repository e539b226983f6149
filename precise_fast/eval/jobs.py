"""What to evaluate: checkpoints (ours, and the base model as step 0) paired with eval targets.

Checkpoints are the trainer's folders ``<run>/checkpoints/epoch-000012/`` (see
:mod:`precise_fast.train.state.checkpoint`); their exported diffusers LoRA (``export/lora_ema/``,
the EMA weights the in-training eval also uses, or ``export/lora/`` with ``--weights live``)
is what gets evaluated. A run folder (or its ``checkpoints/`` folder) stands for every
complete checkpoint in it, in step order. The paper's run folders work too: their
``checkpoint-STEP/lora`` PEFT adapters are loaded by :mod:`.peft_lora`.

A checkpoint is known by the content of the LoRA it evaluates (:attr:`Checkpoint.sha256`),
not by its step: after a rollback, or given another run's checkpoint of the same step, the
items are scored again. Our checkpoints' LoRA files are checked against the SHA-256s of
their manifest first; a damaged export is refused (:class:`EvalJobError`), never evaluated.

The paper's evaluator (Tencent-Hunyuan/Precise ``eval/infer_eval.sh``) takes
``--ckpt-base DIR`` and ``--eval-config 'STEP|SDE_TYPE|NOISE_LEVEL|NUM_STEPS|DATASET|{reward json}'``,
both repeatable and paired by position (the i-th config evaluates ``checkpoint-STEP`` of
the i-th base). :func:`parse_eval_config` reads that string into one of our
:class:`~precise_fast.train.config.EvalTarget`; STEP is our checkpoint's epoch (0: the base
model); DATASET ``pickscore`` or ``geneval`` picks the test prompts as the paper's script does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..train.config import SAMPLER_KINDS, ConfigError, EvalTarget, check_finite, check_target_name
from ..train.state.checkpoint import MANIFEST, list_checkpoints, read_manifest
from .peft_lora import is_peft_folder

DATASETS = {"pickscore": "data/pickscore_test.txt", "geneval": "data/geneval_test_metadata.jsonl"}
WEIGHTS = ("ema", "live")
_STEP = re.compile(r"epoch-(\d+)")
_PAPER_STEP = re.compile(r"checkpoint-(\d+)")  # the paper's checkpoint folders


class EvalJobError(ValueError):
    """A checkpoint or eval-config argument that cannot be used."""


@dataclass(frozen=True)
class Checkpoint:
    step: int  # the checkpoint's epoch; 0 is the base model
    lora: Union[Path, None]  # the LoRA folder to load; None: the base model
    folder: Union[Path, None]
    sha256: str = "base"  # what is evaluated: one SHA-256 over the LoRA folder's files (:func:`lora_identity`)

    @property
    def label(self) -> str:
        return "base" if self.folder is None else str(self.folder)


BASE = Checkpoint(0, None, None)


def _lora_of(folder: Path, weights: str) -> Path:
    order = ("lora_ema", "lora") if weights == "ema" else ("lora",)
    for name in order:
        if (folder / "export" / name).is_dir():
            return folder / "export" / name
    raise EvalJobError(f"{folder} holds no exported LoRA (export/{' or export/'.join(order)}); "
                       "eval needs checkpoint.export_lora")


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def lora_identity(files: dict[str, str]) -> str:
    """One SHA-256 over a LoRA folder's files (relative name -> SHA-256 of its bytes)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel} {files[rel]}\n".encode())
    return h.hexdigest()


def verified_lora(folder: Path, lora: Path) -> str:
    """:func:`lora_identity` of ``lora``, a folder inside checkpoint ``folder``, once each of its
    files matches the SHA-256 the checkpoint's manifest holds; else :class:`EvalJobError`."""
    manifest = json.loads((folder / MANIFEST).read_text())
    prefix = lora.relative_to(folder).as_posix() + "/"
    listed = {rel[len(prefix):]: sha for rel, sha in (manifest.get("sha256") or {}).items() if rel.startswith(prefix)}
    present = sorted(p.relative_to(lora).as_posix() for p in lora.rglob("*") if p.is_file())
    unlisted = [rel for rel in present if rel not in listed]
    if unlisted or not listed:
        what = (unlisted or present or ["its files"])[0]
        raise EvalJobError(f"{lora}: {folder / MANIFEST} holds no SHA-256 for {what}; it cannot be verified, "
                           "so it is not evaluated")
    for rel, sha in sorted(listed.items()):
        if not (lora / rel).is_file():
            raise EvalJobError(f"{lora / rel} is missing (listed in {folder / MANIFEST}); not evaluated")
        if _file_sha256(lora / rel) != sha:
            raise EvalJobError(f"{lora / rel} fails its SHA-256 check against {folder / MANIFEST}: "
                               "the checkpoint is damaged; not evaluated")
    return lora_identity(listed)


def _checkpoint(step: int, folder: Path, weights: str) -> Checkpoint:
    lora = _lora_of(folder, weights)
    return Checkpoint(step, lora, folder, verified_lora(folder, lora))


def _paper_checkpoint(step: int, folder: Path) -> Checkpoint:
    """The paper's ``checkpoint-STEP/``: no manifest to verify against; known by its files' content."""
    lora = folder / "lora"
    files = {p.relative_to(lora).as_posix(): _file_sha256(p) for p in lora.rglob("*") if p.is_file()}
    return Checkpoint(step, lora, folder, lora_identity(files))


def _paper_folders(root: Path) -> list[tuple[int, Path]]:
    found = []
    if root.is_dir():
        for child in root.iterdir():
            m = _PAPER_STEP.fullmatch(child.name)
            if m and is_peft_folder(child / "lora"):
                found.append((int(m.group(1)), child))
    return sorted(found)


def _locate(p: Path) -> tuple[list[tuple[int, Path]], bool]:
    """``([(step, folder)], paper)`` that ``p`` stands for, nothing read beyond the manifests."""
    match = _STEP.fullmatch(p.name)
    if match and read_manifest(p) is not None:
        return [(int(match.group(1)), p)], False
    match = _PAPER_STEP.fullmatch(p.name)
    if match and is_peft_folder(p / "lora"):
        return [(int(match.group(1)), p)], True
    for root in (p, p / "checkpoints"):
        found = list_checkpoints(root)
        if found:
            return found, False
    if _paper_folders(p):
        return _paper_folders(p), True
    raise EvalJobError(f"{p}: not a checkpoint (epoch-NNNNNN/ with a valid checkpoint.json, or the paper's "
                       "checkpoint-STEP/lora/) nor a folder holding any")


def _build(step: int, folder: Path, paper: bool, weights: str) -> Checkpoint:
    return _paper_checkpoint(step, folder) if paper else _checkpoint(step, folder, weights)


def discover(path: str | Path, weights: str = "ema") -> list[Checkpoint]:
    """A checkpoint folder -> it; a run folder or a checkpoints root -> all of them, by step (each verified)."""
    found, paper = _locate(Path(path).expanduser())
    return [_build(step, folder, paper, weights) for step, folder in found]


def checkpoint_at(base: str | Path, step: int, weights: str = "ema") -> Checkpoint:
    """The checkpoint of epoch ``step`` under a run folder (0: the base model); only it is verified."""
    if step == 0:
        return BASE
    found, paper = _locate(Path(base).expanduser())
    folders = dict(found)
    if step not in folders:
        raise EvalJobError(f"{base}: no checkpoint of step {step} (steps there: {sorted(folders)})")
    return _build(step, folders[step], paper, weights)


def parse_eval_config(text: str, *, batch_size: int | None = None) -> tuple[int, EvalTarget]:
    """``'STEP|SDE_TYPE|NOISE_LEVEL|NUM_STEPS|DATASET|{reward json}'`` -> (step, target)."""
    parts = text.strip().split("|", 5)
    if len(parts) != 6:
        raise EvalJobError(f"--eval-config {text!r}: expected STEP|SDE_TYPE|NOISE_LEVEL|NUM_STEPS|DATASET|{{reward json}}")
    step, kind, noise, steps, dataset, reward = (p.strip() for p in parts)
    try:
        step_i, noise_f, steps_i = int(step), float(noise), int(steps)
    except ValueError:
        raise EvalJobError(f"--eval-config {text!r}: STEP and NUM_STEPS must be integers, NOISE_LEVEL a number") from None
    if kind not in SAMPLER_KINDS:
        raise EvalJobError(f"--eval-config {text!r}: SDE_TYPE must be one of {', '.join(SAMPLER_KINDS)}, got {kind!r}")
    if dataset not in DATASETS:
        raise EvalJobError(f"--eval-config {text!r}: DATASET must be one of {', '.join(DATASETS)}, got {dataset!r}")
    try:
        spec = json.loads(reward)
    except json.JSONDecodeError as exc:
        raise EvalJobError(f"--eval-config {text!r}: the reward is not JSON ({exc})") from None
    if not isinstance(spec, dict) or not spec:
        raise EvalJobError(f"--eval-config {text!r}: the reward must be a non-empty JSON object")
    check_finite({"NOISE_LEVEL": noise_f, "reward": spec}, f"--eval-config {text!r}")  # NaN passes `< 0`
    if step_i < 0 or steps_i < 1 or noise_f < 0:
        raise EvalJobError(f"--eval-config {text!r}: need STEP >= 0, NUM_STEPS >= 1, NOISE_LEVEL >= 0")
    # Like the paper's output folder names: everything that changes the numbers is in the name.
    name = f"{dataset}_{kind}_eta{noise_f:g}_steps{steps_i}_rm-{'-'.join(spec)}"
    try:
        check_target_name(name, f"--eval-config {text!r}: the target name")
    except ConfigError as err:
        raise EvalJobError(str(err)) from None
    target = EvalTarget(name=name, prompts=DATASETS[dataset], reward=spec, kind=kind, eta=noise_f, num_steps=steps_i,
                        batch_size=batch_size or EvalTarget.batch_size)
    return step_i, target
