"""An eval that meets a checkpoint its run pruned while the eval ran says so in one line, exit 2
(issue 25 item 14): the missing LoRA folder reached diffusers' loader, which took the path for a
Hugging Face repo id and failed with that error."""

from __future__ import annotations

import shutil

import pytest

from precise_fast.eval import runner
from precise_fast.eval.cli import main as eval_main

TARGET = "eval.targets=[{name: t, kind: ode, num_steps: 2, batch_size: 2, num_prompts: 2}]"


def test_a_checkpoint_pruned_during_the_eval_is_one_line(short_run, tmp_path, capsys, monkeypatch):
    run, _ = short_run
    mine = tmp_path / "run" / "checkpoints" / "epoch-000001"
    shutil.copytree(run / "checkpoints" / "epoch-000001", mine)
    load = runner._load_pipeline

    def load_then_prune(*args, **kwargs):  # the run's keep_last removes it while the model loads
        pipeline = load(*args, **kwargs)
        shutil.rmtree(mine)
        return pipeline

    monkeypatch.setattr(runner, "_load_pipeline", load_then_prune)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        eval_main([str(mine), "--config", str(run / "config.yaml"), "--no-base", "--out", str(tmp_path / "eval"),
                   "--no-progress", "--set", TARGET])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "Traceback" not in err and "repo" not in err.lower()
    (line,) = [line for line in err.splitlines() if line.startswith("eval:")]
    assert f"{mine}" in line and "no longer exists" in line
