"""Reward types, multi-reward combination and normalisation.

Conventions
-----------
* Images are float tensors ``(B, 3, H, W)`` in ``[0, 1]`` (RGB), on any device; prompts a
  list of ``B`` strings; metadata a list of ``B`` dicts (GenEval needs its per-prompt spec).
* A scorer returns a :class:`ScoreOutput`: float32 scores ``(B,)`` on the images' device, a
  boolean ``valid`` mask, and optional named per-sample extras for logging.
* Samples a scorer could not score carry :data:`SENTINEL` (``-10``) in the score tensor and
  ``False`` in ``valid``. The value -10 is the marker Flow-GRPO's reward server uses for
  "no reward here" (github.com/yifan123/reward-server, ``reward_server/gen_eval.py``,
  grouped rewards); we keep it so gathered tensors read the same, but we carry an explicit
  mask alongside so that a legitimate score of -10 (e.g. a 10 kB JPEG) is never mistaken for
  a failure. Where only values travel (after a gather), validity is recovered as
  ``score != SENTINEL``.
* A score is in range when it is finite and ``|score| <= MAX_ABS_SCORE``; any other score
  (a broken server's ``1e300``, a local model's ``inf``) and any image holding a non-finite
  pixel (a diverged sampler's NaN, which the uint8 conversion would turn into a black image
  that scores as valid) make the sample invalid, with a warning.
* Normalisation (Precise recipe, shared/SAMPLERS.md "The GRPO objective"): each component is
  standardised over the *global* batch ignoring invalid samples, then weighted and summed.
  A sample is invalid if any component with a non-zero weight is invalid; it then gets the
  sentinel as combined reward (the trainer gives it advantage 0).
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("precise_fast.rewards")

SENTINEL = -10.0
# Every reward here scores within +-1e3 (JPEG size in kB, PickScore's ~22, the others within
# +-10, GenEval [0, 1], UnifiedReward [1, 5]). Beyond +-1e6 a score is a broken scorer's: one
# such value dominates the epoch's normalisation (a valid 1e30 overflowed the float32 variance
# and zeroed every advantage), while within it the float32 statistics neither overflow (N x
# 4e12 for N samples) nor lose the in-range differences.
MAX_ABS_SCORE = 1e6


def in_range(scores: torch.Tensor) -> torch.Tensor:
    """Where ``scores`` are finite and within +-:data:`MAX_ABS_SCORE` (device-side, no sync)."""
    return torch.isfinite(scores) & (scores.abs() <= MAX_ABS_SCORE)


@dataclass
class ScoreOutput:
    """What one scorer returns for a batch."""

    scores: torch.Tensor  # (B,) float32; SENTINEL where not valid
    valid: torch.Tensor  # (B,) bool
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) float32 each, for logging

    @staticmethod
    def from_scores(scores: torch.Tensor, valid: torch.Tensor | None = None, extras=None) -> ScoreOutput:
        """Build an output, forcing the sentinel into invalid (or out-of-range) entries."""
        scores = scores.detach().to(torch.float32).reshape(-1)
        ok = in_range(scores)
        valid = ok if valid is None else (valid.to(device=scores.device, dtype=torch.bool).reshape(-1) & ok)
        scores = torch.where(valid, scores, torch.full_like(scores, SENTINEL))
        return ScoreOutput(scores=scores, valid=valid, extras=dict(extras or {}))


class RewardModel(abc.ABC):
    """A scorer: ``scorer(images, prompts, metadata) -> ScoreOutput``.

    ``remote`` scorers also offer ``submit(...) -> concurrent.futures.Future[ScoreOutput]``
    so :class:`MultiReward` can overlap their network I/O with local scoring.
    """

    name: str = "reward"
    remote: bool = False

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Mapping]) -> ScoreOutput: ...

    def submit(self, images, prompts, metadata) -> concurrent.futures.Future:
        """Default: score now and hand back a finished future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            fut.set_result(self(images, prompts, metadata))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sockets, threads or device memory."""


@dataclass
class RewardResult:
    """Rewards of one batch.

    ``per_component`` holds each scorer's raw scores (SENTINEL where invalid);
    ``combined`` the weighted sum (standardised first when the MultiReward normalises);
    ``valid`` is True where every weighted component scored the sample.
    """

    per_component: dict[str, torch.Tensor]
    combined: torch.Tensor
    valid: torch.Tensor
    component_valid: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


def _valid_masks(components: Mapping[str, torch.Tensor], valid) -> dict[str, torch.Tensor]:
    """Per-component validity: given per component, one mask for all, or from the sentinel."""
    out = {}
    for name, values in components.items():
        if isinstance(valid, Mapping):
            mask = valid[name]
        elif valid is not None:
            mask = valid
        else:
            mask = values != SENTINEL
        out[name] = mask.to(device=values.device, dtype=torch.bool) & in_range(values)
    return out


def standardize(values: torch.Tensor, valid: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the valid entries (population std); invalid -> 0.

    Population std (``unbiased=False``) like Flow-GRPO's ``np.std`` stat tracking. With
    fewer than two valid entries the std is 0 and every valid entry maps to 0. No host sync.
    """
    x = torch.where(valid, values.to(torch.float32), 0.0)  # NaN * 0 would still be NaN
    w = valid.to(torch.float32)
    n = w.sum().clamp_min(1.0)
    mean = (x * w).sum() / n
    var = (((x - mean) ** 2) * w).sum() / n
    z = (x - mean) / (var.sqrt() + eps)
    return torch.where(valid, z, torch.zeros_like(z))


def _check_components(components: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> None:
    if not components:
        raise ValueError("no reward components to combine")
    unknown = set(weights) - set(components)
    if unknown:
        raise ValueError(f"weights given for unknown components {sorted(unknown)}; components are {sorted(components)}")
    shapes = {tuple(v.shape) for v in components.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"every component must be a 1-D tensor of the same length, got shapes {sorted(shapes)}")


def combine_rewards(
    components: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    valid=None,
    *,
    normalize: bool = False,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of components -> ``(combined, valid)``; optionally standardised first.

    ``valid``: a dict of per-component masks, one mask for all, or None (use the sentinel).
    Components missing from ``weights`` get weight 1. Components with weight 0 are reported
    but neither add to the sum nor make a sample invalid.
    """
    _check_components(components, weights)
    masks = _valid_masks(components, valid)
    first = next(iter(components.values()))
    total = torch.zeros(first.shape, dtype=torch.float32, device=first.device)
    all_valid = torch.ones(first.shape, dtype=torch.bool, device=first.device)
    for name, values in components.items():
        weight = float(weights.get(name, 1.0))
        if not math.isfinite(weight):
            raise ValueError(f"weight of {name!r} is {weight}")
        if weight == 0.0:
            continue
        mask = masks[name]
        x = standardize(values, mask, eps) if normalize else torch.where(mask, values.to(torch.float32), 0.0)
        total = total + weight * x
        all_valid = all_valid & mask
    combined = torch.where(all_valid, total, torch.full_like(total, SENTINEL))
    return combined, all_valid


def normalize_rewards(
    components: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    valid=None,
    *,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise each component over the (already gathered) global batch, ignoring
    invalid entries, then combine with the weights -> ``(combined, valid)``.

    Call it on the tensors gathered from every rank so that all ranks use the same
    statistics. Invalid samples get :data:`SENTINEL` and ``valid=False``.
    """
    return combine_rewards(components, weights, valid, normalize=True, eps=eps)


def _check_batch(images: torch.Tensor, prompts: Sequence[str], metadata) -> list:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor in [0, 1], got {images.dtype}")
    batch = images.shape[0]
    if isinstance(prompts, str) or len(prompts) != batch:
        raise ValueError(f"need one prompt per image: {batch} images, prompts={prompts!r:.80}")
    if metadata is None:
        return [{} for _ in range(batch)]
    metadata = list(metadata)
    if len(metadata) != batch:
        raise ValueError(f"need one metadata entry per image: {batch} images, {len(metadata)} entries")
    return metadata


class MultiReward:
    """Several scorers with weights: ``MultiReward(images, prompts, metadata) -> RewardResult``.

    Remote scorers are started first (their HTTP requests run on a background event loop),
    local model scorers then run on the device, and the remote answers are joined last, so
    network latency hides behind local compute.

    ``normalize=True`` standardises each component over *this* batch before combining; in a
    distributed run keep it False here, gather ``per_component`` / ``component_valid``
    from every rank and call :func:`normalize_rewards` on the global batch instead.
    """

    def __init__(
        self,
        components: Mapping[str, RewardModel],
        weights: Mapping[str, float] | None = None,
        *,
        normalize: bool = False,
        eps: float = 1e-8,
        remote_timeout_s: float | None = None,
    ):
        if not components:
            raise ValueError("MultiReward needs at least one component")
        self.components = dict(components)
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in self.components}
        unknown = set(weights or {}) - set(self.components)
        if unknown:
            raise ValueError(f"weights for unknown components {sorted(unknown)}")
        self.normalize = normalize
        self.eps = eps
        self.remote_timeout_s = remote_timeout_s
        # Set by registry.build_reward: how each component was built, (scorer, options, device,
        # dtype), so a later build may borrow it; borrowed components are another reward's to close.
        self.built_from: dict[str, tuple] = {}
        self.borrowed: set[str] = set()

    @property
    def names(self) -> list[str]:
        return list(self.components)

    @property
    def remote(self) -> bool:
        return any(c.remote for c in self.components.values())

    def score_components(self, images: torch.Tensor, prompts: Sequence[str], metadata=None) -> dict[str, ScoreOutput]:
        """Run every scorer; remote ones overlap with the local ones."""
        metadata = _check_batch(images, prompts, metadata)
        prompts = list(prompts)
        finite_images = torch.isfinite(images).flatten(1).all(dim=1)
        if not bool(finite_images.all()):  # scorers get defined pixels; these samples are invalid below
            logger.warning("%d of %d images hold non-finite pixels: invalid samples",
                           int((~finite_images).sum()), images.shape[0])
            images = torch.where(finite_images.view(-1, 1, 1, 1), images, torch.zeros_like(images))
        pending = {name: c.submit(images, prompts, metadata) for name, c in self.components.items() if c.remote}
        outputs: dict[str, ScoreOutput] = {}
        try:
            for name, scorer in self.components.items():
                if not scorer.remote:
                    outputs[name] = scorer(images, prompts, metadata)
        finally:
            # Always collect the remote futures (their own deadlines bound this wait).
            errors = []
            for name, fut in pending.items():
                try:
                    outputs[name] = fut.result(timeout=self._remote_timeout(self.components[name], images.shape[0]))
                except concurrent.futures.TimeoutError:
                    fut.cancel()
                    errors.append(TimeoutError(f"remote reward {name!r} gave no answer in time"))
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)
        if errors:
            raise errors[0]
        device = images.device
        batch = images.shape[0]
        for name, out in outputs.items():
            if out.scores.shape != (batch,):
                raise RuntimeError(f"reward {name!r} returned shape {tuple(out.scores.shape)} for {batch} images")
            scores = out.scores.to(device)
            ok = in_range(scores)
            valid = out.valid.to(device)
            if not bool((ok | ~valid).all()):
                logger.warning("reward %r: %d scores out of range (non-finite or beyond +-%g): invalid samples",
                               name, int((valid & ~ok).sum()), MAX_ABS_SCORE)
            valid = valid & ok & finite_images.to(device)
            outputs[name] = ScoreOutput(
                scores=torch.where(valid, scores, torch.full_like(scores, SENTINEL)),
                valid=valid,
                extras={k: v.to(device) for k, v in out.extras.items()},
            )
        return {name: outputs[name] for name in self.components}

    def _remote_timeout(self, scorer: RewardModel, batch: int) -> float:
        """Never wait forever: the scorer's own deadline (plus slack), else one hour."""
        if self.remote_timeout_s is not None:
            return self.remote_timeout_s
        deadline = getattr(scorer, "deadline_s", None)
        return deadline(batch) + 5.0 if callable(deadline) else 3600.0

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata=None) -> RewardResult:
        outputs = self.score_components(images, prompts, metadata)
        per_component = {name: out.scores for name, out in outputs.items()}
        component_valid = {name: out.valid for name, out in outputs.items()}
        combined, valid = combine_rewards(
            per_component, self.weights, component_valid, normalize=self.normalize, eps=self.eps
        )
        extras = {}
        for out in outputs.values():
            extras.update(out.extras)
        return RewardResult(
            per_component=per_component,
            combined=combined,
            valid=valid,
            component_valid=component_valid,
            extras=extras,
            weights=dict(self.weights),
        )

    def close(self) -> None:
        for name, scorer in self.components.items():
            if name not in self.borrowed:
                scorer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
