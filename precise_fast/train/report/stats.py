"""Statistics of eval records: mean, std and 95% CI per reward, GenEval's per-tag view.

Records are the per-prompt dicts of :meth:`precise_fast.train.report.evaluator.Evaluator.score_batch`
(``scores``: component -> value or None, ``extras``: scorer extras, ``reward``: the
weighted raw sum or None, ``metadata``). Conventions of the paper's evaluator
(Tencent-Hunyuan/Precise ``precise_sde/eval/infer_eval.py``): ``std`` is the population
std (``np.std``), entries equal to the -10 sentinel are not samples, and PickScore is
reported times 26 (its display scale; our scorer trains on PickScore / 26 like
Flow-GRPO). ``ci95`` is the half-width of the Student-t 95% interval of the mean.

GenEval (Ghosh et al. 2023) reports a task's score as the mean over its prompts and the
overall score as the mean over the six tasks; records whose metadata carry a ``tag`` get
both: ``per_tag[tag][metric]`` and ``tag_mean[metric]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ...rewards.base import SENTINEL

PAPER_SCALE = {"pickscore": 26.0}  # infer_eval.py's display_scale


def stats(values: Iterable[float], scale: float = 1.0) -> dict:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v) and v != SENTINEL], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "count": 0}
    x = x * scale
    if n > 1:
        from scipy.stats import t as student_t

        half = float(student_t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    else:
        half = None
    out = {"mean": float(x.mean()), "std": float(x.std()), "ci95": half, "count": n}
    if scale != 1.0:
        out["scale"] = scale
    return out


def _columns(records: list[dict], field: str) -> dict[str, list]:
    names = dict.fromkeys(n for r in records for n in r[field])
    return {n: [r[field].get(n) for r in records] for n in names}


def summarize(records: list[dict], *, paper_scale: bool = True, weights: dict | None = None) -> dict:
    """Summary of one target at one checkpoint (see the module docstring).

    With the reward's ``weights``, ``aggregated`` is the paper's weighted mean of the
    component means, ``sum(w * mean) / sum(w)`` on the raw (unscaled) means.
    """
    scale = PAPER_SCALE if paper_scale else {}
    columns = _columns(records, "scores")
    components = {n: stats(v, scale.get(n, 1.0)) for n, v in columns.items()}
    extras = {n: stats(v) for n, v in _columns(records, "extras").items()}
    out = {
        "count": len(records),
        "components": components,
        "extras": extras,
        "reward": stats(r["reward"] for r in records),
    }
    if weights:
        raw = {n: stats(v)["mean"] for n, v in columns.items()}
        used = {n: float(w) for n, w in weights.items() if w and raw.get(n) is not None}
        total = sum(used.values())
        out["aggregated"] = sum(w * raw[n] for n, w in used.items()) / total if total else None
    tags = [r.get("metadata", {}).get("tag") for r in records]
    if records and all(isinstance(tag, str) for tag in tags):
        per_tag = {}
        for tag in sorted(set(tags)):
            chosen = [r for r, g in zip(records, tags) if g == tag]
            metrics = {**_columns(chosen, "scores"), **_columns(chosen, "extras")}
            per_tag[tag] = {n: stats(v, scale.get(n, 1.0))["mean"] for n, v in metrics.items()}
            per_tag[tag]["count"] = len(chosen)
        names = [n for n in per_tag[next(iter(per_tag))] if n != "count"]
        tag_mean = {}
        for n in names:
            means = [per_tag[g].get(n) for g in per_tag]
            tag_mean[n] = float(np.mean(means)) if all(m is not None for m in means) else None
        out["per_tag"] = per_tag
        out["tag_mean"] = tag_mean
    return out
