"""Where a start begins (issue 13 item 2), decided before any model loads (train/state/resume.py):
``--resume`` never silently starts over, ``--resume-or-start`` may, and a fresh start never
overwrites an earlier run's metrics.jsonl / TensorBoard events."""

import subprocess

import pytest
import torch

from precise_fast.train.state.checkpoint import CheckpointError, CheckpointManager
from precise_fast.train.state.resume import RunFolderError, choose_start


def _old_run(out):
    """What a run leaves before its first checkpoint: metrics and TensorBoard events."""
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"x")
    (out / "metrics.jsonl").write_text('{"epoch": 1, "reward_mean": 1.0}\n')


def _checkpoint(out, epoch=1):
    m = CheckpointManager(out / "checkpoints", keep_last=3, rank=0, world_size=1, barrier=lambda: None)

    def write(folder):
        folder.mkdir(parents=True)
        torch.save({"w": torch.zeros(3)}, folder / "w.pt")

    return m.save(epoch, write_engine=write, trainer_state={}, rank_state={})


def test_resume_without_a_checkpoint_is_an_error(tmp_path):
    for out in (tmp_path / "never_created", tmp_path):
        with pytest.raises(CheckpointError, match="nothing to resume"):
            choose_start(out, "latest", or_start=False, warn=pytest.fail)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        choose_start(tmp_path, str(tmp_path / "mistyped"), or_start=False, warn=pytest.fail)


def test_resume_or_start_starts_fresh_and_keeps_the_old_logs(tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    warnings = []
    assert choose_start(out, None, or_start=True, warn=warnings.append) is None
    assert not (out / "metrics.jsonl").exists() and not (out / "tensorboard").exists()
    (kept,) = (out / "previous").iterdir()
    assert (kept / "metrics.jsonl").read_text().startswith('{"epoch": 1')
    assert (kept / "tensorboard" / "events.out.tfevents.1.host").is_file()
    assert len(warnings) == 1 and str(kept) in warnings[0]


def test_resume_or_start_resumes_when_there_is_a_checkpoint(tmp_path):
    folder = _checkpoint(tmp_path)
    assert choose_start(tmp_path, None, or_start=True, warn=pytest.fail) == folder
    assert choose_start(tmp_path, "latest", or_start=False, warn=pytest.fail) == folder


def test_fresh_start_refuses_a_folder_holding_a_run(tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    with pytest.raises(RunFolderError, match="already holds a run .*metrics.jsonl.*tensorboard"):
        choose_start(out, None, or_start=False, warn=pytest.fail)
    assert (out / "metrics.jsonl").is_file()  # untouched
    other = tmp_path / "ckpt_only"
    _checkpoint(other)
    with pytest.raises(RunFolderError, match="checkpoints/"):
        choose_start(other, None, or_start=False, warn=pytest.fail)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text("run: {}\n")  # a run that died while loading left only this
    assert choose_start(empty, None, or_start=False, warn=pytest.fail) is None


def test_a_rewritten_prompt_set_or_changed_lora_targets_is_refused_before_the_model_loads(tmp_path, dist1, monkeypatch):
    """Issue 25 item 13: a prompt file rewritten with as many lines resumed without a word (only
    the count was compared) and a changed ``model.lora_targets`` crashed inside DeepSpeed after
    the model loaded. Both are refused naming what changed, before any model loads."""
    from precise_fast.train import trainer as trainer_module
    from precise_fast.train.policy import build as policy_build

    from .conftest import REPO, small_config

    fast = ("sampler.num_batches_per_epoch=2", "sampler.num_steps=4", "sampler.images_per_prompt=4")
    prompts = tmp_path / "prompts.txt"
    lines = (REPO / "configs" / "prompts" / "tiny_train.txt").read_text().splitlines()
    prompts.write_text("\n".join(lines) + "\n")
    t = trainer_module.Trainer(small_config(tmp_path, *fast, f"prompts.train={prompts}"), dist1)
    try:
        t.run()
    finally:
        t.close()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the resume was refused")

    monkeypatch.setattr(policy_build, "load_pipeline", no_model)
    prompts.write_text("\n".join(["a red cube"] + lines[1:]) + "\n")  # same count, one prompt changed
    with pytest.raises(CheckpointError, match=f"--resume .*epoch-000001: prompts.train {prompts} .*differ"):
        trainer_module.Trainer(small_config(tmp_path, *fast, "run.epochs=2", f"prompts.train={prompts}"), dist1,
                               resume="latest")
    prompts.write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointError, match="model.lora_targets is 'paper_plus_single_out' but the checkpoint was "
                                              "trained with 'paper'"):
        trainer_module.Trainer(small_config(tmp_path, *fast, "run.epochs=2", f"prompts.train={prompts}",
                                            "model.lora_targets=paper_plus_single_out"), dist1, resume="latest")


def _earlier_run(out):
    """What a finished run leaves: logs, checkpoints, images, its config, the released lock."""
    _old_run(out)
    _checkpoint(out)
    (out / "images").mkdir()
    (out / "images" / "samples_epoch_0001.png").write_bytes(b"png")
    (out / "config.yaml").write_text("run: {}\n")
    (out / "run.lock").write_text("")


def test_fresh_sets_the_earlier_run_aside_whole(tmp_path):
    """Issue 25 item 12: ``make train`` ran ``rm -rf runs/toy_shapes``; it now starts with
    ``--fresh``, which moves the earlier run (everything but the lock) to previous/<time>/."""
    out = tmp_path / "run"
    _earlier_run(out)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.name != "run.lock")
    warnings = []
    assert choose_start(out, None, or_start=False, fresh=True, warn=warnings.append) is None
    assert sorted(p.name for p in out.iterdir()) == ["previous", "run.lock"]
    (kept,) = (out / "previous").iterdir()
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*")) == before
    assert len(warnings) == 1 and str(kept) in warnings[0]
    # A second fresh start keeps both earlier runs apart, even within the same second.
    _earlier_run(out)
    assert choose_start(out, None, or_start=False, fresh=True, warn=warnings.append) is None
    assert len(list((out / "previous").iterdir())) == 2
    assert choose_start(out, None, or_start=False, fresh=True, warn=pytest.fail) is None  # nothing to move: no warning


def test_make_train_never_deletes_the_previous_run():
    from .conftest import REPO

    proc = subprocess.run(["make", "-n", "train", "TRAIN_RUN=runs/some_run"], cwd=REPO, capture_output=True, text=True,
                          check=True)
    assert "rm " not in proc.stdout, proc.stdout
    (launch,) = [line for line in proc.stdout.splitlines() if "precise_fast.train.supervise" in line]
    assert "--set run.output_dir=runs/some_run" in launch and launch.rstrip().endswith("--fresh")
