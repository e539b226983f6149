"""``precise-fast eval`` knows a checkpoint by the content of its LoRA, and verifies it first
(issue 25 item 11; eval/jobs.py, eval/records.py).

Seen before: items were skipped by (step, target, index), so after a rollback, or pointed at
another run's checkpoint of the same step, the eval said "0 images to score" and reported the
old numbers; and only the files' sizes were checked, so a damaged export was evaluated.
"""

from __future__ import annotations

import json
import shutil

import pytest

from precise_fast.eval.cli import main as eval_main

TARGET = "eval.targets=[{name: t, kind: ode, num_steps: 2, batch_size: 2, num_prompts: 2}]"


def _eval(run, checkpoint, out, capsys) -> tuple[str, list[dict]]:
    capsys.readouterr()
    assert eval_main([str(checkpoint), "--config", str(run / "config.yaml"), "--no-base", "--out", str(out),
                      "--no-progress", "--set", TARGET]) == 0
    summary = json.loads((out / "summary.json").read_text())
    return capsys.readouterr().out, summary["results"]


def _rewards(results: list[dict]) -> list:
    return [(r["step"], r["reward"]["mean"]) for r in results]


def test_another_checkpoint_of_the_same_step_is_scored_again(short_run, tmp_path, capsys):
    run, _ = short_run
    out = tmp_path / "eval"
    said, first = _eval(run, run / "checkpoints" / "epoch-000002", out, capsys)
    assert "rank 0 scores 2 images" in said
    # A rollback (or another run): epoch 2 now holds other weights, those of epoch 1.
    other = tmp_path / "other" / "checkpoints" / "epoch-000002"
    shutil.copytree(run / "checkpoints" / "epoch-000001", other)
    said, again = _eval(run, other, out, capsys)
    assert "2 items already in" in said and "rank 0 scores 2 images" in said
    _, fresh = _eval(run, run / "checkpoints" / "epoch-000001", tmp_path / "fresh", capsys)
    assert [r["reward"] for r in again] == [r["reward"] for r in fresh] != [r["reward"] for r in first]
    records = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert len(records) == 4 and len({r["checkpoint_sha256"] for r in records}) == 2  # both kept
    # The same content again (a copy elsewhere, any step) is not scored twice.
    said, _ = _eval(run, other, out, capsys)
    assert "rank 0 scores 0 images" in said


def test_records_without_an_identity_are_kept_and_their_items_scored_again(short_run, tmp_path, capsys):
    run, _ = short_run
    out = tmp_path / "eval"
    out.mkdir()
    legacy = {"step": 1, "target": "t", "index": 0, "checkpoint": str(run / "checkpoints" / "epoch-000001"),
              "prompt": "p", "metadata": {}, "seed": 0, "scores": {}, "extras": {}, "reward": 1e3}
    (out / "items.jsonl").write_text(json.dumps(legacy) + "\n")
    said, results = _eval(run, run / "checkpoints" / "epoch-000001", out, capsys)
    assert "rank 0 scores 2 images" in said
    _, fresh = _eval(run, run / "checkpoints" / "epoch-000001", tmp_path / "fresh", capsys)
    assert _rewards(results) == _rewards(fresh)  # the old record does not count
    assert legacy in [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("damage", ["zeroed", "unlisted"])
def test_a_damaged_export_is_refused_before_any_model_loads(short_run, tmp_path, capsys, monkeypatch, damage):
    run, _ = short_run
    ckpt = tmp_path / "checkpoints" / "epoch-000001"
    shutil.copytree(run / "checkpoints" / "epoch-000001", ckpt)
    lora = ckpt / "export" / "lora_ema" / "pytorch_lora_weights.safetensors"
    if damage == "zeroed":  # same size: the manifest's size check passes
        data = bytearray(lora.read_bytes())
        data[len(data) // 2: len(data) // 2 + 4096] = bytes(min(4096, len(data) - len(data) // 2))
        lora.write_bytes(bytes(data))
        expected = f"{lora} fails its SHA-256 check"
    else:
        (lora.parent / "extra.safetensors").write_bytes(b"x")
        expected = "holds no SHA-256 for extra.safetensors"
    import precise_fast.eval.runner as runner

    monkeypatch.setattr(runner, "_load_pipeline", lambda *a: pytest.fail("a model loaded"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        eval_main([str(ckpt), "--config", str(run / "config.yaml"), "--out", str(tmp_path / "eval"), "--no-progress",
                   "--set", TARGET])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "eval").exists()
