"""The sampler kind table: every constant a backend, config, launcher or benchmark reads.

The kind names and default noise levels are those of ``shared/SAMPLERS.md`` (the Precise
paper's FLUX.2 Klein recipe, arXiv 2605.23522). Outside this table the names are spelled
only by the reference math (``sde/reference.py``): the kernels take a kind's family as an
integer, configs and the launcher build their choices from ``KINDS`` / ``STOCHASTIC_KINDS``,
and recipes leave ``eta`` to ``DEFAULT_ETA``.

It imports nothing heavy (no torch): the config and the launcher read it before any model
or library loads (importing ``precise_fast.sde`` takes seconds), and the kernels sit below
``sde``. ``precise_fast.sde.kinds`` is this table as the sampler op reads it.
"""

from __future__ import annotations

import math
from typing import Literal

# Families, as the Triton and C++/CUDA ops take them (``family`` argument): only the family
# matters to a step's mean and log-prob; the kinds of one family differ in their std, which
# arrives per row already computed (``noise_std``). csrc/step_coefficients.h's ``Family`` enum
# holds the same numbers.
FAMILY_ODE = 0
FAMILY_EULER_MARUYAMA = 1  # mean = x + dt v + 0.5 std^2 score
FAMILY_COEFFICIENT_PRESERVING = 2  # mean = (1 - s') x0_hat + sqrt(s'^2 - std^2) eps_hat

# The deterministic kind (std 0, nothing to train): evaluation's default, the steps outside an SDE
# window, G2RPO's completions. The training sampler's default is the paper's.
ODE = "ode"
DEFAULT_KIND = "precise"

# (kind, family, default eta, largest eta): the table itself. cps's std is s' sin(eta pi / 2),
# which turns back down past eta = 1.
_TABLE = (
    (ODE, FAMILY_ODE, 0.0, math.inf),
    ("flow_grpo", FAMILY_EULER_MARUYAMA, 0.7, math.inf),
    ("dance_grpo", FAMILY_EULER_MARUYAMA, 0.3, math.inf),
    ("cps", FAMILY_COEFFICIENT_PRESERVING, 0.7, 1.0),
    (DEFAULT_KIND, FAMILY_COEFFICIENT_PRESERVING, 1.5, math.inf),
    ("dance_precise", FAMILY_COEFFICIENT_PRESERVING, 0.3, math.inf),
)

KINDS = tuple(row[0] for row in _TABLE)
FAMILY = {kind: family for kind, family, _, _ in _TABLE}
DEFAULT_ETA = {kind: eta for kind, _, eta, _ in _TABLE}
MAX_ETA = {kind: largest for kind, _, _, largest in _TABLE}
EULER_MARUYAMA = frozenset(k for k, f in FAMILY.items() if f == FAMILY_EULER_MARUYAMA)
COEFFICIENT_PRESERVING = frozenset(k for k, f in FAMILY.items() if f == FAMILY_COEFFICIENT_PRESERVING)
STOCHASTIC = EULER_MARUYAMA | COEFFICIENT_PRESERVING
# The stochastic kinds in table order: what a training sampler, the launcher's --sde and the
# sampler study choose from (ode draws nothing, so it has no log-prob to train on).
STOCHASTIC_KINDS = tuple(k for k in KINDS if k in STOCHASTIC)
# The config's types of a kind field (its checker reads a Literal's arguments).
SamplerKind = Literal[KINDS]  # type: ignore[valid-type]
StochasticKind = Literal[STOCHASTIC_KINDS]  # type: ignore[valid-type]

# Every std is clamped to at least this, so the final step s' = 0 keeps a finite log-prob.
MIN_STD = 1e-6
# Element types the fused kernels read and write (their arithmetic is float32), as torch
# names them (``sde.kinds.FUSED_DTYPES`` holds the dtypes); the C++ kernels' ``Elem``
# (csrc/fused_step_args.h) holds the same three.
FUSED_DTYPE_NAMES = ("float32", "bfloat16", "float16")
# The CUDA and Triton kernels put the rows on grid dimension y, which holds at most 65535;
# csrc/fused_step_args.h's kMaxGridRows is the same number (precise_fast._C.max_grid_rows()).
MAX_GRID_ROWS = 65535


def check_kind(kind: str) -> str:
    if kind not in FAMILY:
        raise ValueError(f"kind={kind!r} is not a sampler kind; expected one of {', '.join(KINDS)}")
    return kind


def check_eta(kind: str, eta: float) -> float:
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta={eta} is invalid for kind={kind!r}: eta must be finite and >= 0")
    if eta > MAX_ETA[kind]:
        raise ValueError(f"eta={eta} is invalid for kind={kind!r}: {kind} needs 0 <= eta <= {MAX_ETA[kind]:g}")
    return eta
