"""scripts/gpu_check.sh's preflight: in seconds, everything the later steps take for granted.

A CUDA GPU visible to torch; the versions the check runs with; an import of every package
requirements.txt names, pytest-timeout among them (import names read from the installed
distributions, so a wheel that did not travel is named here, not deep inside a test); and the CUDA
kernel of ``precise_fast._C``. Prints one line per fact; a missing fact ends it with one line
``[gpu_check] STOP: ...`` and exit status 1.

Run: ``python scripts/gpu_preflight.py``; ``--no-gpu`` checks everything but the GPU (the
dry run and CPU hosts).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys

from device_image import canonical, requirements  # scripts/, beside this file


def stop(why: str) -> None:
    print(f"[gpu_check] STOP: {why}", flush=True)
    sys.exit(1)


def check_imports() -> None:
    # The top-level modules each installed distribution provides (packages_distributions' inverse).
    provides: dict[str, list[str]] = {}
    for module, dists in sorted(md.packages_distributions().items()):
        if module.isidentifier() and not module.startswith("_"):
            for dist in dists:
                provides.setdefault(canonical(dist), []).append(module)
    missing = []
    for dist in requirements():
        if dist in ("ninja",):  # a build tool: a program, its module is a launcher stub
            continue
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            missing.append(dist)
            continue
        modules = provides.get(dist, [])
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - any import failure stops the check
                stop(f"{dist} {version} is installed but `import {module}` fails: {type(err).__name__}: {err}")
        print(f"[preflight] {dist} {version} ({', '.join(modules) or 'no modules'})")
    if missing:
        stop(f"not installed: {', '.join(missing)} (build .whl with scripts/gpu_wheels.sh and carry it)")


def check_gpu() -> None:
    import torch

    print(f"[preflight] python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    if not torch.cuda.is_available():
        stop("no CUDA GPU visible to torch (torch.cuda.is_available() is False): the rest of the check needs one")
    props = torch.cuda.get_device_properties(0)
    print(f"[preflight] GPU {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
          f"{props.multi_processor_count} SMs")


def check_cuda_kernel() -> None:
    import torch

    from precise_fast.sde import resolve_backend

    x = torch.empty(1, device="cuda")
    if resolve_backend("cuda", x) != "cuda":
        stop("precise_fast._C has no CUDA kernel (build with PRECISE_FAST_BUILD_CUDA=1)")
    print(f"[preflight] precise_fast._C CUDA kernel present; backend 'auto' -> {resolve_backend('auto', x)}")


def main(argv: list[str]) -> None:
    # Imports first: a host without a GPU (the CPU rehearsal) still proves every package there.
    check_imports()
    if "--no-gpu" not in argv:
        check_gpu()
        check_cuda_kernel()
    print("[preflight] ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
