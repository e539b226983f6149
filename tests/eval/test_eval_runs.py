"""``precise-fast eval`` on the tiny model: two checkpoints of a short run plus the base model,
one paper-style config string and one YAML target.

The paper's evaluator (Tencent-Hunyuan/Precise ``eval/infer_eval.sh`` and
``precise_sde/eval/infer_eval.py``) pairs ``--ckpt-base`` with ``--eval-config``, writes
per-item results and a summary (mean, population std, count; PickScore x26); ours adds
the 95% CI, resumability and rank-independent sharding, checked here.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from precise_fast.eval.cli import main as eval_main

from ..child_env import child_env
from .conftest import REPO, RUN, TINY_CONFIG

YAML_TARGET = [{"name": "yaml_ode", "kind": "ode", "num_steps": 3, "batch_size": 2, "reward": "jpeg_incompressibility"}]
CONFIG_STRING = '2|precise|0|3|pickscore|{"jpeg_incompressibility": 1.0, "jpeg_compressibility": 0.5}'


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_checkpoints_config_string_and_yaml_target(short_run, data_dir, tmp_path, capsys):
    run, train_metrics = short_run
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump(YAML_TARGET))
    out = tmp_path / "eval"
    args = [str(run), "--targets", str(targets), "--num-prompts", "5", "--ckpt-base", str(run),
            "--eval-config", CONFIG_STRING, "--out", str(out), "--save-images", "--no-progress"]
    assert eval_main(args) == 0
    records = _read_jsonl(out / "items.jsonl")
    summary = json.loads((out / "summary.json").read_text())

    # Jobs: base + checkpoints 1, 2 on the YAML target; checkpoint 2 on the config string's target.
    string_target = "pickscore_precise_eta0_steps3_rm-jpeg_incompressibility-jpeg_compressibility"
    assert sorted({(r["target"], r["step"]) for r in records}) == sorted(
        [("yaml_ode", 0), ("yaml_ode", 1), ("yaml_ode", 2), (string_target, 2)])
    assert len(records) == 4 * 5 and len({(r["target"], r["step"], r["index"]) for r in records}) == 20
    for r in records:
        assert set(r) >= {"prompt", "metadata", "seed", "scores", "extras", "reward", "step", "checkpoint", "image"}
        assert (out / r["image"]).is_file()
    string_rows = [r for r in records if r["target"] == string_target]
    assert set(string_rows[0]["scores"]) == {"jpeg_incompressibility", "jpeg_compressibility"}
    for r in string_rows:  # the weighted raw sum of the components (weights from the reward JSON)
        assert r["reward"] == pytest.approx(r["scores"]["jpeg_incompressibility"] + 0.5 * r["scores"]["jpeg_compressibility"])

    # The summary agrees with the JSONL, row by row.
    assert len(summary["results"]) == 4
    for res in summary["results"]:
        rows = [r for r in records if r["target"] == res["target"] and r["step"] == res["step"]]
        for name, stats in res["components"].items():
            values = np.array([r["scores"][name] for r in rows])
            assert stats["count"] == len(rows)
            assert stats["mean"] == pytest.approx(values.mean())
            assert stats["std"] == pytest.approx(values.std())
            assert stats["ci95"] == pytest.approx(2.7764451 * values.std(ddof=1) / np.sqrt(len(rows)), rel=1e-6)
        assert res["reward"]["mean"] == pytest.approx(np.mean([r["reward"] for r in rows]))
        if res["target"] == string_target:  # the paper's "aggregated": weighted mean of the component means
            means = {n: np.mean([r["scores"][n] for r in rows]) for n in res["components"]}
            assert res["aggregated"] == pytest.approx(
                (means["jpeg_incompressibility"] + 0.5 * means["jpeg_compressibility"]) / 1.5)
    assert (out / "reward_vs_step.png").stat().st_size > 1000
    md = (out / "summary.md").read_text()
    assert "## yaml_ode" in md and f"## {string_target}" in md

    # The base model is not a checkpoint: its images differ from checkpoint 2's.
    base = {r["index"]: r["reward"] for r in records if r["target"] == "yaml_ode" and r["step"] == 0}
    last = {r["index"]: r["reward"] for r in records if r["target"] == "yaml_ode" and r["step"] == 2}
    assert base != last


def test_standalone_eval_equals_the_in_training_eval(short_run, tmp_path):
    """One implementation: the run's own targets on its checkpoints (EMA LoRA exported, loaded
    through diffusers) reproduce what the trainer logged after those epochs (EMA applied)."""
    run, train_metrics = short_run
    out = tmp_path / "eval"
    assert eval_main([str(run), "--no-base", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    by = {(r["target"], r["step"]): r for r in summary["results"]}
    assert set(by) == {("sde", 1), ("sde", 2), ("ode", 1), ("ode", 2)}
    for (target, step), res in by.items():
        logged = train_metrics[step]
        assert res["count"] == 5
        assert res["reward"]["mean"] == pytest.approx(logged[f"eval/{target}/reward_mean"], rel=1e-5)
        for name, stats in res["components"].items():
            assert stats["mean"] == pytest.approx(logged[f"eval/{target}/{name}"], rel=1e-5)
    assert train_metrics[1]["eval/reward_mean"] == train_metrics[1]["eval/sde/reward_mean"]


@pytest.mark.slow
def test_standalone_eval_of_an_autocast_run_equals_its_in_training_eval(dist1, tmp_path):
    """The recipes' precision (float32 masters under bf16 autocast): the standalone eval loads
    the pipeline as the run computed with it, so it scores the images the trainer scored."""
    from precise_fast.train.config import load_config
    from precise_fast.train.trainer import Trainer

    run = tmp_path / "run"
    overrides = [o for o in RUN if not o.startswith(("run.epochs=", "eval.targets="))]
    cfg = load_config(TINY_CONFIG, [f"run.output_dir={run}", *overrides, "run.epochs=1", "model.precision=autocast_bf16",
                                    "eval.targets=[{name: ode, kind: ode, num_steps: 3, batch_size: 4, num_prompts: 5}]"])
    trainer = Trainer(cfg, dist1)
    try:
        trainer.run()
    finally:
        trainer.close()
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    out = tmp_path / "eval"
    assert eval_main([str(run), "--no-base", "--out", str(out), "--no-progress"]) == 0
    (res,) = json.loads((out / "summary.json").read_text())["results"]
    assert res["reward"]["mean"] == pytest.approx(logged["eval/ode/reward_mean"], rel=1e-5)


@pytest.mark.slow
def test_killed_eval_resumes_and_skips_finished_items(short_run, tmp_path):
    run, _ = short_run
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "precise_fast.eval", str(run), "--out", str(out), "--no-progress",
           "--set", "eval.targets=[{name: t, kind: ode, num_steps: 2, batch_size: 2, num_prompts: 5}]"]
    env = child_env()
    env["PRECISE_FAST_CRASH_AT"] = "eval_batch:4"
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, start_new_session=True, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (shard,) = out.glob("items.rank*.jsonl")
    before = _read_jsonl(shard)
    assert len(before) == 2 + 2 + 1 + 2  # base: batches of 2, 2, 1; then the first batch of checkpoint 1
    assert not (out / "summary.json").exists()

    resumed = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=300, start_new_session=True,
                             cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "7 items already in" in resumed.stdout and "rank 0 scores 8 images" in resumed.stdout
    records = _read_jsonl(out / "items.jsonl")
    assert len(records) == 15 and not list(out.glob("items.rank*.jsonl"))
    for old in before:  # finished items kept as written, not scored again
        assert old in records
    fresh = tmp_path / "fresh"
    assert eval_main(cmd[3:4] + ["--out", str(fresh), "--no-progress"] + cmd[7:]) == 0
    assert json.loads((fresh / "summary.json").read_text())["results"] == \
        json.loads((out / "summary.json").read_text())["results"]


@pytest.mark.slow
def test_two_ranks_give_the_same_summary_as_one(short_run, tmp_path):
    run, _ = short_run
    common = [str(run), "--num-prompts", "5", "--no-progress",
              "--set", "eval.targets=[{name: t, batch_size: 2}]"]
    one = tmp_path / "one"
    assert eval_main([*common, "--out", str(one)]) == 0
    two = tmp_path / "two"
    launcher = str(Path(sys.executable).parent / "deepspeed")
    cmd = [launcher, "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "precise_fast.eval",
           *common, "--out", str(two)]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=400, start_new_session=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((two / "summary.json").read_text())["results"] == \
        json.loads((one / "summary.json").read_text())["results"]
    assert _read_jsonl(two / "items.jsonl") == _read_jsonl(one / "items.jsonl")


class _OneOfEverything:
    """Detector double: every image shows one object of every class, filling the image."""

    def detect(self, images):
        from tests.rewards.test_geneval_logic import obj, raw_from

        from precise_fast.rewards.servers.geneval_logic import CLASS_NAMES

        h, w = images[0].shape[:2]
        return [raw_from({name: [obj(0, 0, w - 1, h - 1)] for name in CLASS_NAMES}) for _ in images]


def test_geneval_target_reports_per_tag_and_the_task_mean(tmp_path, monkeypatch):
    """A GenEval target through our JSON server on 127.0.0.1: per-tag results from the records'
    metadata, the overall score as the mean over tasks (GenEval's convention)."""
    import threading

    from precise_fast.rewards.servers import geneval_server
    from precise_fast.rewards.servers.geneval_logic import GenEvalScorer

    # Two prompts of each GenEval task (from its 2,211 test prompts), as data/... in the working
    # directory, where the paper's DATASET name resolves first.
    lines = (Path(__file__).parent / "geneval_sample.jsonl").read_text()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "geneval_test_metadata.jsonl").write_text(lines)
    monkeypatch.chdir(tmp_path)
    scorer = GenEvalScorer(_OneOfEverything(), lambda image, objects, name: ["red"] * len(objects))
    server = geneval_server.make_server(scorer, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        reward = json.dumps({"geneval": {"urls": [server.url], "max_retries": 0}})
        out = tmp_path / "eval"
        assert eval_main(["--config", str(REPO / "configs" / "tiny_cpu.yaml"), "--ckpt-base", str(tmp_path),
                          "--eval-config", f"0|precise|0|2|geneval|{reward}", "--batch-size", "4",
                          "--out", str(out), "--no-progress"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    records = _read_jsonl(out / "items.jsonl")
    (res,) = json.loads((out / "summary.json").read_text())["results"]
    assert res["count"] == len(records) == len(lines.splitlines())
    tags = sorted({r["metadata"]["tag"] for r in records})
    assert sorted(res["per_tag"]) == tags and len(tags) >= 4
    for tag in tags:
        mine = [r["extras"]["geneval_correct"] for r in records if r["metadata"]["tag"] == tag]
        assert res["per_tag"][tag]["geneval_correct"] == pytest.approx(np.mean(mine))
    assert res["tag_mean"]["geneval_correct"] == pytest.approx(np.mean([res["per_tag"][t]["geneval_correct"] for t in tags]))
    assert res["per_tag"]["single_object"]["geneval_correct"] == 1.0  # one of everything: the object is there
    assert res["per_tag"]["counting"]["geneval_correct"] == 0.0  # ... but never two of it
    assert "GenEval view of `geneval_correct`" in (out / "summary.md").read_text()


def test_an_out_folder_of_another_eval_is_one_line_on_every_rank(short_run, tmp_path, capsys, monkeypatch):
    """The settings check runs on rank 0 and its verdict reaches every rank (raised on rank 0
    alone, it left the others waiting in a barrier): one line, exit 2, no model loaded."""
    from precise_fast.eval import runner

    run, _ = short_run
    out = tmp_path / "eval"
    out.mkdir()
    (out / "eval_settings.json").write_text(json.dumps({"seed": 99, "weights": "ema", "targets": {}}))
    broadcast = []
    monkeypatch.setattr(runner, "broadcast_object", lambda obj: broadcast.append(obj) or obj)
    monkeypatch.setattr(runner, "_load_pipeline", lambda *a: pytest.fail("a model loaded"))
    with pytest.raises(SystemExit) as exit_:
        eval_main([str(run), "--no-base", "--out", str(out), "--no-progress", "--seed", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds an eval with seed 99" in err[0] and "use another --out folder" in err[0], err
    assert broadcast and "holds an eval with seed 99" in broadcast[0]


def test_every_rank_evaluates_rank_0s_job_list(short_run, tmp_path, monkeypatch):
    """The jobs come from rank 0 (a broadcast): here rank 0 saw checkpoint 1 only, as a rank whose
    listing missed checkpoint 2 would; this rank evaluates exactly that list, not its own."""
    from precise_fast.train.policy import distributed

    run, _ = short_run
    seen = []

    def rank0_view(obj, src=0):
        if not (isinstance(obj, list) and obj and isinstance(obj[0], tuple)):
            return obj  # another broadcast (a verdict, a summary)
        seen.append(sorted({ckpt.step for ckpt, _ in obj}))
        return [(ckpt, t) for ckpt, t in obj if ckpt.step == 1]

    monkeypatch.setattr(distributed, "broadcast_object", rank0_view)
    out = tmp_path / "eval"
    assert eval_main([str(run), "--no-base", "--out", str(out), "--no-progress"]) == 0
    assert seen == [[1, 2]]
    summary = json.loads((out / "summary.json").read_text())
    assert {r["step"] for r in summary["results"]} == {1}
