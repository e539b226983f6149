"""What the GPU benchmarks (bench/gpu_*.py) share: the command line and time cap, device-side
timing, the GPU's ceilings, the real-size model and the JSON they write.

Timing on CUDA is device time from ``torch.cuda.Event`` pairs. Short kernels run many per
timing inside a CUDA graph (:func:`graph_ms_per_call`: no launch gaps, no host jitter); calls
of seconds (rollouts, updates) are timed one by one (:func:`event_ms`). ``--smoke`` runs a
benchmark at a tiny size on the CPU with ``time.perf_counter`` so CI proves its code path runs;
its numbers mean nothing. Peaks come from ``precise_fast.models.flops`` (the one table the
trainer's MFU uses too); the measured copy bandwidth is the HBM ceiling seen on the day.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bandwidth import machine_info  # noqa: E402

from precise_fast.models.flops import KLEIN_4B_TRANSFORMER_CONFIG, peak_bf16_flops, peak_hbm_bytes_per_s  # noqa: E402


def _process_age_s() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): the imports before main() count."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Clock:
    """The benchmark's time cap, counted from process start (imports and model build included)."""

    def __init__(self, cap_s: float):
        self.cap_s = float(cap_s)
        self.start = time.monotonic() - _process_age_s()

    def used(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.cap_s - self.used()


def parse_args(doc: str, default_out: str, time_cap_s: float) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", default=default_out, help="JSON file to write (rewritten after each finished case)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (CI checks the code path)")
    parser.add_argument("--time-cap", type=float, default=time_cap_s,
                        help=f"seconds for the whole run, start-up included; cases that would not fit are skipped "
                             f"(default {time_cap_s:g})")
    return parser.parse_args()


def bench_device(smoke: bool) -> torch.device:
    if smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (use --smoke for a tiny CPU run of its code path)", file=sys.stderr)
        raise SystemExit(2)
    return torch.device("cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def event_ms(fn, device: torch.device) -> float:
    """Milliseconds of one call of ``fn()`` (device time between CUDA events on a GPU)."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """A large device-to-device copy, bytes read plus written over time: the HBM ceiling seen today."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = min(event_ms(lambda: dst.copy_(src), device) for _ in range(5))
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def device_info(device: torch.device) -> dict:
    """The device, its datasheet peaks (``precise_fast.models.flops``) and its measured copy bandwidth."""
    if device.type != "cuda":
        return {"device": "cpu", "hbm_peak_gbs": None, "bf16_peak_tflops": None, "machine": machine_info()}
    props = torch.cuda.get_device_properties(device)
    flops, hbm = peak_bf16_flops(props.name), peak_hbm_bytes_per_s(props.name)
    return {
        "device": props.name,
        "capability": f"sm{props.major}{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "sm_count": props.multi_processor_count,
        "l2_bytes": int(getattr(props, "L2_cache_size", 0)) or None,
        "hbm_peak_gbs": None if hbm is None else hbm / 1e9,
        "bf16_peak_tflops": None if flops is None else flops / 1e12,
        "measured_copy_gbs": round(copy_bandwidth_gbs(device), 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def graph_ms_per_call(calls, device: torch.device, *, target_ms: float = 20.0, rounds: int = 5) -> tuple[list[float], str]:
    """Per-call milliseconds of ``calls`` (each run once per pass), ``rounds`` timings of many passes.

    On CUDA the pass is captured once as a graph and replayed back to back between two
    events, enough replays for ``target_ms``: device time without launch gaps. The outputs of
    the captured calls are kept, so each call writes its own buffers. A pass that cannot be
    captured is timed as a plain loop instead (``"loop"``: launch costs included).
    """
    if device.type != "cuda":
        for c in calls:
            c()
        ms = [event_ms(lambda: [c() for c in calls], device) / len(calls) for _ in range(rounds)]
        return ms, "host_clock"
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # lazy initialisation and the value checks' memo happen here
        for _ in range(2):
            for c in calls:
                c()
    torch.cuda.current_stream(device).wait_stream(side)
    synchronize(device)
    method, kept = "cuda_graph", []
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            kept = [c() for c in calls]
        run = graph.replay
    except RuntimeError as exc:
        print(f"[gpu_timing] capture failed, timing a plain loop: {exc}".splitlines()[0])
        synchronize(device)
        method = "loop"

        def run():
            for c in calls:
                c()
    run()
    one = event_ms(run, device)
    passes = max(3, math.ceil(target_ms / max(one, 1e-3)))

    def many():
        for _ in range(passes):
            run()

    out = [event_ms(many, device) / (passes * len(calls)) for _ in range(rounds)]
    del kept
    return out, method


def stats(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 5), "best_ms": round(ordered[0], 5),
            "worst_ms": round(ordered[-1], 5), "repeats": len(ms)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def mfu_pct(flops: float, seconds: float, gpu: dict) -> float | None:
    """Model FLOPs over time over the dense bf16 peak, in percent (None where the peak is unknown)."""
    peak = gpu.get("bf16_peak_tflops")
    return None if not peak else round(100 * flops / seconds / (peak * 1e12), 2)


def write(out: str | os.PathLike, name: str, smoke: bool, gpu: dict, results: dict, **extra) -> dict:
    report = {"benchmark": name, "smoke": smoke, "gpu": gpu, **extra, "results": results,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


# ----------------------------------------------------------------------------- the model


def flux2_klein_4b_transformer(device, dtype=torch.bfloat16):
    """FLUX.2 Klein 4B's transformer at its real size (5 double + 20 single blocks, 24 heads x 128,
    in_channels 128, joint_attention_dim 7680) with random weights, built on ``device`` in ``dtype``
    (no download, no CPU or float32 copy); zero-initialised matrices get small random values."""
    from precise_fast.models.tiny import random_transformer

    return random_transformer(KLEIN_4B_TRANSFORMER_CONFIG, dtype=dtype, device=device, fill_zeros=True)


def bench_pipeline(device: torch.device):
    """``(pipeline, description)``: on CUDA the real-size 4B transformer in bf16 inside a pipeline
    whose other parts are the tiny builder's klein4b-width ones (the benchmarks feed random
    prompt embeddings and never decode); for ``--smoke`` the tiny pipeline in float32 on the CPU."""
    from precise_fast.models import load_pipeline
    from precise_fast.models.tiny import process_tiny_pipeline_path, random_pipeline

    if device.type != "cuda":
        return load_pipeline(process_tiny_pipeline_path(0)), "tiny FLUX.2 Klein (smoke), float32"
    pipe = random_pipeline(KLEIN_4B_TRANSFORMER_CONFIG, widths="klein4b", dtype=torch.bfloat16, device=device,
                           fill_zeros=True)
    return pipe, "FLUX.2 Klein 4B transformer, real size, random weights, bfloat16"


def measure(fn, device: torch.device, clock: Clock, *, reserve_s: float = 0.0, warmups: int = 1,
            max_repeats: int = 3, est_s: float | None = None) -> dict | None:
    """Time a call of seconds (a rollout, an update): ``warmups`` untimed calls, then timed ones
    (CUDA events) while another fits under the cap with ``reserve_s`` left for what comes after;
    at least one. None, running nothing, when ``est_s`` (seconds per call, if known) says even
    the warm-ups and one call would not fit. Peak memory is over this variant's calls alone."""
    if est_s is not None and clock.left() - reserve_s < 1.1 * est_s * (warmups + 1):
        return None
    synchronize(device)
    reset_peak_memory(device)
    warm = [event_ms(fn, device) / 1e3 for _ in range(warmups)]
    ms: list[float] = []
    per_call = warm[-1] if warm else (est_s or 0.0)
    while not ms or (len(ms) < max_repeats and clock.left() - reserve_s > 1.1 * per_call):
        ms.append(event_ms(fn, device))
        per_call = ms[-1] / 1e3
    return {**stats(ms), "warmup_s": [round(w, 3) for w in warm], "peak_memory_gib": peak_memory_gib(device)}
