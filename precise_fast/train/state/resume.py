"""What a start does with its run folder, and what a resume may change (before any model loads).

Rules (docs/RELIABILITY.md lists the tests):

- ``--resume`` needs a checkpoint that verifies; with none it is an error, never a fresh
  start. ``--resume-or-start`` starts fresh when there is no checkpoint at all (a broken
  one is still an error), setting an earlier attempt's logs aside first.
- A fresh start refuses a run folder that already holds a run (metrics, TensorBoard
  events, checkpoints): its logs are never overwritten.
- Settings that change the saved tensors' layout (:data:`REFUSED`) cannot change on a
  resume. The optimizer settings (:data:`OPTIMIZER_KEYS`) may: they are applied after the
  optimizer state is loaded (which would otherwise bring back the old ones) and read back
  from the objects DeepSpeed steps with, so a value recorded in config.yaml is in effect.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..lifecycle.run_lock import LOCK_NAME, RunFolderError, check_run_folder  # noqa: F401 - RunFolderError: importers' name
from .checkpoint import MANIFEST, CheckpointError, check_loadable, load_checkpoint_file, resolve_resume

# Sections that may change without changing what the remaining epochs compute.
RESUME_FREE = ("run.epochs", "run.output_dir", "run.collective_timeout_s", "eval.", "log.", "checkpoint.")
# Changing these would not load (tensor shapes, ZeRO partition layout, the EMA's state, the
# prompt order's seed).
REFUSED = ("model.finetune", "model.lora_rank", "model.lora_targets", "train.zero_stage", "train.ema", "run.seed")
LORA_ONLY = ("model.lora_rank", "model.lora_targets")  # no adapter is saved by a full fine-tune
OPTIMIZER_KEYS = ("train.lr", "train.betas", "train.weight_decay", "train.adam_eps", "train.max_grad_norm")
PREVIOUS = "previous"  # where --resume-or-start puts the logs of an attempt that left no checkpoint


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "spec":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_traces(out_dir: Path) -> list[str]:
    """What in ``out_dir`` a fresh start would overwrite or mix with."""
    out_dir = Path(out_dir)
    found = []
    if (out_dir / "metrics.jsonl").is_file():
        found.append("metrics.jsonl")
    if any((out_dir / "tensorboard").glob("events.out.tfevents.*")):
        found.append("tensorboard/")
    ckpts = out_dir / "checkpoints"
    if ckpts.is_dir() and any(c.name.startswith("epoch-") for c in ckpts.iterdir()):
        found.append("checkpoints/")
    return found


def _set_aside(out_dir: Path, items: list[Path], warn: Callable[[str], None], what: str) -> Path | None:
    """Move ``items`` to a new ``out_dir/previous/<time>/`` (never one an earlier set-aside made)."""
    if not items:
        return None
    base = out_dir / PREVIOUS / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest, n = base, 1
    while dest.exists():  # two set-asides within one second
        dest, n = base.with_name(f"{base.name}-{n}"), n + 1
    dest.mkdir(parents=True)
    for item in items:
        os.rename(item, dest / item.name)
    warn(f"{what} {dest}")
    return dest


def set_aside_logs(out_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """Move metrics.jsonl and tensorboard/ of an earlier attempt to ``out_dir/previous/<time>/``."""
    out_dir = Path(out_dir)
    items = [out_dir / n for n in ("metrics.jsonl", "tensorboard") if (out_dir / n).exists()]
    return _set_aside(out_dir, items, warn,
                      f"no checkpoint to resume in {out_dir}: starting fresh; the earlier attempt's logs were moved to")


def set_aside_run(out_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """``--fresh``: move everything of an earlier run (logs, checkpoints, images, config) to
    ``out_dir/previous/<time>/``; only the lock and the earlier set-asides stay."""
    out_dir = Path(out_dir)
    items = sorted(p for p in out_dir.iterdir() if p.name not in (PREVIOUS, LOCK_NAME)) if out_dir.is_dir() else []
    return _set_aside(out_dir, items, warn, f"--fresh: the earlier run in {out_dir} was moved (nothing deleted) to")


def choose_start(out_dir: Path, resume: str | None, *, or_start: bool, warn: Callable[[str], None],
                 fresh: bool = False) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start (rank 0 only: it may move files;
    under the run lock, main.py). ``fresh`` sets an earlier run aside rather than refusing it."""
    out_dir = Path(out_dir)
    check_run_folder(out_dir)
    if fresh:
        if resume is not None or or_start:
            raise ValueError("fresh excludes resume and or_start")
        set_aside_run(out_dir, warn)
        return None
    root = out_dir / "checkpoints"
    if resume is not None or or_start:
        folder = resolve_resume(resume or "latest", root, warn=warn)
        if folder is not None:
            check_loadable(folder)  # a crafted folder is refused here, before any of it is unpickled
            return folder
        if not or_start:
            raise CheckpointError(f"--resume: nothing to resume, {root} holds no checkpoint "
                                  "(check run.output_dir; --resume-or-start starts fresh when there is none)")
        set_aside_logs(out_dir, warn)
        return None
    traces = run_traces(out_dir)
    if traces:
        raise RunFolderError(f"{out_dir} already holds a run ({', '.join(traces)}): pass --resume to continue it, "
                             "or choose another run.output_dir (a fresh start never overwrites a run's logs)")
    return None


def saved_config(folder: Path) -> dict:
    """The run config a checkpoint was written with (the manifest's copy; older ones: trainer.pt)."""
    manifest = json.loads((Path(folder) / MANIFEST).read_text())
    if isinstance(manifest.get("config"), dict):
        return manifest["config"]
    return load_checkpoint_file(Path(folder) / "trainer.pt")["config"]


def prompt_set_identity(prompt_set) -> dict:
    """What the manifest records of ``prompts.train``: its path, size and a SHA-256 of its
    content (every prompt and its metadata, in order), so a rewritten file of the same size is seen."""
    content = json.dumps([list(prompt_set.prompts), list(prompt_set.metadata)], sort_keys=True, ensure_ascii=False)
    return {"path": str(prompt_set.path), "count": len(prompt_set),
            "sha256": hashlib.sha256(content.encode("utf-8")).hexdigest()}


def check_prompt_set(folder: Path, prompt_set) -> None:
    """Refuse a resume onto another prompt set: the saved prompt order walks the trained one.
    (Checkpoints older than the record: the sampler state still compares the count.)"""
    saved = json.loads((Path(folder) / MANIFEST).read_text()).get("prompt_set")
    now = prompt_set_identity(prompt_set)
    if isinstance(saved, dict) and saved.get("sha256") != now["sha256"]:
        raise CheckpointError(f"--resume {folder}: prompts.train {now['path']} ({now['count']} prompts) and the prompt "
                              f"set the checkpoint was trained on ({saved.get('path')}, {saved.get('count')} prompts) "
                              "differ in content; the prompt order cannot continue over another set (start a new "
                              "run.output_dir to change it)")


def changed_settings(saved: dict, cfg: Config, folder: Path) -> list[str]:
    """Keys that differ from the checkpoint's config and matter for the result; raises for :data:`REFUSED`."""
    before, now = flatten(saved), flatten(cfg.to_dict())
    for key in REFUSED:
        if key in LORA_ONLY and cfg.model.finetune != "lora":
            continue
        if before.get(key) != now.get(key):
            raise CheckpointError(f"--resume {folder}: {key} is {now.get(key)!r} but the checkpoint was trained with "
                                  f"{before.get(key)!r}; the saved weights need the same value (start a new run.output_dir to change it)")
    return [k for k, v in now.items() if before.get(k) != v and not k.startswith(RESUME_FREE)]


def apply_optimizer_settings(engine, cfg: Config) -> None:
    """Write the run's optimizer settings into what DeepSpeed steps with (after ``load_checkpoint``)."""
    t = cfg.train
    for group in engine.optimizer.param_groups:
        group.update(lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, eps=t.adam_eps)
    engine._config.gradient_clipping = t.max_grad_norm  # ZeRO-0 clips with the engine's value
    if hasattr(engine.optimizer, "clip_grad"):  # ZeRO 1-3 clip with their own copy, restored from the checkpoint
        engine.optimizer.clip_grad = t.max_grad_norm


def optimizer_settings_in_effect(engine) -> dict:
    """:data:`OPTIMIZER_KEYS` as DeepSpeed will use them (every param group must agree)."""
    groups = engine.optimizer.param_groups
    values = {
        "train.lr": {float(g["lr"]) for g in groups},
        "train.betas": {tuple(float(b) for b in g["betas"]) for g in groups},
        "train.weight_decay": {float(g["weight_decay"]) for g in groups},
        "train.adam_eps": {float(g["eps"]) for g in groups},
        "train.max_grad_norm": {float(getattr(engine.optimizer, "clip_grad", engine.gradient_clipping()))},
    }
    return {k: (next(iter(v)) if len(v) == 1 else sorted(v)) for k, v in values.items()}


def check_optimizer_settings(engine, cfg: Config) -> None:
    """Refuse to go on (and record the config) when a setting in effect is not the config's."""
    effect = optimizer_settings_in_effect(engine)
    wanted = flatten(cfg.to_dict())
    for key in OPTIMIZER_KEYS:
        want = tuple(wanted[key]) if isinstance(wanted[key], list) else float(wanted[key])
        if effect[key] != want:
            raise CheckpointError(f"{key}: the optimizer runs with {effect[key]!r}, the config says {want!r}")
