"""The trainer end to end, in a child process of its own (issue 24 item 9; tests/train/test_end_to_end.py).

Two cases, each run as ``python -m tests.train.end_to_end CASE --device D --out DIR``, so a
GPU case gets a fresh process: its own NCCL group (DeepSpeed's communication backend), its own
CUDA state, nothing left over from other tests in the same pytest session.

- ``shapes``: the shapes world's recipe (configs/toy/shapes_precise.yaml: the pretrained toy
  FLUX.2 Klein, LoRA, ZeRO-2, the toy GenEval reward on a worker thread) trains a few epochs,
  then a second trainer resumes from its last checkpoint for one more epoch. On CUDA: the
  recipe's bf16 autocast over float32 masters, CUDA graphs on, rewards overlapped.
- ``real_size``: one epoch of the FLUX.2 Klein 4B transformer at its real size (5 double + 20
  single blocks, 24 heads x 128; random weights, pure bf16) with random text embeddings (the ``klein4b``
  tiny builder's text encoder: random, 2560 wide) and the JPEG reward (no weights). The
  trainer's model load is replaced by that pipeline, built in memory. On CPU the same path
  runs with a 1 + 1 block transformer of the tiny widths.

The child writes ``DIR/figures.json``: images/s and MFU per phase (the trainer's throughput
metrics), epoch times, peak GPU memory, the process group's backend, captured graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ..child_env import child_env

REPO = Path(__file__).resolve().parents[2]
REPORT_NAME = "trainer_end_to_end.json"  # under $GPU_REPORT_DIR: one section per GPU case
SHAPES_EPOCHS = 2  # then one more, resumed from the checkpoint of epoch 2

_FIGURES = ("throughput/rollout_images_per_s", "throughput/rollout_tflops_per_s", "throughput/rollout_mfu",
            "throughput/update_images_per_s", "throughput/update_tflops_per_s", "throughput/update_mfu",
            "time/rollout_s", "time/reward_s", "time/overlap_saved_s", "time/train_s", "time/epoch_s", "reward_mean",
            "eval/reward_mean")


def _shapes_overrides(out: Path, device: str, epochs: int) -> list[str]:
    common = [f"run.output_dir={out / 'run'}", f"run.epochs={epochs}", f"run.device={device}",
              "eval.every=0", "eval.at_start=false", "checkpoint.every=1", "checkpoint.keep_last=2",
              "log.image_every=0", "log.progress=false", "reward.overlap=true"]
    if device == "cuda":  # the recipe's precision (bf16 autocast over float32 masters), 4 batches x 8 images
        # The eval at epoch 2 captures its ODE plan after 8 optimizer steps: a capture after
        # DeepSpeed has stepped (its throughput timer once synchronized the device there).
        return [o for o in common if o != "eval.every=0"] + ["eval.every=2", "run.num_threads=0", "sampler.cuda_graph=true"]
    return common + ["run.num_threads=1", "sampler.num_batches_per_epoch=1", "sampler.num_steps=4"]


def _real_size_overrides(out: Path, device: str) -> list[str]:
    size, steps, text = (512, 6, 128) if device == "cuda" else (64, 2, 32)
    overrides = [
        f"run.output_dir={out / 'run'}", "run.epochs=1", f"run.device={device}", "run.num_threads=0",
        f"model.max_text_len={text}", "model.lora_rank=16", "model.lora_alpha=16.0",
        "model.gradient_checkpointing=true",
        f"sampler.height={size}", f"sampler.width={size}", f"sampler.num_steps={steps}",
        "sampler.batch_size=4", "sampler.num_batches_per_epoch=1", "sampler.images_per_prompt=4",
        "train.batch_size=4", "train.gradient_accumulation_steps=1", "eval.every=0", "checkpoint.every=0",
        "log.image_every=0", "log.progress=false", "reward.overlap=true",
    ]
    if device == "cuda":
        overrides += ["model.precision=pure", "model.dtype=bfloat16", "sampler.cuda_graph=true"]
    return overrides


def _build_instead(widths: str, transformer_config: dict):
    """Make the trainer's ``load_pipeline`` build its pipeline in memory instead of reading
    ``model.path`` (``models.tiny.random_pipeline``: the tiny builder's text encoder and VAE at
    ``widths`` around a fresh random transformer of ``transformer_config``, initialised on the
    device in the run's dtype: seconds for 3.9e9 weights on a GPU, and no 2.3 GB folder written
    and read back)."""
    from precise_fast.models.tiny import random_pipeline
    from precise_fast.train.policy import build as policy_build

    def build_pipeline(path, *, dtype, device, attention_backend="auto", model_root=None):
        return random_pipeline(transformer_config, widths=widths, dtype=dtype, device=device,
                               attention_backend=attention_backend)

    policy_build.load_pipeline = build_pipeline


def _epoch_figures(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {m["epoch"]: {k: m[k] for k in _FIGURES if k in m} for m in map(json.loads, lines)}


def _train(cfg, dist, resume: str | None = None) -> dict:
    import torch

    from precise_fast.train.trainer import Trainer

    trainer = Trainer(cfg, dist, resume=resume)
    try:
        trainer.run()
        engine = trainer.rollouts.engine
        return {
            "epochs_trained": [h["epoch"] for h in trainer.history if "reward_mean" in h],
            "applied_steps": int(trainer.policy.applied_steps),
            "cuda_graph": bool(engine.cuda_graph),
            "graphs_captured": len(engine._graphs),
            "reward_mode": trainer.executor.mode,
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dist.device.type == "cuda" else None,
        }
    finally:
        trainer.close()


def run_case(case: str, device: str, out: Path) -> dict:
    import torch

    from precise_fast.models.flops import KLEIN_4B_TRANSFORMER_CONFIG
    from precise_fast.models.tiny import TINY_TRANSFORMER_CONFIG
    from precise_fast.train.config import load_config
    from precise_fast.train.policy.distributed import init_distributed

    dist = init_distributed(device)
    figures = {"case": case, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "backend": torch.distributed.get_backend()}

    def record(key, value):  # written after each phase: a run cut short still reports what it finished
        figures[key] = value
        figures["epochs"] = _epoch_figures(out / "run") if (out / "run" / "metrics.jsonl").is_file() else {}
        (out / "figures.json").write_text(json.dumps(figures, indent=1))

    if case == "shapes":
        config = REPO / "configs" / "toy" / "shapes_precise.yaml"
        record("first", _train(load_config(config, _shapes_overrides(out, device, SHAPES_EPOCHS)), dist))
        record("resumed", _train(load_config(config, _shapes_overrides(out, device, SHAPES_EPOCHS + 1)), dist, "latest"))
    else:
        widths = "klein4b" if device == "cuda" else "tiny"
        transformer = KLEIN_4B_TRANSFORMER_CONFIG if device == "cuda" else TINY_TRANSFORMER_CONFIG
        figures["transformer"] = {k: transformer[k] for k in ("num_layers", "num_single_layers", "num_attention_heads",
                                                             "attention_head_dim", "in_channels", "joint_attention_dim")}
        _build_instead(widths, transformer)
        config = load_config(REPO / "configs" / "tiny_cpu.yaml", _real_size_overrides(out, device))
        record("first", _train(config, dist))
    return figures


def run_child(case: str, device: str, out: Path, timeout: float, report_section: str | None = None) -> dict:
    """Run ``case`` in a child process; its figures, or an AssertionError with the child's output tail.

    With ``report_section``, what the child recorded (and its error, if it failed) also goes into
    the GPU report (:func:`add_to_report`), pass or fail."""
    env = dict(child_env(), PYTHONPATH=str(REPO))  # the child makes its own process group
    if device == "cuda":  # CUDA's accelerator and all cores for the host-side work (building the klein4b folder)
        del env["DS_ACCELERATOR"]
        env.pop("OMP_NUM_THREADS")
        if "OMP_NUM_THREADS" in os.environ:
            env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    cmd = [sys.executable, "-m", "tests.train.end_to_end", case, "--device", device, "--out", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    error = None
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            error = f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
    except subprocess.TimeoutExpired as err:
        error = f"{' '.join(cmd)} ran past {timeout} s:\n{str(err.output or '')[-3000:]}{str(err.stderr or '')[-3000:]}"
    figures = json.loads((out / "figures.json").read_text()) if (out / "figures.json").is_file() else {}
    if report_section is not None:
        add_to_report(report_section, dict(figures, error=error))
    assert error is None, error
    return figures


def add_to_report(section: str, figures: dict) -> Path | None:
    """Merge ``figures`` into ``$GPU_REPORT_DIR/trainer_end_to_end.json`` (when that variable is set)."""
    folder = os.environ.get("GPU_REPORT_DIR")
    if not folder:
        return None
    path = Path(folder) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(path.read_text()) if path.is_file() else {}
    report[section] = figures
    path.write_text(json.dumps(report, indent=1))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", choices=("shapes", "real_size"))
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    run_case(args.case, args.device, args.out)
    from precise_fast.train.policy.distributed import finish_distributed

    finish_distributed()
