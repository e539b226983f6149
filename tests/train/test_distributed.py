"""Multi-process runs under the real ``deepspeed`` launcher on CPU (gloo, ZeRO-2).

Five launches of a small tiny-model run, shared by every assertion below (they are the
expensive part of the suite):

- A: 2 ranks, 3 epochs, uninterrupted (checkpoint every epoch);
- S: 1 rank over the same global batch, 1 epoch;
- B: 2 ranks, SIGKILLed while writing the epoch-2 checkpoint; resumed and SIGKILLed again
  after the first optimizer step of epoch 3 (mid-epoch); resumed again to the end.

Each epoch makes 2 optimizer steps (2 inner epochs, every step over the whole global batch),
which is what lets 1 rank reproduce 2 ranks' updates.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from precise_fast.train.state.checkpoint import list_checkpoints, read_manifest, resolve_resume

from ..child_env import child_env
from .conftest import TINY_CONFIG

RUN = (
    "run.epochs=3",
    "sampler.batch_size=2",
    "sampler.num_batches_per_epoch=2",
    "sampler.images_per_prompt=2",
    "sampler.num_steps=6",
    "train.batch_size=2",
    "train.gradient_accumulation_steps=8",  # one optimizer step per inner epoch, over everything
    "train.update_schedule=fixed_size",  # global-mean windows: what lets 1 rank reproduce 2 ranks
    "train.num_inner_epochs=2",
    "train.lr=1e-2",
    "train.clip_range=1.0",
    "train.ema_interval=1",
    "log.progress=false",
    "log.image_every=3",
    "log.num_images=4",
    "eval.every=0",
    "checkpoint.every=1",
    "checkpoint.keep_last=5",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, *, world: int, extra=(), crash: str | None = None, resume: bool = False) -> subprocess.CompletedProcess:
    overrides = [a for o in (*RUN, f"run.output_dir={out}", *extra) for a in ("--set", o)]
    args = ["--module", "precise_fast.train", "--config", str(TINY_CONFIG), *overrides] + (["--resume"] if resume else [])
    if world == 1:
        cmd = [sys.executable, "-m", "precise_fast.train", *args[2:]]
    else:
        launcher = str(Path(sys.executable).parent / "deepspeed")
        cmd = [launcher, "--num_gpus", str(world), "--master_port", str(_free_port()), *args]
    env = child_env()
    if crash:
        env["PRECISE_FAST_CRASH_AT"] = crash
    # A new session: the crash hook SIGKILLs the whole process group (launcher and ranks), like a machine loss.
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, start_new_session=True,
                          cwd=Path(__file__).resolve().parents[2])


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _state(folder: Path) -> dict:
    """Everything a checkpoint says about the model: weights, optimizer partitions, EMA, history."""
    ds = folder / "ds" / "state"
    out = {"module": torch.load(ds / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]}
    for f in sorted(ds.glob("*optim_states.pt")):
        out[f.name] = torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"]
    trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False)
    out["ema"] = trainer["ema"]["shadow"]
    out["history"] = trainer["history"]
    out["sampler"] = trainer["sampler"]
    return out


def _equal(a, b, path="") -> None:
    """Bitwise equality of nested checkpoint contents; the message says where it differs."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), f"differs at {path}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"keys differ at {path}"
        for k in a:
            _equal(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"lengths differ at {path}"
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif type(a).__eq__ is object.__eq__ and hasattr(a, "__dict__"):  # e.g. DeepSpeed's loss scaler
        assert type(a) is type(b), f"types differ at {path}"
        _equal(vars(a), vars(b), path)
    else:
        assert a == b, f"differs at {path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    out = {"A": root / "A", "S": root / "S", "B": root / "B"}
    out["procA"] = _launch(out["A"], world=2)
    out["procS"] = _launch(out["S"], world=1, extra=("run.epochs=1", "sampler.num_batches_per_epoch=4"))
    out["procB1"] = _launch(out["B"], world=2, crash="checkpoint_write:2")
    out["B_after_first_kill"] = [e for e, _ in list_checkpoints(out["B"] / "checkpoints")]
    out["B_tmp_after_first_kill"] = (out["B"] / "checkpoints" / ".tmp-epoch-000002").is_dir()
    out["procB2"] = _launch(out["B"], world=2, crash="train_step:3", resume=True)
    out["B_after_second_kill"] = [e for e, _ in list_checkpoints(out["B"] / "checkpoints")]
    out["procB3"] = _launch(out["B"], world=2, resume=True)
    return out


def test_uninterrupted_run_and_its_outputs(runs):
    _ok(runs["procA"])
    a = runs["A"]
    assert [e for e, _ in list_checkpoints(a / "checkpoints")] == [1, 2, 3]
    assert read_manifest(a / "checkpoints" / "epoch-000003")["world_size"] == 2
    assert (a / "checkpoints" / "epoch-000003" / "export" / "lora_ema" / "pytorch_lora_weights.safetensors").is_file()
    assert (a / "reward_curve.png").is_file() and (a / "images" / "samples_epoch_0003.png").is_file()
    assert list((a / "tensorboard").glob("events.out.tfevents.*"))
    assert len((a / "metrics.jsonl").read_text().splitlines()) == 3
    assert "[precise_fast] done" in runs["procA"].stdout and "reward" in runs["procA"].stdout


def test_exported_ema_lora_loads_in_a_stock_pipeline(runs, tiny_pipe):
    """checkpoint/export/lora_ema is a diffusers LoRA file holding exactly the EMA weights."""
    from precise_fast.models import load_lora, lora_parameters

    _ok(runs["procA"])
    folder = runs["A"] / "checkpoints" / "epoch-000003"
    load_lora(tiny_pipe, folder / "export" / "lora_ema")
    ema = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=False)["ema"]["shadow"]
    loaded = lora_parameters(tiny_pipe.transformer)
    assert len(loaded) == len(ema) and all(torch.equal(p.detach(), e) for p, e in zip(loaded, ema))


def test_two_ranks_make_the_same_update_as_one_rank(runs):
    _ok(runs["procA"])
    _ok(runs["procS"])
    two = _state(runs["A"] / "checkpoints" / "epoch-000001")
    one = _state(runs["S"] / "checkpoints" / "epoch-000001")
    # Same global batch: the same rewards ...
    assert one["history"][0]["reward_mean"] == pytest.approx(two["history"][0]["reward_mean"], rel=1e-6)
    # ... the same gradients (Adam's update is blind to a gradient scale, so the loss
    # normalisation across ranks is checked on the gradient norm DeepSpeed reports) ...
    norms = [json.loads(run.joinpath("metrics.jsonl").read_text().splitlines()[0])["train/grad_norm"]
             for run in (runs["S"], runs["A"])]
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)
    # ... and the same weights after the epoch's two AdamW steps. Adam divides by sqrt(v):
    # elements whose gradient is ~0 turn float-rounding noise into up to ~1e-3 of a step
    # (lr 1e-2), hence atol 2e-5; lr moves LoRA B from 0 a thousand times further.
    moved = 0.0
    for name, w2 in two["module"].items():
        w1 = one["module"][name]
        torch.testing.assert_close(w1, w2, rtol=1e-3, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}")
        moved = max(moved, float(w2.abs().max()))
    assert moved > 5e-3


def test_kill_mid_checkpoint_keeps_the_previous_one(runs):
    _ok(runs["procA"])
    _killed(runs["procB1"])
    assert runs["B_after_first_kill"] == [1]
    assert runs["B_tmp_after_first_kill"], "the crash should have hit while epoch 2 was being written"
    # The surviving checkpoint is intact: identical to the uninterrupted run's epoch 1.
    _equal(_state(runs["A"] / "checkpoints" / "epoch-000001"), _state(runs["B"] / "checkpoints" / "epoch-000001"))


def test_kill_mid_epoch_then_resume_reproduces_the_uninterrupted_run(runs):
    _ok(runs["procA"])
    _killed(runs["procB2"])
    assert runs["B_after_second_kill"] == [1, 2]  # killed in epoch 3, after an optimizer step
    _ok(runs["procB3"])
    b = runs["B"]
    assert not (b / "checkpoints" / ".tmp-epoch-000002").exists()
    assert resolve_resume("latest", b / "checkpoints") == b / "checkpoints" / "epoch-000003"
    for epoch in (2, 3):
        tag = f"epoch-{epoch:06d}"
        _equal(_state(runs["A"] / "checkpoints" / tag), _state(b / "checkpoints" / tag), path=tag)
    # The resumed run's metric log has each epoch once.
    epochs = [line.split(",")[0] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 3
