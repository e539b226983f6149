"""Fold the outputs of scripts/gpu_check.sh into OUT/gpu_report.json and OUT/gpu_report.md.

Inputs in OUT: ``steps.tsv`` (step, exit status, seconds: one line per step the script
ran), ``gpu_tests.xml`` (pytest's JUnit XML of the ``-m gpu`` run), ``gpu_tests_collected.txt``
(the node ids that run collected, tests/conftest.py: those missing from the XML never finished,
the step's time ran out first) and the benchmarks' ``gpu_*.json``. Exits non-zero when any step
failed, so the script's status is this one.

Run: ``python bench/gpu_report.py OUT``.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

BENCHES = ("gpu_fused_step", "gpu_rollout", "gpu_train_step")


def _steps(out: Path) -> list[dict]:
    path = out / "steps.tsv"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, status, seconds = line.split("\t")
        rows.append({"step": name, "status": int(status), "seconds": float(seconds)})
    return rows


def _junit_address(nodeid: str) -> tuple[str, str]:
    """A node id as pytest's JUnit XML writes it: ``a/b.py::C::t[p]`` -> ("a.b.C", "t[p]")."""
    path, *names = nodeid.split("::")
    module = path.removesuffix(".py").replace("/", ".")
    return ".".join([module, *names[:-1]]), names[-1] if names else ""


def _collected(out: Path) -> list[str] | None:
    path = out / "gpu_tests_collected.txt"
    return [n for n in path.read_text().splitlines() if n] if path.is_file() else None


def _unfinished(collected: list[str] | None, suites: list) -> list[str] | None:
    """The collected node ids with no result in the XML (None when the collection list is absent)."""
    if collected is None:
        return None
    done = {(c.get("classname"), c.get("name")) for s in suites for c in s.iter("testcase")}
    return [n for n in collected if _junit_address(n) not in done]


def _node_ids(addresses: list[tuple[str, str]], collected: list[str] | None) -> list[str]:
    """JUnit addresses back to node ids: through the collected list, else as a module's test."""
    by_address = {_junit_address(n): n for n in collected or []}
    return [by_address.get((cls, name)) or f"{cls.replace('.', '/')}.py::{name}" for cls, name in addresses]


def _tests(out: Path) -> dict | None:
    path = out / "gpu_tests.xml"
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    collected = _collected(out)
    unfinished = _unfinished(collected, suites)
    failed_at = [(c.get("classname"), c.get("name")) for s in suites for c in s.iter("testcase")
                 if c.find("failure") is not None or c.find("error") is not None]
    failed = [f"{cls}::{name}" for cls, name in failed_at]
    reasons = Counter(c.find("skipped").get("message", "") for s in suites for c in s.iter("testcase")
                      if c.find("skipped") is not None)
    return {**count, "passed": count["tests"] - count["failures"] - count["errors"] - count["skipped"],
            "failed": failed, "skipped_why": dict(reasons.most_common()), "unfinished": unfinished,
            # What a second call runs (GPU_TESTS_FROM=this report): the failed, then the unfinished.
            "rerun": _node_ids(failed_at, collected) + (unfinished or [])}


def _by_function(nodeids: list[str]) -> Counter:
    """Node ids counted per test function (parameters dropped): a short list for the summary."""
    return Counter(n.split("[", 1)[0] for n in nodeids)


def _md(report: dict) -> str:
    lines = [f"# GPU check ({'PASS' if report['ok'] else 'FAIL'})", ""]
    gpu = next((b["gpu"] for b in report["benchmarks"].values() if b and "gpu" in b), {})
    if gpu:
        lines += [f"GPU: {gpu.get('device')} ({gpu.get('capability', '')}), HBM peak {gpu.get('hbm_peak_gbs')} GB/s, "
                  f"measured copy {gpu.get('measured_copy_gbs')} GB/s, bf16 peak {gpu.get('bf16_peak_tflops')} TFLOP/s", ""]
    lines += ["| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {'ok' if s['status'] == 0 else 'FAILED (' + str(s['status']) + ')'} | {s['seconds']:.0f} |"
              for s in report["steps"]]
    t = report["tests"]
    if t:
        lines += ["", f"GPU tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped"]
        lines += [f"- FAILED {name}" for name in t["failed"]]
        lines += [f"- skipped x{n}: {why}" for why, n in t["skipped_why"].items()]
        if t.get("unfinished"):
            lines += [f"- not finished (the step's time ran out) x{len(t['unfinished'])}:"]
            lines += [f"  - {name} x{n}" for name, n in _by_function(t["unfinished"]).items()]
        if t.get("rerun"):
            lines += [f"- a second call reruns these {len(t['rerun'])}: GPU_TESTS_FROM=<this gpu_report.json> "
                      "GPU_CHECK_ONLY=gpu_tests bash scripts/gpu_check.sh $OUT"]
    fused = report["benchmarks"].get("gpu_fused_step")
    if fused:
        c = fused.get("config", {})
        lines += ["", f"## Fused step (B={c.get('batch')} x {c.get('elements')}, inputs rotated past 4x L2)", "",
                  "| case | median us | GB/s | % HBM peak | % measured copy | timing |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {1e3 * r['median_ms']:.1f} | {r['gbs']} | {r.get('hbm_pct', '-')} | {r.get('copy_pct', '-')} | "
                  f"{r.get('timing', '-')} |" for k, r in fused["results"].items()]
        lines += [f"- {k}: {v}x" for k, v in fused.get("speedups", {}).items()]
        lines += [f"- skipped: {k}" for k in fused.get("skipped", [])]
    roll = report["benchmarks"].get("gpu_rollout")
    if roll:
        c = roll.get("config", {})
        lines += ["", f"## Rollout ({roll.get('model')}; {c.get('batch')} images {c.get('size')}px, {c.get('steps')} steps)", "",
                  "| variant | s / rollout | images/s | MFU % | peak GiB | speedup vs eager |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {r['median_ms'] / 1e3:.2f} | {r['images_per_s']} | {r['mfu_pct']} | {r['peak_memory_gib']} | "
                  f"{r.get('speedup_vs_engine_eager', '-')} |" for k, r in roll["results"].items()]
        lines += [f"- MFU: {roll.get('mfu_formula')}"] + [f"- skipped: {k}" for k in roll.get("skipped", [])]
    train = report["benchmarks"].get("gpu_train_step")
    if train:
        c = train.get("config", {})
        lines += ["", f"## One GRPO-Guard update ({train.get('model')}; LoRA rank {c.get('lora_rank')}, "
                      f"{c.get('samples')} samples x {c.get('trained_timesteps')} timesteps)", "",
                  "| variant | s / update | MFU % | peak GiB |", "|---|---|---|---|"]
        lines += [f"| {k} | {r['seconds_per_update']} | {r['mfu_pct']} | {r['peak_memory_gib']} |"
                  for k, r in train["results"].items()]
        lines += [f"- MFU: {train.get('mfu_formula')}"] + [f"- skipped: {k}" for k in train.get("skipped", [])]
    return "\n".join(lines) + "\n"


def main(out: Path) -> int:
    steps = _steps(out)
    tests = _tests(out)
    benches = {}
    for name in BENCHES:
        path = out / f"{name}.json"
        benches[name] = json.loads(path.read_text()) if path.is_file() else None
    ok = bool(steps) and all(s["status"] == 0 for s in steps)
    if tests is not None:
        # Every GPU test skipped is no check at all (e.g. torch sees no GPU).
        ok = ok and tests["failures"] == 0 and tests["errors"] == 0 and tests["passed"] > 0
    report = {"ok": ok, "steps": steps, "tests": tests, "benchmarks": benches}
    (out / "gpu_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_report.md").write_text(_md(report))
    print(_md(report))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/gpu_report.py OUT")
    sys.exit(main(Path(sys.argv[1])))
