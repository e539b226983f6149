"""Sampler kinds, their families, default noise levels and input validation.

The names and defaults are those of ``shared/SAMPLERS.md`` (the Precise paper's
FLUX.2 Klein recipe, arXiv 2605.23522).
"""

from __future__ import annotations

import math

KINDS = ("ode", "flow_grpo", "dance_grpo", "cps", "precise", "dance_precise")

# Euler-Maruyama family: mean = x + dt v + 0.5 std^2 score.
EULER_MARUYAMA = frozenset({"flow_grpo", "dance_grpo"})
# Coefficient-preserving family: mean = (1 - s') x0_hat + sqrt(s'^2 - std^2) eps_hat.
COEFFICIENT_PRESERVING = frozenset({"cps", "precise", "dance_precise"})
STOCHASTIC = EULER_MARUYAMA | COEFFICIENT_PRESERVING

DEFAULT_ETA = {
    "ode": 0.0,
    "flow_grpo": 0.7,
    "dance_grpo": 0.3,
    "cps": 0.7,
    "precise": 1.5,
    "dance_precise": 0.3,
}

# Every std is clamped to at least this, so the final step s' = 0 keeps a finite log-prob.
MIN_STD = 1e-6


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a sampler kind; expected one of {', '.join(KINDS)}")
    return kind


def check_eta(kind: str, eta: float) -> float:
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta={eta} is invalid for kind={kind!r}: eta must be finite and >= 0")
    if kind == "cps" and eta > 1:
        raise ValueError(f"eta={eta} is invalid for kind='cps': cps needs 0 <= eta <= 1")
    return eta
