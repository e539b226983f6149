"""Reward registry and ``build_reward``.

Spec forms accepted by :func:`build_reward`:

* a name: ``"pickscore"``, or a preset: ``"mix"`` (PickScore + CLIPScore + HPSv2.1, weights
  1, 1, 1: the Precise recipe's multi-reward, shared/DESIGN.md);
* a mapping ``{component: weight}``: ``{"pickscore": 1.0, "hpsv2": 0.5}``;
* a mapping ``{component: {"weight": w, **options}}`` for options, e.g.
  ``{"geneval": {"urls": ["http://10.0.0.5:18085"], "timeout_s": 60}}``. A component may
  name its scorer explicitly to use one scorer twice:
  ``{"ur_align": {"scorer": "unifiedreward", "aspects": {"alignment": 1}, ...}}``.
  A preset inside a mapping expands with its weights multiplied: ``{"mix": 2.0}``.

Options shared by the local model scorers: ``batch_size`` (micro-batch on the device) and a
path override for each file (see :mod:`precise_fast.model_paths`). Remote scorers take ``urls``
and the :class:`~.remote.http.RetryPolicy` fields (``timeout_s``, ``max_retries``, ``backoff_s`` ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .. import model_paths
from .base import MultiReward, RewardModel

PRESETS: dict[str, dict[str, float]] = {
    "mix": {"pickscore": 1.0, "clipscore": 1.0, "hpsv2": 1.0},
}


@dataclass(frozen=True)
class RewardEntry:
    name: str
    factory: Callable[..., RewardModel]
    remote: bool
    needs_weights: bool
    description: str


_REGISTRY: dict[str, RewardEntry] = {}
_RESERVED = {"device", "dtype", "model_root", "shared", "name"}


def register_reward(
    name: str,
    factory: Callable[..., RewardModel],
    *,
    remote: bool = False,
    needs_weights: bool = False,
    description: str = "",
    overwrite: bool = False,
) -> None:
    """Add a scorer. ``factory(*, device, dtype, model_root, shared, name, **options)``."""
    if name in PRESETS:
        raise ValueError(f"{name!r} is a preset name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"reward {name!r} is already registered")
    _REGISTRY[name] = RewardEntry(name, factory, remote, needs_weights, description)


def available_rewards() -> list[str]:
    """Registered scorer names (presets: :data:`PRESETS`)."""
    return sorted(_REGISTRY)


def build_scorer(
    scorer: str,
    *,
    device="cpu",
    dtype=torch.float32,
    model_root=None,
    shared: dict | None = None,
    name: str | None = None,
    **options,
) -> RewardModel:
    """One scorer by registry name, with its options."""
    if scorer not in _REGISTRY:
        raise KeyError(
            f"unknown reward {scorer!r}; available: {', '.join(available_rewards())}; presets: {', '.join(PRESETS)}"
        )
    entry = _REGISTRY[scorer]
    params = inspect.signature(entry.factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = set(params) - _RESERVED
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(f"reward {scorer!r} does not take option(s) {sorted(unknown)}; it takes {sorted(allowed)}")
    return entry.factory(
        device=device,
        dtype=dtype,
        model_root=model_root,
        shared=shared if shared is not None else {},
        name=name or scorer,
        **options,
    )


def parse_spec(spec) -> dict[str, tuple[str, float, dict]]:
    """Spec -> ``{component: (scorer, weight, options)}`` (see the module docstring)."""
    if isinstance(spec, str):
        spec = {spec: 1.0}
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"a reward spec is a name or a non-empty mapping, got {spec!r}")
    out: dict[str, tuple[str, float, dict]] = {}

    def add(component, scorer, weight, options):
        if component in out:
            raise ValueError(f"reward component {component!r} appears twice")
        out[component] = (scorer, weight, options)

    for component, value in spec.items():
        if isinstance(value, Mapping):
            options = dict(value)
            weight = options.pop("weight", 1.0)
            scorer = options.pop("scorer", component)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            weight, options, scorer = value, {}, component
        else:
            raise ValueError(f"reward {component!r}: expected a weight or an option mapping, got {value!r}")
        weight = float(weight)
        if scorer in PRESETS:
            if options:
                raise ValueError(f"preset {scorer!r} takes no options; list its components instead")
            for sub, sub_weight in PRESETS[scorer].items():
                add(sub, sub, weight * sub_weight, {})
        else:
            add(component, scorer, weight, options)
    return out


def build_reward(spec, device="cpu", dtype=torch.float32, *, model_root=None, normalize: bool = False,
                 reuse: MultiReward | None = None) -> MultiReward:
    """Build a :class:`MultiReward` from a spec (name, preset or mapping).

    Models load onto ``device`` in ``dtype`` from local folders under ``model_root`` (or
    ``$PRECISE_FAST_MODEL_ROOT``); a missing file raises
    :class:`~precise_fast.model_paths.WeightsNotFoundError` naming it. Folders shared by several
    scorers (CLIP ViT-L/14 for clipscore and aesthetic) are loaded once. A component that
    ``reuse`` (another built reward, e.g. the training one) holds under the same name, built by
    the same scorer with the same options, device, dtype and model root, is borrowed from it,
    not loaded again (the eval's reward beside the training's: gigabytes of the same models).
    """
    shared: dict = {}
    components, weights, built_from, borrowed = {}, {}, {}, set()
    try:
        for component, (scorer, weight, options) in parse_spec(spec).items():
            how = (scorer, options, str(torch.device(device)), dtype, str(model_root))
            if reuse is not None and reuse.built_from.get(component) == how:
                components[component] = reuse.components[component]
                borrowed.add(component)
            else:
                components[component] = build_scorer(
                    scorer, device=device, dtype=dtype, model_root=model_root, shared=shared, name=component, **options
                )
            built_from[component] = how
            weights[component] = weight
    except BaseException:
        for name, built in components.items():
            if name not in borrowed:
                built.close()
        raise
    reward = MultiReward(components, weights, normalize=normalize)
    reward.built_from, reward.borrowed = built_from, borrowed
    return reward


# ---------------------------------------------------------------------------------------
# Built-in scorers. Each factory imports its scorer's module when it is called, so a run
# loads only the libraries of the scorers it builds (transformers, open_clip, scipy ...).


def _jpeg(sign):
    def factory(*, device, dtype, model_root, shared, name, quality: int = 95, scale: float | None = None):
        from .jpeg import JpegReward, default_scale

        return JpegReward(name, sign, quality=quality, scale=default_scale(sign) if scale is None else scale)

    return factory


def _dir(option, default, *, model_root, scorer, what, hint):
    return model_paths.locate(
        option or default, model_root=model_root, scorer=scorer, what=what, hint=hint, is_dir=True
    )


_PICK_PROC_HINT = "Copy the processor files of the Hugging Face repo laion/CLIP-ViT-H-14-laion2B-s32B-b79K there."
_PICK_MODEL_HINT = "Copy config.json and the weights of the Hugging Face repo yuvalkirstain/PickScore_v1 there."
_CLIP_L_HINT = (
    "Copy the files of the Hugging Face repo openai/clip-vit-large-patch14 (config, weights, processor) there."
)


def _pickscore(
    *,
    device,
    dtype,
    model_root,
    shared,
    name,
    model_dir=None,
    processor_dir=None,
    scale: float = 1.0 / 26.0,
    batch_size: int = 32,
):
    from .clip_scorers import PickScore, load_hf_clip

    proc = _dir(
        processor_dir,
        model_paths.PICKSCORE_PROCESSOR,
        model_root=model_root,
        scorer="pickscore",
        what="CLIP-H processor folder",
        hint=_PICK_PROC_HINT,
    )
    model = _dir(
        model_dir,
        model_paths.PICKSCORE_MODEL,
        model_root=model_root,
        scorer="pickscore",
        what="PickScore model folder",
        hint=_PICK_MODEL_HINT,
    )
    backbone = load_hf_clip(
        model, proc, device, dtype, batch_size=batch_size, scorer="pickscore", hint=_PICK_MODEL_HINT, shared=shared
    )
    return PickScore(backbone, scale=scale, name=name)


def _clip_l14(model_dir, processor_dir, *, model_root, scorer, device, dtype, batch_size, shared):
    from .clip_scorers import load_hf_clip

    model = _dir(
        model_dir,
        model_paths.CLIP_L14,
        model_root=model_root,
        scorer=scorer,
        what="CLIP ViT-L/14 folder",
        hint=_CLIP_L_HINT,
    )
    proc = _dir(
        processor_dir,
        model_dir or model_paths.CLIP_L14,
        model_root=model_root,
        scorer=scorer,
        what="CLIP ViT-L/14 processor folder",
        hint=_CLIP_L_HINT,
    )
    return load_hf_clip(
        model, proc, device, dtype, batch_size=batch_size, scorer=scorer, hint=_CLIP_L_HINT, shared=shared
    )


def _clipscore(
    *,
    device,
    dtype,
    model_root,
    shared,
    name,
    model_dir=None,
    processor_dir=None,
    convention: str = "flow_grpo",
    resize: str = "paper",
    batch_size: int = 32,
):
    from .clip_scorers import ClipScore

    backbone = _clip_l14(
        model_dir,
        processor_dir,
        model_root=model_root,
        scorer="clipscore",
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        shared=shared,
    )
    return ClipScore(backbone, convention=convention, resize=resize, name=name)


def _aesthetic(
    *, device, dtype, model_root, shared, name, model_dir=None, processor_dir=None, head=None, batch_size: int = 32
):
    from .clip_scorers import AestheticScore, load_aesthetic_head

    head_path = model_paths.locate(
        head or model_paths.AESTHETIC_HEAD,
        model_root=model_root,
        scorer="aesthetic",
        what="LAION aesthetic head",
        hint="Copy sac+logos+ava1-l14-linearMSE.pth from christophschuhmann/improved-aesthetic-predictor there.",
    )
    backbone = _clip_l14(
        model_dir,
        processor_dir,
        model_root=model_root,
        scorer="aesthetic",
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        shared=shared,
    )
    return AestheticScore(backbone, load_aesthetic_head(head_path), name=name)


def _hpsv2(*, device, dtype, model_root, shared, name, checkpoint=None, arch: str = "ViT-H-14", batch_size: int = 32,
           amp: bool | None = None):
    from .hps import HPSv2

    ckpt = model_paths.locate(
        checkpoint or model_paths.HPS_CHECKPOINT,
        model_root=model_root,
        scorer="hpsv2",
        what="HPS v2.1 checkpoint",
        hint="Copy HPS_v2.1_compressed.pt from the Hugging Face repo xswu/HPSv2 there.",
    )
    return HPSv2(ckpt, device, dtype, arch=arch, batch_size=batch_size, name=name, amp=amp)


def _imagereward(
    *,
    device,
    dtype,
    model_root,
    shared,
    name,
    checkpoint=None,
    med_config=None,
    bert_tokenizer_dir=None,
    batch_size: int = 16,
):
    from .imagereward import PACKAGE_HINT, ImageRewardScore, imagereward_available

    if not imagereward_available():
        raise ImportError(f"reward 'imagereward' needs the ImageReward package: {PACKAGE_HINT}")
    hint = (
        "Copy ImageReward.pt and med_config.json from the Hugging Face repo THUDM/ImageReward, "
        "and the bert-base-uncased tokenizer files, there."
    )
    ckpt = model_paths.locate(
        checkpoint or model_paths.IMAGEREWARD_CHECKPOINT,
        model_root=model_root,
        scorer="imagereward",
        what="ImageReward checkpoint",
        hint=hint,
    )
    med = model_paths.locate(
        med_config or model_paths.IMAGEREWARD_MED_CONFIG,
        model_root=model_root,
        scorer="imagereward",
        what="BLIP med_config.json",
        hint=hint,
    )
    bert = _dir(
        bert_tokenizer_dir,
        model_paths.IMAGEREWARD_BERT_TOKENIZER,
        model_root=model_root,
        scorer="imagereward",
        what="bert-base-uncased tokenizer folder",
        hint=hint,
    )
    return ImageRewardScore(ckpt, med, bert, device, dtype, batch_size=batch_size, name=name)


def _remote(module: str, cls_name: str, family: str):
    def factory(*, device, dtype, model_root, shared, name, urls=None, **options):
        import importlib

        from .remote.env_urls import env_names, urls_from_env

        urls = urls or urls_from_env(family)  # the paper's environment variables as the fallback
        if not urls:
            raise ValueError(
                f"reward {name!r} is remote: give its server URL(s) as the 'urls' option or set "
                + " / ".join(f"${v}" for v in env_names(family))
            )
        cls = getattr(importlib.import_module(f"precise_fast.rewards.remote.{module}"), cls_name)
        # Scores come back on the CPU; MultiReward moves them to the images' device.
        return cls(urls, name=name, **options)

    return factory


register_reward("jpeg_compressibility", _jpeg(-1.0), description="minus JPEG size in kB / 500 at quality 95 (DDPO; the paper's scale)")
register_reward("jpeg_incompressibility", _jpeg(+1.0), description="JPEG size in kB at quality 95 (DDPO)")


def _toy_geneval(*, device, dtype, model_root, shared, name):
    from .shapes.reward import ToyGenEvalReward

    return ToyGenEvalReward(name)


register_reward("toy_geneval", _toy_geneval, description="GenEval partial credit on the shapes world (no weights)")
register_reward("pickscore", _pickscore, needs_weights=True, description="PickScore v1 / 26 (Flow-GRPO scale)")
register_reward(
    "clipscore", _clipscore, needs_weights=True, description="CLIP ViT-L/14 score (Flow-GRPO convention by default)"
)
register_reward("hpsv2", _hpsv2, needs_weights=True, description="HPS v2.1 cosine")
register_reward("aesthetic", _aesthetic, needs_weights=True, description="LAION aesthetic MLP on CLIP ViT-L/14")
register_reward("imagereward", _imagereward, needs_weights=True, description="ImageReward v1.0 (optional package)")
register_reward(
    "geneval", _remote("geneval", "GenEvalClient", "geneval"), remote=True, description="GenEval detector server (HTTP)"
)
register_reward(
    "geneval_paper",
    _remote("geneval_paper", "PaperGenEvalClient", "geneval"),
    remote=True,
    description="the paper's GenEval server (pickle protocol, replies decoded by a restricted unpickler)",
)
register_reward(
    "unifiedreward",
    _remote("unifiedreward", "UnifiedRewardClient", "unifiedreward"),
    remote=True,
    description="UnifiedReward 2.0 via chat completions (HTTP)",
)
