"""Stochastic samplers for flow-matching RL (shared/SAMPLERS.md is the contract).

Public names: ``noise_std``, ``step``, ``sample_step``, ``score_step``, ``philox_normal``,
``mean_jacobian``, ``mean_coefficients``, ``flux2_sigmas``, ``StepOutput``, ``KINDS``,
``DEFAULT_ETA``, ``BACKENDS``.

Modules: ``kinds`` (the kind table), ``reference`` (the math: the specification),
``arguments`` (the argument rules and the step-value memo), ``api`` (the public step
functions, their one fast path and the backend choice), ``ops`` (registration of the
fused ops: extension, fake kernels, backend table), ``philox``, ``schedules``.
"""

from .api import BACKENDS, resolve_backend, sample_step, score_step, step
from .kinds import DEFAULT_ETA, KINDS
from .philox import philox_normal
from .reference import StepOutput, mean_coefficients, mean_jacobian, noise_std, reference_step
from .schedules import as_schedule, flux2_mu, flux2_sigmas, linear_sigmas

__all__ = [
    "BACKENDS",
    "DEFAULT_ETA",
    "KINDS",
    "StepOutput",
    "as_schedule",
    "flux2_mu",
    "flux2_sigmas",
    "linear_sigmas",
    "mean_coefficients",
    "mean_jacobian",
    "noise_std",
    "philox_normal",
    "reference_step",
    "resolve_backend",
    "sample_step",
    "score_step",
    "step",
]
