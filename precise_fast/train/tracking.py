"""Run logging on rank 0: TensorBoard always, wandb when asked, a JSONL of per-epoch metrics.

After a resume, what the interrupted run logged past its last checkpoint is dropped
rather than shown twice: TensorBoard is opened with ``purge_step`` at the next epoch and
``metrics.jsonl`` loses its later lines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


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
        kept = []
        if resumed_epoch is not None and jsonl.is_file():
            kept = [line for line in jsonl.read_text().splitlines() if json.loads(line)["epoch"] <= resumed_epoch]
        self._jsonl = open(jsonl, "w")
        self._jsonl.writelines(line + "\n" for line in kept)

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
