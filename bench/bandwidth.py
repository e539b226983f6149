"""Streaming memory bandwidth of this machine, the speed of light for elementwise kernels.

A large ``torch.add(a, b, out=c)`` moves 3 arrays through memory (2 reads, 1 write) with
almost no arithmetic, so its rate is what a perfect fused sampler step could reach.
Run: ``python bench/bandwidth.py`` (prints GB/s and the machine).
"""

from __future__ import annotations

import json
import os
import platform
import time

import torch

DEFAULT_ELEMENTS = 32 * 1024 * 1024  # 128 MiB per fp32 array: far beyond the caches.


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
    return {
        "cpu": model,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
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


if __name__ == "__main__":
    print(json.dumps({"stream_add_gbs": round(stream_bandwidth_gbs(), 2), "machine": machine_info()}, indent=2))
