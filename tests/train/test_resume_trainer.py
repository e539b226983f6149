"""Resume and run-end promises of the trainer, in process on the tiny model (issue 13):

- ``checkpoint.every: 0`` still saves the last epoch (item 3; the schema's promise);
- a resume with a changed lr / betas / weight decay / Adam eps / grad-norm clip runs with
  the new values, not those the restored optimizer state brought back (item 1);
- a resume that changes the LoRA rank is refused before any model loads, one with another
  prompt set with the checkpoint's own message (no traceback, nothing moved aside);
- a run whose every epoch kept no sample warns per epoch and exits 3 saying why (item 5).
"""

import json
import logging

import pytest

from precise_fast import exit_status
from precise_fast.train import main as train_main
from precise_fast.train.state.checkpoint import CheckpointError, list_checkpoints
from precise_fast.train.state.resume import optimizer_settings_in_effect

from .conftest import TINY_CONFIG, small_config

FAST = ("sampler.num_batches_per_epoch=2", "sampler.num_steps=4", "sampler.images_per_prompt=4")


def test_every_zero_saves_the_last_epoch_and_resume_applies_changed_optimizer_settings(tmp_path, dist1, monkeypatch):
    from precise_fast.train import trainer as trainer_module
    from precise_fast.train.policy import build as policy_build

    cfg = small_config(tmp_path, *FAST)
    assert cfg.checkpoint.every == 0
    t = trainer_module.Trainer(cfg, dist1)
    try:
        t.run()
    finally:
        t.close()
    root = tmp_path / "run" / "checkpoints"
    assert [e for e, _ in list_checkpoints(root)] == [1]

    changed = ("run.epochs=2", "train.lr=1e-2", "train.betas=[0.8,0.95]", "train.weight_decay=0.05",
               "train.adam_eps=1e-6", "train.max_grad_norm=0.25")
    resumed = trainer_module.Trainer(small_config(tmp_path, *FAST, *changed), dist1, resume="latest")
    try:
        assert resumed.epoch == 1
        assert optimizer_settings_in_effect(resumed.policy.engine) == {
            "train.lr": 1e-2, "train.betas": (0.8, 0.95), "train.weight_decay": 0.05, "train.adam_eps": 1e-6,
            "train.max_grad_norm": 0.25,
        }
    finally:
        resumed.close()

    # A different prompt set cannot continue the prompt order: one clear error, and nothing moved.
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("a cat\na dog\n")
    # (Refused before the model loads since the manifest records the prompt set: issue 25 item 13.)
    with pytest.raises(CheckpointError, match="--resume .*epoch-000001: prompts.train .*fewer.txt \\(2 prompts\\) .*32 prompts\\) "
                                              "differ in content"):
        trainer_module.Trainer(small_config(tmp_path, *FAST, f"prompts.train={fewer}"), dist1, resume="latest")
    assert [e for e, _ in list_checkpoints(root)] == [1]

    # A changed LoRA rank cannot load: refused with the key named, before the model loads.
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the resume was refused")

    monkeypatch.setattr(policy_build, "load_pipeline", no_model)
    with pytest.raises(CheckpointError, match="model.lora_rank is 4 but the checkpoint was trained with 8"):
        trainer_module.Trainer(small_config(tmp_path, *FAST, "model.lora_rank=4"), dist1, resume="latest")


def test_a_run_that_keeps_nothing_warns_and_exits_non_zero(tmp_path, dist1, caplog, capsys):
    """A constant reward (JPEG size x 0): every group's advantages are 0, every sample dropped."""
    args = ["--config", str(TINY_CONFIG), "--set", f"run.output_dir={tmp_path / 'run'}", "--set", "run.epochs=2",
            "--set", "log.progress=false", "--set", "log.image_every=0", "--set", "eval.every=0",
            "--set", "reward.spec={jpeg_incompressibility: {scale: 0.0}}"]
    for o in FAST:
        args += ["--set", o]
    with caplog.at_level(logging.WARNING, logger="precise_fast.train"):
        code = train_main.main(args)
    err = capsys.readouterr().err
    assert code == exit_status.CANNOT_TRAIN == 3
    assert "the run trained nothing in 2 epochs" in err and "no epoch kept a sample" in err
    kept_zero = [r for r in caplog.records if "kept 0%" in r.getMessage()]
    assert [r.getMessage().split()[1] for r in kept_zero] == ["1", "2"]


def test_rollback_then_plain_resume_stays_on_the_new_timeline(tmp_path, dist1, caplog):
    """``--resume <epoch 1>`` in a run that reached epoch 3, then a plain ``--resume``: the
    metrics read 1, 2, 3 of the new timeline (the issue saw 1, 2, 3, 4, 7)."""
    from precise_fast.train import trainer as trainer_module

    def run(*overrides, resume=None):
        t = trainer_module.Trainer(small_config(tmp_path, *FAST, "checkpoint.every=1", "checkpoint.keep_last=5", *overrides), dist1, resume=resume)
        try:
            t.run()
        finally:
            t.close()

    run("run.epochs=3")
    root = tmp_path / "run" / "checkpoints"
    with caplog.at_level(logging.WARNING, logger="precise_fast.train"):
        run("run.epochs=2", resume=str(root / "epoch-000001"))
    assert any("abandoned timeline" in r.getMessage() and "epoch-000002, epoch-000003" in r.getMessage()
               for r in caplog.records)
    assert [e for e, _ in list_checkpoints(root)] == [1, 2]
    run("run.epochs=3", resume="latest")
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    (abandoned,) = (root / "abandoned").iterdir()
    assert sorted(p.name for p in abandoned.iterdir()) == ["epoch-000002", "epoch-000003", "metrics.jsonl"]
