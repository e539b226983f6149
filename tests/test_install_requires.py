"""setup.py's install ranges hold both tested environments: requirements.txt's pins (.venv, the
whole suite) and the lent GPU machine's image (scripts/device_image_packages.txt, rehearsed by
scripts/device_rehearsal.sh), and every runtime requirement has a range."""

import ast
import importlib.util
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
TEST_TOOLS = {"pytest", "pytest-benchmark", "pytest-timeout", "import-linter", "ninja"}
_spec = importlib.util.spec_from_file_location("device_image", REPO / "scripts" / "device_image.py")
device_image = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(device_image)


def _install_requires() -> dict[str, Requirement]:
    """INSTALL_REQUIRES read from setup.py's source (importing it would run setup())."""
    tree = ast.parse((REPO / "setup.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "INSTALL_REQUIRES")
    return {device_image.canonical(r.name): r for r in map(Requirement, ast.literal_eval(node.value))}


def test_every_runtime_requirement_has_a_bounded_range():
    ranges = _install_requires()
    runtime = set(device_image.requirements()) - TEST_TOOLS
    assert runtime <= set(ranges), runtime - set(ranges)
    for name, req in ranges.items():
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops and "<" in ops, f"{req}: a tested lower bound and an untested upper one"


def test_requirements_pins_fall_inside_the_ranges():
    ranges = _install_requires()
    for name, version in device_image.requirements().items():
        if name in ranges and version:
            assert Version(version) in ranges[name].specifier, f"requirements.txt {name}=={version} outside {ranges[name]}"


def test_the_gpu_machines_versions_fall_inside_the_ranges():
    ranges = _install_requires()
    image = device_image.device_image()
    for name in ("torch", "triton", "transformers", "numpy", "torchvision", "tokenizers", "safetensors"):
        assert image[name], f"device_image_packages.txt gives no version of {name}"
        assert Version(image[name]) in ranges[name].specifier, f"the image's {name} {image[name]} outside {ranges[name]}"
    assert image["peft"] is None or Version(image["peft"]) in ranges["peft"].specifier
