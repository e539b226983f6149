"""``step``: the public sampler step, dispatched to a backend.

``backend="auto"`` picks the fast path for the tensors' device (the C++ kernel on CPU,
Triton on CUDA) and falls back to the reference, with one warning, when no extension is
there; ``"reference"``, ``"triton"``, ``"cpu"``, ``"cuda"`` force one (an error if it
cannot run on these tensors). The fused backends are :func:`sample_step` /
:func:`score_step` (``fused.py``); this wrapper keeps the ``StepOutput`` form.
"""

from __future__ import annotations

import torch

from .arguments import check_latents, check_step_values, memo_entry, remember, remembered_rows
from .fused import contiguous_rows, sample_step, score_rows
from .kinds import STOCHASTIC
from .ops import BACKENDS, NATIVE_SCORE_OP, native_backend, resolve_backend
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
    if prev_sample is not None and noise is None and seeds is None:
        fast = _native_scored(x, v, sigma, next_sigma, std, kind, prev_sample, backend)
        if fast is not None:
            return fast
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


# step()'s score mode on a C++ backend, per (backend, kind, step-value tensors by id and
# version): the rows check_step_values passed. The rule stays there; this is one lookup in
# front of it, keyed by what costs least to read (no device or shape of x: the op checks the
# rows against x itself, and a remembered row that does not fit this x makes the op refuse,
# so the full path runs), because right after a full-size pass the lookups themselves are
# what a call pays for (bench/README.md, "Public API cost").
_SCORED: dict[tuple, tuple] = {}


def _native_scored(x, v, sigma, next_sigma, std, kind, prev_sample, backend) -> StepOutput | None:
    """Score mode on a C++ backend: the op with the remembered rows (the op checks the tensors
    itself, see ``fused.native_score``); None where the full path must run, which then words
    any error. Step values that are not tensors take the full path. It calls the op itself
    rather than ``native_score``: on a memo hit the backend choice is already known, and the
    second lookup would be most of what this path costs."""
    if not (isinstance(sigma, torch.Tensor) and isinstance(next_sigma, torch.Tensor) and isinstance(std, torch.Tensor)):
        return None
    try:
        key = (backend, kind, id(sigma), sigma._version, id(next_sigma), next_sigma._version, id(std), std._version)
        entry = _SCORED.get(key)
        rows = None if entry is None else remembered_rows(entry, sigma, next_sigma, std)
        if rows is None:
            # Only C++ choices are remembered; a remembered entry's rows are on the device that
            # choice was made for, and the op refuses an x on any other, so a hit needs no new choice.
            if native_backend(backend, x) is None:
                return None
            rows = check_step_values(sigma, next_sigma, std, kind, x.shape[0], x.device)
            remember(_SCORED, key, memo_entry((sigma, next_sigma, std), rows))
        log_prob, mean, _ = NATIVE_SCORE_OP(x, v, prev_sample, *rows, None, kind, True)
    except Exception:  # noqa: BLE001 - the full path words it, after the checks it makes first
        return None
    # tuple.__new__ is what StepOutput(...) runs, without the Python frame of the named tuple's
    # generated __new__ (2.5 us of this path's ~9 us right after a full-size pass).
    return tuple.__new__(StepOutput, (prev_sample, log_prob, mean))
