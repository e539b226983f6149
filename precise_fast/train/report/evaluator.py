"""Evaluation on held-out prompts: every target of ``eval.targets``, fixed seeds, sharded over ranks.

One implementation serves the in-training eval (:func:`evaluate`, called by the trainer
with the EMA weights) and the standalone evaluator over saved checkpoints
(``precise_fast.eval``): both walk a target's prompts in the batches of
:func:`rank_batches` and score each batch with :meth:`Evaluator.score_batch`, which
returns one plain record per prompt; statistics come from
:func:`precise_fast.train.report.stats.summarize` over the records of every rank.

A target is one entry of the paper's ``*_eval_targets`` (Tencent-Hunyuan/Precise
``config/base.py``): its own prompt set, rewards, sampler kind, noise level, steps and
batch size, fields left unset inheriting the training run's, so eval rollouts use the
training sampler by default (kind ``"ode"`` stays an option). Without ``eval.targets`` the
legacy single target is built from ``eval.kind / num_prompts / batch_size``.

Items: a target with ``images_per_prompt = k`` has ``k`` items per prompt, item ``i`` being
prompt ``i // k`` (k = 1, the paper's eval: item = prompt). Seeds: item ``i`` always gets
the initial latent and step noise of ``stream_seed(seed, Stream.EVAL, i)`` (state/rng.py), so successive evals differ
only by the weights. Batches are fixed slices of the item list (batch ``j`` holds items
``j*B .. j*B+B-1``) dealt round-robin to the ranks,
so a batch holds the same prompts on 1 or 8 ranks and the results do not depend on the
world size. Under ``pad=True`` (training) every rank runs the same number of batches (a
rank short of one repeats its first, uncounted), which keeps collective weight gathers in
step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Union

import torch

from ...kinds import ODE
from ...prompts import load_prompts
from ...rewards import build_reward
from ..config import EvalTarget
from ..phases.trajectories import Rollouts
from ..state.rng import Stream, stream_seed
from .stats import summarize


@dataclass(frozen=True)
class Target:
    """An eval target with every field resolved against the run config."""

    name: str
    prompts: str
    reward: Union[str, dict, None]  # None: the training reward
    kind: str  # "ode" or a stochastic kind
    eta: Union[float, None]  # None: the kind's default noise level
    num_steps: int
    batch_size: int
    num_prompts: int  # 0: every prompt of the set
    images_per_prompt: int
    prefix: str  # metric prefix: "eval/" for the legacy target, "eval/<name>/" otherwise

    def describe(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "prefix"}


def resolve_target(t: EvalTarget, cfg, *, legacy: bool = False) -> Target:
    s = cfg.sampler
    kind = t.kind or s.kind
    if t.eta is not None:
        eta = t.eta
    elif kind == s.kind:
        eta = s.eta  # the training noise level (None: the kind's default)
    else:
        eta = None
    return Target(
        name=t.name,
        prompts=t.prompts or cfg.prompts.test,
        reward=t.reward,
        kind=kind,
        eta=None if kind == ODE else eta,
        num_steps=t.num_steps or s.num_steps,
        batch_size=t.batch_size,
        num_prompts=t.num_prompts,
        images_per_prompt=t.images_per_prompt,
        prefix="eval/" if legacy else f"eval/{t.name}/",
    )


def resolve_targets(cfg) -> list[Target]:
    """``cfg.eval.targets`` resolved; without any, the legacy single target of ``cfg.eval``."""
    e = cfg.eval
    if e.targets:
        return [resolve_target(t, cfg) for t in e.targets]
    legacy = EvalTarget(name="eval", kind=e.kind, batch_size=e.batch_size, num_prompts=e.num_prompts,
                        images_per_prompt=e.images_per_prompt)
    return [resolve_target(legacy, cfg, legacy=True)]


def eval_seed(cfg) -> int:
    """The seed of a run's eval items: ``eval.seed``, or the run's seed when unset."""
    return cfg.run.seed if cfg.eval.seed is None else int(cfg.eval.seed)


def item_seed(seed: int, index: int) -> int:
    return stream_seed(seed, Stream.EVAL, index)


def rank_batches(total: int, batch_size: int, rank: int, world_size: int, *, pad: bool) -> list[tuple[list[int], bool]]:
    """This rank's batches as ``(prompt indices, counted)``; see the module docstring."""
    starts = list(range(0, total, batch_size))
    mine = [(list(range(a, min(a + batch_size, total))), True) for a in starts[rank::world_size]]
    if pad:
        want = math.ceil(len(starts) / world_size)
        filler = mine[0][0] if mine else list(range(min(batch_size, total)))
        mine += [(filler, False)] * (want - len(mine))
    return mine


def _spec_key(spec) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


class Evaluator:
    """Rollout engines, rewards and prompt sets of the eval targets, built once and reused.

    ``train_rollouts`` / ``train_reward``: the training run's (shared, not closed here);
    targets with the same sampler reuse the engine (and its prompt-embedding cache).
    ``prompt_sets``: sets the caller already loaded, by path (the trainer's ``prompts.test``).
    """

    def __init__(self, pipeline, cfg, *, reward_device, reward_dtype, train_rollouts=None, train_reward=None,
                 prompt_sets: dict | None = None):
        self.pipeline = pipeline
        self.cfg = cfg
        self.reward_device = reward_device
        self.reward_dtype = reward_dtype
        self.train_reward = train_reward
        self._rollouts: dict[tuple, object] = {}
        if train_rollouts is not None:
            self._rollouts[(cfg.sampler.kind, cfg.sampler.eta, cfg.sampler.num_steps)] = train_rollouts
        self._rewards: dict[str, object] = {}
        self._prompts: dict[str, object] = dict(prompt_sets or {})

    def rollouts(self, t: Target):
        """``(rollouts, mode)`` for a target; the ODE runs on the training kind's engine in ``ode`` mode."""
        s = self.cfg.sampler
        engine_kind, eta, mode = (s.kind, s.eta, ODE) if t.kind == ODE else (t.kind, t.eta, "sde")
        key = (engine_kind, eta, t.num_steps)
        if key not in self._rollouts:
            # Another sampler than training's: the same run config with the target's sampler fields.
            sampler = dataclasses.replace(s, kind=engine_kind, eta=eta, num_steps=t.num_steps)
            self._rollouts[key] = Rollouts(self.pipeline, dataclasses.replace(self.cfg, sampler=sampler))
        return self._rollouts[key], mode

    def reward(self, t: Target):
        if t.reward is None or _spec_key(t.reward) == _spec_key(self.cfg.reward.spec):
            if self.train_reward is None:
                self.train_reward = self._built(self.cfg.reward.spec)
            return self.train_reward
        return self._built(t.reward)

    def _built(self, spec):
        key = _spec_key(spec)
        if key not in self._rewards:
            self._rewards[key] = build_reward(spec, device=self.reward_device, dtype=self.reward_dtype,
                                              model_root=self.cfg.reward.model_root, reuse=self.train_reward)
        return self._rewards[key]

    def prompt_set(self, t: Target):
        if t.prompts not in self._prompts:
            self._prompts[t.prompts] = load_prompts(t.prompts)
        return self._prompts[t.prompts]

    def num_items(self, t: Target) -> int:
        n = len(self.prompt_set(t))
        return (min(t.num_prompts, n) if t.num_prompts else n) * t.images_per_prompt

    @torch.no_grad()
    def score_batch(self, t: Target, indices: list[int], *, seed: int) -> tuple[list[dict], torch.Tensor]:
        """Sample and score items ``indices`` of ``t``: one record per item, and the images."""
        prompt_set = self.prompt_set(t)
        rollouts, mode = self.rollouts(t)
        reward = self.reward(t)
        prompt_of = [i // t.images_per_prompt for i in indices]
        texts = [prompt_set.prompts[p] for p in prompt_of]
        metadata = [prompt_set.metadata[p] for p in prompt_of]
        seeds = [item_seed(seed, i) for i in indices]
        ro = rollouts.sample(texts, seeds, seeds, mode=mode)
        result = reward(ro.images, texts, metadata)
        comps = {n: v.detach().double().cpu() for n, v in result.per_component.items()}
        valid = {n: result.component_valid[n].cpu() for n in comps}
        extras = {n: v.detach().double().cpu() for n, v in result.extras.items()}
        ok = result.valid.cpu()
        weights = result.weights
        records = []
        for j, i in enumerate(indices):
            scores = {n: (float(comps[n][j]) if bool(valid[n][j]) else None) for n in comps}
            total = sum(weights.get(n, 1.0) * comps[n][j] for n in comps)
            records.append({
                "target": t.name,
                "index": i,
                "prompt_index": prompt_of[j],
                "prompt": texts[j],
                "metadata": metadata[j],
                "seed": seeds[j],
                "scores": scores,
                "extras": {n: (float(v[j]) if math.isfinite(float(v[j])) else None) for n, v in extras.items()},
                "reward": float(total) if bool(ok[j]) else None,
            })
        return records, ro.images

    def close(self) -> None:
        for r in self._rewards.values():
            r.close()
        self._rewards.clear()


def gather_records(records: list[dict]) -> list[dict]:
    """Every rank's records, on every rank, sorted by prompt index."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    return sorted(records, key=lambda r: r["index"])


def target_metrics(t: Target, summary: dict) -> dict[str, float]:
    """Scalar metrics of one target's summary: ``<prefix><component>`` means and ``<prefix>reward_mean``."""
    def value(stats):
        return float("nan") if stats["mean"] is None else stats["mean"]

    out = {f"{t.prefix}{name}": value(stats) for name, stats in summary["components"].items()}
    out.update({f"{t.prefix}{name}": value(stats) for name, stats in summary["extras"].items()})
    out[f"{t.prefix}reward_mean"] = value(summary["reward"])
    return out


@torch.no_grad()
def evaluate(evaluator: Evaluator, *, cfg, rank: int, world_size: int, weights_context=None, gathered=None,
             keep_preview: int = 0) -> tuple[dict[str, float], dict[str, dict]]:
    """The in-training eval of every target: ``(metrics, previews by target name)``.

    ``eval/reward_mean`` is the first target's weighted raw reward (the headline number the
    run history and reward curve track).
    """
    metrics: dict[str, float] = {}
    previews: dict[str, dict] = {}
    targets = resolve_targets(cfg)
    with weights_context() if weights_context else contextlib.nullcontext(), \
            gathered() if gathered else contextlib.nullcontext():
        for t in targets:
            preview = {"images": [], "prompts": [], "rewards": []}
            records = []
            for indices, counted in rank_batches(evaluator.num_items(t), t.batch_size, rank, world_size, pad=True):
                batch, images = evaluator.score_batch(t, indices, seed=eval_seed(cfg))
                if not counted:
                    continue
                records += batch
                for j, rec in enumerate(batch):
                    if len(preview["images"]) < keep_preview:
                        preview["images"].append(images[j].float().cpu())
                        preview["prompts"].append(rec["prompt"])
                        preview["rewards"].append(rec["reward"] if rec["reward"] is not None else float("nan"))
            summary = summarize(gather_records(records), paper_scale=False)
            metrics.update(target_metrics(t, summary))
            previews[t.name] = preview
    metrics["eval/reward_mean"] = metrics[f"{targets[0].prefix}reward_mean"]
    return metrics, previews
