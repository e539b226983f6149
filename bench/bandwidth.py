"""Streaming memory bandwidth of this machine, the speed of light for elementwise kernels.

A large ``torch.add(a, b, out=c)`` moves 3 arrays through memory (2 reads, 1 write) with
almost no arithmetic, so its rate is what a perfect fused sampler step could reach.
Run: ``python bench/bandwidth.py`` (prints GB/s and the machine).

``probe()`` (used by bench_fused_step.py) adds STREAM's other kernels (McCalpin, "Memory
bandwidth and machine balance", 1995) through torch's own vectorised, OpenMP-parallel
loops, at the thread count of the kernels it judges: copy (read 1, write 1), add and a
read-only sum, each at two working sets: far beyond the last-level cache (DRAM
streaming) and at the fused-step benchmark's own array size (16 x 131072 float32 =
8 MiB: three of them fit in a 32 MiB L3, so a kernel there can beat DRAM).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time

import torch

DEFAULT_ELEMENTS = 32 * 1024 * 1024  # 128 MiB per fp32 array: far beyond the caches.


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def machine_info() -> dict:
    """Name the machine a number was measured on."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = _lscpu()
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # lscpu's view: a VM's model name can be generic, the counts and caches are not.
        "lscpu_model": cpu.get("Model name", model),
        "cores_per_socket": cpu.get("Core(s) per socket", ""),
        "sockets": cpu.get("Socket(s)", ""),
        "threads_per_core": cpu.get("Thread(s) per core", ""),
        "l3_cache": cpu.get("L3 cache", ""),
        "hypervisor": cpu.get("Hypervisor vendor", ""),
        "avx512f": "avx512f" in cpu.get("Flags", ""),
    }


def stream_bandwidth_gbs(elements: int = DEFAULT_ELEMENTS, repeats: int = 10, device: str = "cpu") -> float:
    """Best-of-``repeats`` GB/s (1e9 bytes/s) of ``c = a + b`` over fp32 arrays of ``elements``."""
    a = torch.rand(elements, device=device)
    b = torch.rand(elements, device=device)
    c = torch.empty_like(a)
    torch.add(a, b, out=c)  # first touch: page faults are not bandwidth
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.add(a, b, out=c)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 3 * elements * a.element_size() / best / 1e9


def _best_seconds(fn, repeats: int) -> float:
    fn()  # first touch and warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def stream_kernels_gbs(elements: int, repeats: int = 10) -> dict[str, float]:
    """Best GB/s of copy (2 arrays moved), add (3) and a read-only sum (1) over fp32 arrays."""
    a, b, c = torch.rand(elements), torch.rand(elements), torch.empty(elements)
    nbytes = elements * 4
    return {
        "copy_gbs": 2 * nbytes / _best_seconds(lambda: c.copy_(a), repeats) / 1e9,
        "add_gbs": 3 * nbytes / _best_seconds(lambda: torch.add(a, b, out=c), repeats) / 1e9,
        "read_gbs": nbytes / _best_seconds(lambda: a.sum(), repeats) / 1e9,
    }


def probe(bench_elements: int = 16 * 131072) -> dict:
    """Bandwidth at DRAM size and at the benchmark's size; ``streaming_gbps`` is the DRAM best."""
    dram = stream_kernels_gbs(DEFAULT_ELEMENTS, repeats=5)
    cached = stream_kernels_gbs(bench_elements, repeats=20)
    return {
        "threads": torch.get_num_threads(),
        "dram_array_mib": DEFAULT_ELEMENTS * 4 / 2**20,
        "dram": dram,
        "bench_size_array_mib": bench_elements * 4 / 2**20,
        "bench_size": cached,
        "streaming_gbps": max(dram.values()),
        "bench_size_gbps": max(cached.values()),
    }


if __name__ == "__main__":
    print(json.dumps({"stream_add_gbs": round(stream_bandwidth_gbs(), 2), "machine": machine_info()}, indent=2))
