"""Run logging on rank 0: TensorBoard always, wandb when asked, a JSONL of per-epoch metrics.

After a resume, what the interrupted run logged past its last checkpoint is dropped
rather than shown twice: TensorBoard is opened with ``purge_step`` at the next epoch and
``metrics.jsonl`` loses its later lines. That rewrite goes through a temporary file that is
fsynced and renamed over the old one (:func:`keep_metrics_through`), so a kill at any
moment leaves the old file or the new one whole; the run then appends. A line a kill tore
(the last one) is dropped with a warning, as is any other line that is not JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

logger = logging.getLogger("precise_fast.train")


def _kept_lines(path: Path, epoch: int) -> list[str]:
    """The lines of ``path`` for epochs up to ``epoch``; unreadable ones are dropped with a warning."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_epoch = record["epoch"]
        except (json.JSONDecodeError, KeyError, TypeError):
            torn = number == len(lines)  # no newline after it: the write was cut short
            logger.warning("%s line %d is %s and was dropped: %.80r", path, number,
                           "torn (an interrupted write)" if torn else "not a metrics record", line)
            continue
        if record_epoch <= epoch:
            kept.append(line)
    return kept


def keep_metrics_through(path: Path, epoch: int) -> None:
    """Rewrite ``path`` with its lines up to ``epoch``: temporary file, fsync, rename, fsync the folder."""
    path = Path(path)
    if not path.is_file():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in _kept_lines(path, epoch))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class RunLogger:
    def __init__(self, out_dir: Path, cfg, *, enabled: bool, resumed_epoch: int | None = None):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.writer = None
        self.wandb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resumed_epoch is None else resumed_epoch + 1
        self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=purge)
        if cfg.log.wandb:
            try:
                import wandb
            except ImportError as err:
                raise RuntimeError("log.wandb is true but the wandb package is not installed (pip install wandb)") from err
            self.wandb = wandb.init(project=cfg.log.wandb_project, name=cfg.run.name, config=cfg.to_dict(),
                                    dir=str(self.out_dir), resume="allow")
        jsonl = self.out_dir / "metrics.jsonl"
        if resumed_epoch is not None:
            keep_metrics_through(jsonl, resumed_epoch)
        self._jsonl = open(jsonl, "a", encoding="utf-8")  # never truncates: a fresh start has no file

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        for key, value in clean.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)
        self._jsonl.write(json.dumps({"epoch": step, **clean}) + "\n")
        self._jsonl.flush()

    def log_image(self, tag: str, png: Path, step: int) -> None:
        if not self.enabled:
            return
        import matplotlib.image as mpimg
        import torch

        array = mpimg.imread(str(png))[..., :3]
        self.writer.add_image(tag, torch.from_numpy(array).permute(2, 0, 1), step)
        self.writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
        self._jsonl.close()


def configure_logging(rank: int) -> None:
    """Log lines tagged with the rank, rank 0 at INFO and the others at WARNING; chatty libraries at WARNING
    (the trainer and ``precise-fast eval`` both call this once per process)."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("deepspeed", "DeepSpeed", "torch.distributed", "diffusers", "transformers", "peft", "precise_fast.rollout",
                 "precise_fast.models", "httpx", "httpcore"):  # httpx logs every reward request at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed")
