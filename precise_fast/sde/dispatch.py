"""``step``: the public sampler step, dispatched to a backend.

``backend="auto"`` picks the fast path for the tensors' device (the C++ kernel on CPU,
Triton on CUDA) and falls back to the reference, with one warning, when no extension is
there; ``"reference"``, ``"triton"``, ``"cpu"``, ``"cuda"`` force one (an error if it
cannot run on these tensors). The fused backends are :func:`sample_step` /
:func:`score_step` (``fused.py``); this wrapper keeps the ``StepOutput`` form.
"""

from __future__ import annotations

import torch

from .arguments import check_latents, check_step_values
from .fused import contiguous_rows, sample_step, score_rows
from .kinds import STOCHASTIC
from .ops import BACKENDS, resolve_backend
from .reference import StepOutput, reference_step


def step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma,
    next_sigma,
    std,
    *,
    kind: str,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    seeds: torch.Tensor | None = None,
    step_index=0,
) -> StepOutput:
    """One sampler step ``sigma -> next_sigma``; see :func:`reference_step` for the math.

    Returns ``StepOutput(prev_sample, log_prob, mean)``: with ``prev_sample`` given it only
    scores it (no noise drawn). ``log_prob`` is per row, the mean over non-batch elements;
    the math is float32 for every input dtype, on every backend. The noise of sample mode
    is, in this order: ``noise`` if given; else the Philox stream of ``seeds`` at
    ``step_index`` (:func:`philox_normal`, identical on every backend); else ``torch.randn``
    with ``generator`` (the global one when None).

    Unlike :func:`sample_step` / :func:`score_step`, ``step`` checks the step values
    (sigma in (0, 1], next_sigma in [0, sigma), std > 0); a (B,) tensor is checked once
    per version, so passing a schedule's rows again costs no synchronisation.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    check_latents(x, v, kind)
    if noise is not None and seeds is not None:
        raise ValueError("pass seeds= or noise=, not both")
    chosen = resolve_backend(backend, x)
    sigma, next_sigma, std = check_step_values(sigma, next_sigma, std, kind, x.shape[0], x.device)
    if chosen == "reference" and seeds is None:
        # The original behaviour (randn draws from `generator`), in float32 math.
        return reference_step(
            x, v, sigma, next_sigma, std, kind=kind, noise=noise, prev_sample=prev_sample, generator=generator,
            math_dtype=torch.float32,
        )
    if prev_sample is not None:
        log_prob, mean, _ = score_rows(x, v, prev_sample, *contiguous_rows((sigma, next_sigma, std)), kind=kind,
                                       return_mean=True, backend=chosen)
        return StepOutput(prev_sample, log_prob, mean)
    if kind in STOCHASTIC and noise is None and seeds is None:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device)
    prev, log_prob, mean = sample_step(
        x, v, sigma, next_sigma, std, kind=kind, seeds=seeds, step_index=step_index, noise=noise,
        return_mean=True, backend=chosen,
    )
    return StepOutput(prev, log_prob, mean)
