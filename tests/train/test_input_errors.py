"""Bad input is one line naming the file or key, exit status 2, and (except the full disk,
which needs a running trainer) it comes before any model loads (issue 13, "says too little").

Covers: malformed YAML (file and ``--set``), non-UTF-8 config and prompt files, a missing
prompt file, an unknown reward, missing reward weights, GenEval rewards with prompts lacking
GenEval metadata, and a full disk while writing the run's logs."""

import errno

import pytest

from precise_fast.train import main as train_main

from .conftest import TINY_CONFIG

BASE = ("log.progress=false", "log.image_every=0", "eval.every=0", "run.epochs=1",
        "sampler.num_batches_per_epoch=2", "sampler.num_steps=4", "sampler.images_per_prompt=4")


@pytest.fixture
def no_model(monkeypatch):
    from precise_fast.train import trainer as trainer_module
    from precise_fast.train.policy import build as policy_build

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded although the input was bad")

    monkeypatch.setattr(policy_build, "load_pipeline", refuse)


def _run(tmp_path, capsys, *overrides, config=TINY_CONFIG, flags=()):
    """``main`` with ``overrides``; asserts one error line, no traceback; returns (status, line)."""
    args = ["--config", str(config), "--set", f"run.output_dir={tmp_path / 'run'}", *flags]
    for o in (*BASE, *overrides):
        args += ["--set", o]
    code = train_main.main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    return code, lines[0]


def test_malformed_yaml_file_and_override(tmp_path, capsys, dist1, no_model):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  name: [unclosed\n")
    code, line = _run(tmp_path, capsys, config=bad)
    assert code == 2 and str(bad) in line and "malformed YAML at line" in line
    code, line = _run(tmp_path, capsys, "train.lr=[1,")
    assert code == 2 and "override 'train.lr=[1,'" in line and "malformed YAML" in line


def test_non_utf8_config_and_prompt_files(tmp_path, capsys, dist1, no_model):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"run:\n  name: caf\xe9\n")
    code, line = _run(tmp_path, capsys, config=bad)
    assert code == 2 and str(bad) in line and "not UTF-8" in line and "0xe9" in line
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a cat\nan \xff dog\n")
    code, line = _run(tmp_path, capsys, f"prompts.train={prompts}")
    assert code == 2 and str(prompts) in line and "not UTF-8" in line
    code, line = _run(tmp_path, capsys, f"prompts.train={tmp_path / 'missing.txt'}")
    assert code == 2 and "prompt file" in line and "missing.txt not found" in line


def test_reward_problems_fail_before_the_model_loads(tmp_path, capsys, dist1, no_model):
    code, line = _run(tmp_path, capsys, "reward.spec=nosuchreward")
    assert code == 2 and "reward.spec: unknown reward 'nosuchreward'" in line
    empty = tmp_path / "models"
    empty.mkdir()
    code, line = _run(tmp_path, capsys, "reward.spec=pickscore", f"reward.model_root={empty}")
    assert code == 2 and "pickscore" in line and "not found" in line and str(empty) in line
    code, line = _run(tmp_path, capsys, "reward.spec={geneval: {urls: ['http://127.0.0.1:9']}}")
    assert code == 2 and "'tag' and 'include'" in line and "prompts.train" in line


def test_full_disk_while_logging_is_one_line(tmp_path, capsys, dist1, monkeypatch):
    from precise_fast.train.report.tracking import RunLogger

    target = tmp_path / "run" / "metrics.jsonl"

    def full(self, metrics, step):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(RunLogger, "log", full)
    code, line = _run(tmp_path, capsys)
    assert code == 2 and f"no space left on {target}" in line


def test_a_file_where_the_run_folder_should_be_is_one_line(tmp_path, capsys, dist1, no_model):
    """Issue 25 item 14: a regular file at run.output_dir crashed with a traceback after the model loaded."""
    from precise_fast.train.trainer import Trainer

    from .conftest import small_config

    out = tmp_path / "run"
    out.write_text("not a folder")
    with pytest.raises(ValueError, match=f"run.output_dir {out} is a file, not a folder"):
        Trainer(small_config(tmp_path), dist1)  # in-process callers too, not only the command line
    code, line = _run(tmp_path, capsys)
    assert code == 2 and f"run.output_dir {out} is a file, not a folder" in line
    assert out.read_text() == "not a folder"


def test_a_lora_file_of_other_shapes_is_one_line_before_the_model_loads(tmp_path, capsys, dist1, tiny_pipe, no_model):
    """Issue 25 item 14: train.lora_path with another rank crashed with a traceback after the model loaded."""
    from precise_fast.models import apply_lora, save_lora

    apply_lora(tiny_pipe.transformer, rank=4, alpha=4.0)
    lora = save_lora(tiny_pipe, tmp_path / "rank4")
    code, line = _run(tmp_path, capsys, f"train.lora_path={lora}", "model.lora_rank=8")
    assert code == 2 and "train.lora_path:" in line and "LoRA shapes differ" in line and "(4, " in line
    code, line = _run(tmp_path, capsys, f"train.lora_path={lora}", "model.lora_rank=4",
                      "model.lora_targets=paper_plus_single_out")
    assert code == 2 and "train.lora_path:" in line and "LoRA targets differ" in line


def test_an_eval_reward_that_cannot_be_built_fails_at_start(tmp_path, capsys, dist1):
    """An eval target's own reward (weights missing here) stops the run before epoch 1, as the
    training reward does, not at the first eval hours in."""
    empty = tmp_path / "models"
    empty.mkdir()
    code, line = _run(tmp_path, capsys, "eval.every=5", f"reward.model_root={empty}",
                      "eval.targets=[{name: ode, kind: ode, num_steps: 2, num_prompts: 2, reward: pickscore}]")
    assert code == 2 and "pickscore" in line and "not found" in line and str(empty) in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_float16_training_is_refused_before_anything_loads(tmp_path, capsys, dist1, no_model):
    """DeepSpeed's fp16 loss scaling needs the overflows the non-finite guard zeroes: such a run
    would apply no update. One line, exit 2, before the reward or the model loads."""
    code, line = _run(tmp_path, capsys, "model.dtype=float16", "model.precision=pure")
    assert code == 2 and "model.dtype: float16 does not train here" in line and "bfloat16" in line
