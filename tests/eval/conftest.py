"""Fixtures of the eval tests: a one-rank process group, a short tiny-model run with two
checkpoints (trained once per session), and a data folder for the paper's dataset names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny_cpu.yaml"

# Two targets the in-training eval scores at every epoch: the training sampler (the
# default) and the ODE with another reward, fewer steps and another batch size.
TARGETS = "[{name: sde, batch_size: 3, num_prompts: 5}, {name: ode, kind: ode, num_steps: 3, batch_size: 4, " \
          "num_prompts: 5, reward: jpeg_compressibility}]"
RUN = (
    "run.epochs=2",
    "sampler.batch_size=2",
    "sampler.num_batches_per_epoch=2",
    "sampler.images_per_prompt=2",
    "sampler.num_steps=4",
    "train.batch_size=2",
    "log.progress=false",
    "log.image_every=0",
    "eval.every=1",
    "checkpoint.every=1",
    f"eval.targets={TARGETS}",
)


@pytest.fixture(scope="session")
def dist1():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from precise_fast.train.policy.distributed import init_distributed

    return init_distributed("cpu")


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, dist1):
    """A 2-epoch tiny run (checkpoints 1 and 2) and its per-epoch metrics."""
    import json

    from precise_fast.train.config import load_config
    from precise_fast.train.trainer import Trainer

    out = tmp_path_factory.mktemp("short_run") / "run"
    cfg = load_config(TINY_CONFIG, [f"run.output_dir={out}", *RUN])
    trainer = Trainer(cfg, dist1)
    try:
        trainer.run()
    finally:
        trainer.close()
    metrics = {r["epoch"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    return out, metrics


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """``$PRECISE_FAST_DATA`` with a small ``pickscore_test.txt`` (the paper's DATASET name)."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(REPO / "configs" / "prompts" / "tiny_test.txt", folder / "pickscore_test.txt")
    monkeypatch.setenv("PRECISE_FAST_DATA", str(folder))
    return folder
