"""Stochastic samplers for flow-matching RL (shared/SAMPLERS.md is the contract).

Public names: ``noise_std``, ``step``, ``mean_jacobian``, ``mean_coefficients``,
``flux2_sigmas``, ``StepOutput``, ``KINDS``, ``DEFAULT_ETA``.
"""

from .dispatch import step
from .kinds import DEFAULT_ETA, KINDS
from .reference import StepOutput, mean_coefficients, mean_jacobian, noise_std, reference_step
from .schedules import as_schedule, flux2_mu, flux2_sigmas, linear_sigmas

__all__ = [
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
    "reference_step",
    "step",
]
