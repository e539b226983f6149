"""The kind table (``precise_fast/kinds.py``) as the sampler op reads it: the same names, with
the fused kernels' element types as torch dtypes."""

from __future__ import annotations

import torch

from ..kinds import (  # noqa: F401 - the table's names, for the sde modules and their importers
    COEFFICIENT_PRESERVING,
    DEFAULT_ETA,
    DEFAULT_KIND,
    EULER_MARUYAMA,
    FAMILY,
    FAMILY_COEFFICIENT_PRESERVING,
    FAMILY_EULER_MARUYAMA,
    FAMILY_ODE,
    FUSED_DTYPE_NAMES,
    KINDS,
    MAX_ETA,
    MAX_GRID_ROWS,
    MIN_STD,
    ODE,
    STOCHASTIC,
    STOCHASTIC_KINDS,
    SamplerKind,
    StochasticKind,
    check_eta,
    check_kind,
)

FUSED_DTYPES = tuple(getattr(torch, name) for name in FUSED_DTYPE_NAMES)
