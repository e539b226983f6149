"""What the GPU benchmarks (bench/gpu_*.py) share: device-side timing, the GPU's peaks, the
command line and the JSON they write.

Timing on CUDA uses ``torch.cuda.Event`` pairs around each call (device time, no host
jitter); elsewhere ``time.perf_counter`` (the ``--smoke`` mode, which runs a benchmark at a
tiny size on the CPU so CI checks its code path; its numbers mean nothing). Peaks are the
vendor datasheet figures (dense bf16 tensor-core TFLOP/s, HBM GB/s) for the GPUs we expect;
an unknown GPU reports ``null`` peaks and the benchmarks report measured numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bandwidth import machine_info, stream_bandwidth_gbs  # noqa: E402

# (substring of torch.cuda.get_device_name(), HBM GB/s, dense bf16 TFLOP/s); first match wins.
GPU_PEAKS = (
    ("H200", 4800.0, 989.0),
    ("H100 NVL", 3900.0, 835.0),
    ("H100 PCIe", 2000.0, 756.0),
    ("H100", 3350.0, 989.0),  # SXM5 (device name "NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", 2039.0, 312.0),
    ("A100", 1555.0, 312.0),
    ("L40S", 864.0, 362.0),
)


def parse_args(doc: str, default_out: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", default=default_out, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device (CI checks the code path)")
    parser.add_argument("--repeats", type=int, default=None)
    return parser.parse_args()


def bench_device(smoke: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not smoke:
        raise SystemExit("this benchmark needs a CUDA GPU (use --smoke for a tiny CPU run of its code path)")
    return torch.device("cpu")


def bench_pipeline(device: torch.device):
    """``(pipeline, widths, dtype)`` the model benchmarks run: the real-width ``klein4b`` preset
    in bf16 on CUDA, the tiny one in float32 for the CPU smoke run."""
    from precise_fast.models import load_pipeline, tiny_pipeline_path

    widths, dtype = ("klein4b", torch.bfloat16) if device.type == "cuda" else ("tiny", torch.float32)
    return load_pipeline(tiny_pipeline_path(0, widths=widths), dtype=dtype, device=device), widths, dtype


def device_info(device: torch.device) -> dict:
    """The GPU (name, capability, memory), its datasheet peaks and measured streaming bandwidth."""
    if device.type != "cuda":
        return {"device": "cpu", "hbm_peak_gbs": None, "bf16_peak_tflops": None, "machine": machine_info()}
    props = torch.cuda.get_device_properties(device)
    peak = next(((gbs, tf) for key, gbs, tf in GPU_PEAKS if key in props.name), (None, None))
    return {
        "device": props.name,
        "capability": f"sm{props.major}{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "sm_count": props.multi_processor_count,
        "hbm_peak_gbs": peak[0],
        "bf16_peak_tflops": peak[1],
        "measured_stream_add_gbs": round(stream_bandwidth_gbs(device="cuda"), 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def time_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    """Per-call milliseconds of ``fn()`` (CUDA events on the current stream on a GPU)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def stats(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 4), "best_ms": round(ordered[0], 4),
            "p80_ms": round(ordered[min(len(ordered) - 1, int(0.8 * len(ordered)))], 4), "repeats": len(ms)}


def write(out: str | os.PathLike, name: str, device: torch.device, smoke: bool, results: dict, *, gpu: dict | None = None,
          **extra) -> dict:
    gpu = device_info(device) if gpu is None else gpu
    report = {"benchmark": name, "smoke": smoke, "gpu": gpu, **extra, "results": results,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report
