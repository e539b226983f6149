"""The lent GPU machine's Python image against the project's needs (issue 24).

``scripts/device_image_packages.txt`` lists the image's packages (versions where KINDS.md gave
them); ``requirements.txt`` the project's. Three questions, one subcommand each:

- ``specs [WHEEL_DIR]``: the pip specs of a venv that stands in for the device's python3 in the
  rehearsal (scripts/device_rehearsal.sh): every package the project, its GPU check or a wheel
  in WHEEL_DIR needs that the image holds, at the image's version where known, else at
  requirements.txt's pin, else unpinned.
- ``constraints``: the image's known versions, for pip's ``-c`` (numpy, triton, accelerate,
  huggingface-hub arrive as dependencies and must match the image too).
- ``missing DIR``: what the image lacks, as wheels in DIR (scripts/gpu_wheels.sh): the
  project's requirements that are not in the image, then each one's dependencies (Requires-Dist
  read from the downloaded wheel, markers for CPython 3.12 on x86_64 Linux) until every needed
  package is either in the image or in DIR. Prints the source-only ones it could not download,
  one a line, for the caller to build.
"""

from __future__ import annotations

# packaging is imported where wheels are read: the GPU check's preflight imports this module to
# say which packages are missing, and must do so without any.
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What scripts/gpu_check.sh runs with, beside the project's requirements.
CHECK_TOOLS = ("pytest", "pytest-timeout", "pytest-xdist", "pytest-benchmark", "setuptools", "wheel", "ninja", "pip")
# The device's python3 (KINDS.md: Python 3.12.3 on x86-64 Linux), for environment markers.
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
                  "implementation_version": "3.12.3", "platform_python_implementation": "CPython",
                  "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "platform_release": "", "platform_version": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_specs(path: Path) -> dict[str, str | None]:
    """{canonical name: pinned version or None} of a file of NAME[==VERSION] lines."""
    specs: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            specs[canonical(name)] = version.strip() or None
    return specs


def device_image() -> dict[str, str | None]:
    return read_specs(ROOT / "scripts" / "device_image_packages.txt")


def requirements() -> dict[str, str | None]:
    return read_specs(ROOT / "requirements.txt")


def venv_specs(wheels: Path | None = None) -> list[str]:
    """The image's packages that the project, its check, or a carried wheel in ``wheels`` needs
    (diffusers' requests and Pillow, open_clip's timm, deepspeed's einops: there in the image,
    so not carried, yet wanted by what is)."""
    image, reqs = device_image(), requirements()
    wanted = [*reqs, *map(canonical, CHECK_TOOLS)]
    for wheel in sorted(wheels.glob("*.whl")) if wheels else []:
        wanted += [canonical(r.name) for r in _wheel_requires(wheel)]
    out = []
    for name in dict.fromkeys(wanted):
        if name in image:
            version = image[name] or reqs.get(name)
            out.append(f"{name}=={version}" if version else name)
    return out


def image_constraints() -> list[str]:
    return [f"{name}=={version}" for name, version in device_image().items() if version]


def _wheel_requires(wheel: Path) -> list:
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(zf.read(meta).decode())
    reqs = [Requirement(r) for r in headers.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**DEVICE_MARKERS, "extra": ""})]


def _wheel_name(wheel: Path) -> str:
    return canonical(wheel.name.split("-")[0])


def _download(spec: str, folder: Path) -> bool:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", *platforms, "-d", str(folder), spec]
    return subprocess.run(cmd).returncode == 0


def fetch_missing(folder: Path) -> list[str]:
    """Download the wheels of everything the image lacks into folder; return the specs with no wheel."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    image, reqs = device_image(), requirements()
    folder.mkdir(parents=True, exist_ok=True)
    queue = [f"{n}=={v}" if v else n for n, v in reqs.items() if n not in image]
    seen: set[str] = set()
    source_only: list[str] = []
    while queue:
        req = Requirement(queue.pop(0))
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        if name in image:
            known = image[name]
            if known and req.specifier and Version(known) not in req.specifier:
                raise SystemExit(f"the image's {name} {known} does not satisfy {req}: carry a wheel of it by hand")
            continue
        have = [w for w in folder.glob("*.whl") if _wheel_name(w) == name]
        if not have and not _download(f"{name}{req.specifier}", folder):
            source_only.append(f"{name}{req.specifier}")
            continue
        have = have or [w for w in folder.glob("*.whl") if _wheel_name(w) == name]
        queue += [str(r) for r in _wheel_requires(have[0])]
    return source_only


def dependencies_of(wheel: Path) -> list[str]:
    return [str(r) for r in _wheel_requires(wheel)]


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["specs"]
    if command == "specs" and len(rest) <= 1:
        lines = venv_specs(Path(rest[0]) if rest else None)
    elif command == "constraints":
        lines = image_constraints()
    elif command == "missing" and len(rest) == 1:
        lines = fetch_missing(Path(rest[0]))
    elif command == "requires" and len(rest) == 1:
        lines = dependencies_of(Path(rest[0]))
    else:
        sys.exit("usage: device_image.py specs [WHEEL_DIR] | constraints | missing DIR | requires WHEEL")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
