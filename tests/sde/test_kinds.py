"""The kind table (precise_fast/kinds.py) is the one place that names the kinds and holds
their constants: the backends take a family number and spell no kind, the C++ grid limit is
the table's, and the recipes leave eta to the table's defaults."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from precise_fast import kinds
from precise_fast.sde import kinds as sde_kinds
from precise_fast.sde.ops import native_available, native_error

ROOT = Path(__file__).resolve().parents[2]
BACKEND_SOURCES = sorted((ROOT / "kernels").glob("*.py")) + sorted(
    p for p in (ROOT / "csrc").iterdir() if p.suffix in (".h", ".cpp", ".cu"))


def test_the_table_is_consistent():
    assert kinds.KINDS == ("ode", "flow_grpo", "dance_grpo", "cps", "precise", "dance_precise")
    assert set(kinds.FAMILY) == set(kinds.DEFAULT_ETA) == set(kinds.MAX_ETA) == set(kinds.KINDS)
    assert kinds.STOCHASTIC == set(kinds.KINDS) - {k for k, f in kinds.FAMILY.items() if f == kinds.FAMILY_ODE}
    assert kinds.STOCHASTIC_KINDS == tuple(k for k in kinds.KINDS if k in kinds.STOCHASTIC)
    assert kinds.EULER_MARUYAMA.isdisjoint(kinds.COEFFICIENT_PRESERVING)
    # The family numbers of csrc/step_coefficients.h's Family enum.
    header = (ROOT / "csrc" / "step_coefficients.h").read_text()
    enum = dict(re.findall(r"(\w+) = (\d)", re.search(r"enum class Family[^}]*}", header).group(0)))
    assert {name: int(n) for name, n in enum.items()} == {
        "Ode": kinds.FAMILY_ODE, "EulerMaruyama": kinds.FAMILY_EULER_MARUYAMA,
        "CoefficientPreserving": kinds.FAMILY_COEFFICIENT_PRESERVING}


def test_the_table_loads_without_torch():
    """The config and the launcher read it before anything heavy loads."""
    code = "import sys, precise_fast.kinds; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    assert sde_kinds.FUSED_DTYPES == (torch.float32, torch.bfloat16, torch.float16)
    assert sde_kinds.KINDS is kinds.KINDS and sde_kinds.FAMILY is kinds.FAMILY


@pytest.mark.parametrize("path", BACKEND_SOURCES, ids=lambda p: p.name)
def test_no_backend_spells_a_kind_name(path):
    """The ops take the family as an integer: a kind name in a backend is a second table."""
    text = path.read_text()
    spelled = [k for k in kinds.KINDS if re.search(rf"[\"']{k}[\"']", text)]
    assert not spelled, f"{path.name} spells {spelled}"


# A CLIPScore convention named after the Flow-GRPO repository's scorer, not a sampler kind.
_NOT_A_KIND = {("rewards/clip_scorers.py", "flow_grpo"), ("rewards/registry.py", "flow_grpo")}


def test_no_module_spells_a_kind_name_outside_the_table_and_the_reference():
    """Code names a kind through the table (kinds.ODE, kinds.DEFAULT_KIND, KINDS...): a string
    literal of a kind name anywhere else in the package is a second table. Docstrings may name them."""
    package = ROOT / "precise_fast"
    spelled = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel in ("kinds.py", "sde/reference.py"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        spelled += [f"{rel}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and node.value in kinds.KINDS and id(node) not in docstrings
                    and (rel, node.value) not in _NOT_A_KIND]
    assert not spelled, spelled


@pytest.mark.skipif(not native_available(), reason=f"precise_fast._C not built: {native_error()}")
def test_the_cpp_grid_limit_is_the_tables():
    from precise_fast import _C

    assert _C.max_grid_rows() == kinds.MAX_GRID_ROWS


def test_check_eta_reads_the_largest_eta():
    for kind in kinds.KINDS:
        assert kinds.check_eta(kind, kinds.DEFAULT_ETA[kind]) == kinds.DEFAULT_ETA[kind]
    assert kinds.check_eta("cps", 1.0) == 1.0
    with pytest.raises(ValueError, match=r"kind='cps': cps needs 0 <= eta <= 1"):
        kinds.check_eta("cps", 1.01)
    with pytest.raises(ValueError, match="finite and >= 0"):
        kinds.check_eta("precise", -0.1)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_recipes_do_not_restate_the_default_eta(path):
    """A recipe's eta that equals the kind's default is a second copy of the table (left out,
    the run takes DEFAULT_ETA: rollout.engine and train.report.evaluator.resolve_target)."""
    data = yaml.safe_load(path.read_text()) or {}
    sampler = data.get("sampler") or {}
    kind = sampler.get("kind")
    places = [("sampler", sampler, kind)] + [
        (f"eval.targets[{i}]", t, t.get("kind") or kind)
        for i, t in enumerate((data.get("eval") or {}).get("targets") or [])]
    for where, section, section_kind in places:
        if section_kind in kinds.DEFAULT_ETA and section.get("eta") is not None:
            assert section["eta"] != kinds.DEFAULT_ETA[section_kind], f"{where}.eta restates {section_kind}'s default"


def test_the_config_and_the_launcher_choose_from_the_table():
    import typing

    from precise_fast import launch
    from precise_fast.train import config

    assert launch.SDES == kinds.STOCHASTIC_KINDS
    assert config.SAMPLER_KINDS == kinds.KINDS and config.STOCHASTIC_KINDS == kinds.STOCHASTIC_KINDS
    hints = {cls: typing.get_type_hints(cls) for cls in (config.SamplerConfig, config.EvalTarget, config.EvalConfig)}
    assert typing.get_args(hints[config.SamplerConfig]["kind"]) == kinds.STOCHASTIC_KINDS
    assert typing.get_args(typing.get_args(hints[config.EvalTarget]["kind"])[0]) == kinds.KINDS
    assert typing.get_args(hints[config.EvalConfig]["kind"]) == kinds.KINDS
