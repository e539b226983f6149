"""The standalone evaluator: every (checkpoint, target) job into one eval folder, resumable.

Every rank loads the base pipeline once; per checkpoint it loads the exported LoRA through
diffusers' stock loader (none for the base model, step 0), runs its share of each target's
batches with the in-training eval's code (:class:`precise_fast.train.report.evaluator.Evaluator`),
and drops the adapter again. Items already in the folder's JSONL files for the same
checkpoint content (``checkpoint_sha256``, eval/jobs.py) are skipped, so a killed eval picks
up where it stopped, and a rolled-back (or another run's) checkpoint of the same step is
scored anew; rank 0 writes the merged JSONL and the reports at the end. ``PRECISE_FAST_CRASH_AT=eval_batch:<n>`` kills the job after the n-th written
batch (see :mod:`precise_fast.train.lifecycle.faults`), for the resume test.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from ..models import load_lora, tiny_pipeline_path
from ..rewards.preprocess import to_uint8
from ..train.lifecycle.faults import crash_point
from ..train.policy.build import load_run_pipeline
from ..train.policy.distributed import DistInfo, barrier, broadcast_object
from ..train.report.evaluator import Evaluator, Target, rank_batches
from .jobs import Checkpoint, EvalJobError
from .peft_lora import is_peft_folder, load_peft_adapter
from .records import ShardWriter, merge, read_records
from .report import write_reports

logger = logging.getLogger("precise_fast.eval")
ADAPTER = "eval_checkpoint"  # not "eval": peft adds a submodule of that name, which nn.Module.eval shadows
SETTINGS = "eval_settings.json"


def _load_pipeline(cfg, device):
    """The run's pipeline as its training computed with it (the precision too: an autocast
    recipe evaluated in plain float32 would score other images)."""
    m = cfg.model
    return load_run_pipeline(cfg, tiny_pipeline_path(m.tiny_seed) if m.path == "tiny" else m.path, device)


def _check_settings(out_dir: Path, settings: dict) -> None:
    """A folder holds one eval's items: resuming with another seed or other targets would mix them."""
    path = out_dir / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("seed") != settings["seed"] or old.get("weights") != settings["weights"]:
            raise ValueError(f"{out_dir} holds an eval with seed {old.get('seed')} / weights {old.get('weights')}; "
                             "use another --out folder")
        for name, desc in settings["targets"].items():
            if name in old.get("targets", {}) and old["targets"][name] != desc:
                raise ValueError(f"{out_dir}: target {name!r} was evaluated with other settings "
                                 f"({old['targets'][name]}); use another --out folder")
        settings = {**settings, "targets": {**old.get("targets", {}), **settings["targets"]}}
    path.write_text(json.dumps(settings, indent=2))


def _save_images(images: torch.Tensor, records: list[dict], out_dir: Path, t: Target, ckpt: Checkpoint) -> None:
    from PIL import Image  # only --save-images writes PNGs

    # Two checkpoints of one step (a rollback, another run) keep their images apart.
    name = f"step-{ckpt.step:06d}-{ckpt.sha256[:12]}"
    folder = out_dir / "images" / t.name / name
    folder.mkdir(parents=True, exist_ok=True)
    arrays = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    for array, rec in zip(arrays, records):
        rel = Path("images") / t.name / name / f"{rec['index']:05d}.png"
        Image.fromarray(array).save(out_dir / rel)
        rec["image"] = rel.as_posix()


def run(cfg, jobs: list[tuple[Checkpoint, Target]], out_dir: Path, *, dist: DistInfo, seed: int, weights: str,
        save_images: bool = False, progress: bool = True) -> dict | None:
    """Evaluate ``jobs``; rank 0 returns the summary (the others None)."""
    out_dir = Path(out_dir)
    settings = {"seed": seed, "weights": weights, "targets": {}}
    for _, t in jobs:
        settings["targets"][t.name] = t.describe()
    refusal = None
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            _check_settings(out_dir, settings)
        except ValueError as err:
            refusal = str(err)
    # Rank 0's verdict on every rank (a refusal raised on rank 0 alone left the others waiting
    # until the collective timeout); the broadcast is also the wait for rank 0's folder and settings.
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise EvalJobError(refusal)
    done = set(read_records(out_dir))

    pipeline = _load_pipeline(cfg, dist.device)
    r = cfg.reward
    reward_device = dist.device if r.device == "auto" else torch.device(r.device)
    reward_dtype = torch.float32 if reward_device.type == "cpu" else getattr(torch, cfg.model.dtype)
    evaluator = Evaluator(pipeline, cfg, reward_device=reward_device, reward_dtype=reward_dtype)
    weights = {t.name: dict(evaluator.reward(t).weights) for _, t in jobs}

    work = []  # (checkpoint, target, indices) of this rank still to do
    for ckpt, t in jobs:
        for indices, _ in rank_batches(evaluator.num_items(t), t.batch_size, dist.rank, dist.world_size, pad=False):
            if any((ckpt.sha256, t.name, i) not in done for i in indices):
                work.append((ckpt, t, indices))
    total = sum(len(w[2]) for w in work)
    if dist.is_main:
        print(f"[precise_fast] eval: {len(done)} items already in {out_dir}; rank 0 scores {total} images "
              f"for {len(jobs)} (checkpoint, target) jobs", flush=True)
    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm  # only rank 0's progress bar uses it

        bar = tqdm(total=total, desc="eval (rank 0)", unit="img", dynamic_ncols=True, file=sys.stderr)
    writer = ShardWriter(out_dir, dist.rank)
    loaded: Checkpoint | None = None
    try:
        for ckpt, t, indices in work:
            if ckpt != loaded:
                _switch(pipeline, loaded, ckpt)
                loaded = ckpt
            records, images = evaluator.score_batch(t, indices, seed=seed)
            keep = [j for j, rec in enumerate(records) if (ckpt.sha256, t.name, rec["index"]) not in done]
            records = [dict(records[j], step=ckpt.step, checkpoint=ckpt.label, checkpoint_sha256=ckpt.sha256)
                       for j in keep]
            if save_images:
                _save_images(images[keep], records, out_dir, t, ckpt)
            writer.write(records)
            if bar is not None:
                bar.update(len(indices))
            crash_point("eval_batch", dist.rank)
    finally:
        writer.close()
        if bar is not None:
            bar.close()
        _switch(pipeline, loaded, None)
        evaluator.close()
    barrier()
    summary = None
    if dist.is_main:
        records = merge(out_dir)
        wanted = {(c.sha256, t.name) for c, t in jobs}
        mine = [x for x in records if (x.get("checkpoint_sha256"), x["target"]) in wanted]
        listed = [{"step": c.step, "checkpoint": c.label, "checkpoint_sha256": c.sha256, "target": t.name}
                  for c, t in jobs]
        summary = write_reports(out_dir, mine, {**settings, "jobs": listed}, weights)
    return broadcast_object(summary) if dist.world_size > 1 else summary


def _switch(pipeline, current: Checkpoint | None, new: Checkpoint | None) -> None:
    """Replace the loaded LoRA (if any) by ``new``'s (if any)."""
    if current is not None and current.lora is not None:
        pipeline.delete_adapters(ADAPTER)
    if new is not None and new.lora is not None:
        if not new.lora.is_dir():  # diffusers would take the missing path for a Hugging Face repo id
            raise EvalJobError(f"checkpoint {new.label} no longer exists (pruned by its run's checkpoint.keep_last while "
                               "this eval ran?); the items scored so far are kept: evaluate the checkpoints that remain")
        if is_peft_folder(new.lora):  # the paper's checkpoint-STEP/lora
            load_peft_adapter(pipeline.transformer, new.lora, ADAPTER)
        else:
            load_lora(pipeline, new.lora, adapter_name=ADAPTER)

