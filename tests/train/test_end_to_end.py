"""The trainer end to end (issue 24 item 9): capture, reward worker, update and checkpoint together.

Each case runs in a child process (tests/train/end_to_end.py). The CPU variants run here and
in CI, so the code the GPU cases run is exercised without a GPU; the ``gpu`` cases run on a
lent GPU (scripts/gpu_check.sh) and add their figures to ``$GPU_REPORT_DIR/trainer_end_to_end.json``.
Budget on an H100 (shared with every other GPU test): about a minute for both GPU cases.
"""

import json
import math

import pytest

from .end_to_end import REPORT_NAME, SHAPES_EPOCHS, run_child

# Each GPU case stays under gpu_check.sh's 90 s per-test limit; the child's own limit comes
# first, so a slow run still reports its output and what it recorded.
GPU_CASE_LIMIT_S = 85


def _check_shapes(figures, device, epochs):
    first, resumed = figures["first"], figures["resumed"]
    assert first["epochs_trained"] == list(range(1, epochs + 1))
    assert resumed["epochs_trained"] == list(range(1, epochs + 2))  # the history came back with the checkpoint
    assert resumed["applied_steps"] > first["applied_steps"]  # the resumed epoch trained
    assert first["reward_mode"] == "thread"  # rewards scored on the worker while the next batch samples
    last = figures["epochs"][str(epochs + 1)]
    for phase in ("rollout", "update"):
        assert last[f"throughput/{phase}_images_per_s"] > 0
    assert math.isfinite(last["reward_mean"])
    if device == "cuda":
        assert figures["backend"] == "nccl"
        assert first["cuda_graph"] and first["graphs_captured"] >= 2  # the training plan and the eval's ODE
        assert math.isfinite(figures["epochs"]["2"]["eval/reward_mean"])  # captured after 8 optimizer steps
        assert first["peak_memory_gib"] > 0


def test_shapes_world_trains_then_resumes_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_REPORT_DIR", str(tmp_path / "report"))
    figures = run_child("shapes", "cpu", tmp_path / "run", timeout=300, report_section="shapes_world")
    _check_shapes(figures, "cpu", SHAPES_EPOCHS)
    report = json.loads((tmp_path / "report" / REPORT_NAME).read_text())
    assert report["shapes_world"] == dict(figures, error=None)
    assert figures["backend"] == "gloo" and not figures["first"]["cuda_graph"]
    assert "throughput/rollout_mfu" not in figures["epochs"][str(SHAPES_EPOCHS + 1)]  # no peak known for a CPU


@pytest.mark.gpu
def test_shapes_world_trains_then_resumes_gpu(tmp_path):
    figures = run_child("shapes", "cuda", tmp_path, timeout=GPU_CASE_LIMIT_S, report_section="shapes_world")
    _check_shapes(figures, "cuda", SHAPES_EPOCHS)


def test_a_child_cut_short_still_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_REPORT_DIR", str(tmp_path / "report"))
    with pytest.raises(AssertionError, match="ran past 0.01 s"):
        run_child("shapes", "cpu", tmp_path / "run", timeout=0.01, report_section="shapes_world")
    report = json.loads((tmp_path / "report" / REPORT_NAME).read_text())
    assert "ran past 0.01 s" in report["shapes_world"]["error"]


def _check_real_size(figures):
    assert figures["first"]["epochs_trained"] == [1] and figures["first"]["applied_steps"] >= 1
    epoch = figures["epochs"]["1"]
    assert epoch["throughput/rollout_images_per_s"] > 0 and epoch["throughput/update_images_per_s"] > 0


def test_swapped_transformer_trains_one_epoch_cpu(tmp_path):
    """The real-size case's path (a transformer swapped in as the pipeline loads) with tiny widths."""
    figures = run_child("real_size", "cpu", tmp_path, timeout=300)
    _check_real_size(figures)
    assert figures["transformer"]["num_layers"] == 1


@pytest.mark.gpu
def test_real_size_klein_4b_one_epoch_gpu(tmp_path):
    figures = run_child("real_size", "cuda", tmp_path, timeout=GPU_CASE_LIMIT_S, report_section="klein4b_real_size")
    _check_real_size(figures)
    assert figures["transformer"]["num_layers"] == 5 and figures["transformer"]["num_single_layers"] == 20
    assert figures["backend"] == "nccl" and figures["first"]["cuda_graph"]
    if "H100" in figures["device"] or "H200" in figures["device"]:  # a known peak: MFU reported
        assert 0 < figures["epochs"]["1"]["throughput/rollout_mfu"] < 1
