"""The run configuration: a typed schema, a strict YAML loader and command-line overrides.

A run config is a YAML file whose top-level sections mirror the dataclasses below. Loading
is strict: an unknown key or a value of the wrong type is a :class:`ConfigError` naming the
dotted key (``train.lr: expected float, got str 'fast'``), because a silently ignored typo
in an RL recipe costs a whole run. A file may start from another with ``base: other.yaml``
(relative to the file); sections merge key by key. Overrides use the same dotted keys,
``--set train.lr=1e-4``, with the value parsed as YAML (``--set sampler.kind=cps``,
``--set algorithm.g2rpo_granularities=[1,2]``).

Defaults are the Precise paper's FLUX.2 Klein recipe (shared/SAMPLERS.md) where it fixes a
value; ``configs/`` holds the recipes and the tiny CPU run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..kinds import (  # noqa: F401 - SAMPLER_KINDS is read by eval and the launcher through this module
    DEFAULT_ETA, DEFAULT_KIND, KINDS as SAMPLER_KINDS, MAX_ETA, ODE, STOCHASTIC_KINDS, SamplerKind, StochasticKind,
)


_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/run"  # relative paths are relative to the working directory
    seed: int = 0
    epochs: int = 100
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # torch intra-op threads per rank; 0 leaves torch's default
    # The longest wait on another rank (rendezvous, collective, barrier) before this rank
    # fails: a node that went silent ends the job after this long (train/policy/distributed.py).
    # PyTorch's default; it must exceed the longest step one rank takes alone (rank 0's
    # checkpoint hashing, a 4B model's load).
    collective_timeout_s: float = 1800.0


@dataclass
class ModelConfig:
    path: str = "flux2-klein-base-4b"  # a local diffusers folder, a pinned id, or "tiny"
    tiny_seed: int = 0  # seed of the offline tiny model when path == "tiny"
    model_root: Union[str, None] = None
    # autocast_bf16 (the paper): float32 master weights, transformer forwards under bf16 autocast,
    # float32 VAE, bf16 text encoder, float32 reward models (HPS under fp16 autocast on CUDA).
    # pure: every component and the reward models in model.dtype (pure bf16 with dtype bfloat16).
    precision: Literal["autocast_bf16", "pure"] = "autocast_bf16"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # the weights' dtype
    allow_tf32: bool = True  # TF32 float32 matmuls on CUDA (the paper's allow_tf32)
    attention_backend: str = "auto"
    max_text_len: int = 128
    text_layers: list[int] = field(default_factory=lambda: [9, 18, 27])
    finetune: Literal["lora", "full"] = "lora"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_init: str = "gaussian"
    # paper: the Precise paper's target list (no single-stream attn.to_out); paper_plus_single_out adds it.
    lora_targets: Literal["paper", "paper_plus_single_out"] = "paper"
    gradient_checkpointing: bool = False


@dataclass
class SamplerConfig:
    kind: StochasticKind = DEFAULT_KIND
    eta: Union[float, None] = None  # None: the kind's default (the kind table's DEFAULT_ETA)
    num_steps: int = 20
    height: int = 512
    width: int = 512
    batch_size: int = 2  # images per rank per sampling batch (G2RPO: prompts per rank per batch)
    num_batches_per_epoch: int = 16
    images_per_prompt: int = 8  # the GRPO group size k
    same_initial_latent: bool = False
    latent_dtype: Literal["float32", "bfloat16"] = "float32"
    step_backend: str = "auto"
    cuda_graph: Union[bool, None] = None  # None: on CUDA with a fused op backend


@dataclass
class AlgorithmConfig:
    name: Literal["grpo", "sde_window", "g2rpo"] = "grpo"
    # grpo: train the first int(N * fraction) steps (recipe: int(20 * 0.99) = 19).
    timestep_fraction: float = 0.99
    # sde_window (Flow-GRPO-Fast / MixGRPO, arXiv 2507.21802): window_size SDE steps whose
    # start is drawn per epoch from [window_start_min, window_start_max]; ODE elsewhere.
    window_size: int = 4
    window_start_min: int = 0
    window_start_max: int = 8
    # g2rpo (arXiv 2510.01982; defaults = its authors' scripts/finetune/finetune_g2rpo_hps.sh):
    # branching steps, how many of them per batch (0: all), strides, the completion path
    # (rollout/plan.py granular_path) and the z-score (paper: unbiased std + 1e-8; grpo: advantage.eps).
    g2rpo_steps: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6, 7])
    g2rpo_steps_per_batch: int = 0
    g2rpo_granularities: list[int] = field(default_factory=lambda: [1, 2])
    g2rpo_completion: Literal["paper", "exact_end", "stride"] = "paper"
    g2rpo_zscore: Literal["paper", "grpo"] = "paper"


@dataclass
class RewardConfig:
    # A build_reward spec: a name ("pickscore"), a preset ("mix") or {component: weight | {weight, options}}.
    spec: Union[str, dict] = "mix"
    normalize: bool = True  # standardise each component over the global batch (recipe: on)
    overlap: bool = True  # score on a worker thread while the next batch samples
    max_pending: int = 2  # bounded queue of batches waiting for scoring
    model_root: Union[str, None] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Remote rewards (geneval, unifiedreward) retry each request wave for up to ~265 s with
    # the client defaults (RetryPolicy: 4 attempts x (60 s read + 5 s connect) + backoff
    # 0.5 + 1 + 2 s, x1.1 jitter), then give the failed samples the sentinel (invalid).
    # The run stops when the invalid fraction over the last abort_window epochs reaches
    # abort_invalid_fraction (train/lifecycle/health.py); abort_window 0 never stops (the paper's behaviour).
    abort_invalid_fraction: float = 0.5
    abort_window: int = 3


@dataclass
class AdvantageConfig:
    eps: float = 1e-4  # (r - mean) / (std + eps)
    clip: float = 5.0
    drop_zero: bool = True  # drop samples whose advantage is 0 at every trained step
    # GRPO groups: "prompt" pools every sample of the same prompt in the epoch (the paper's
    # per-prompt stat tracker); "draw" keeps each drawn group of images_per_prompt apart.
    group_by: Literal["prompt", "draw"] = "prompt"
    global_std: bool = False  # per-group mean, std over the whole valid batch (the paper's sample.global_std)


@dataclass
class TrainConfig:
    lr: float = 8e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    batch_size: int = 2  # samples per rank per minibatch
    gradient_accumulation_steps: int = 8  # minibatches per optimizer step (x their timesteps)
    num_inner_epochs: int = 1
    clip_range: float = 4e-6
    ratio: Literal["plain", "guard"] = "guard"  # guard: GRPO-Guard ratio normalisation ("rationorm")
    beta: float = 0.0  # KL weight towards the frozen base
    # Trained timesteps folded into one forward/backward; 0 = auto (all of them on CPU; on
    # CUDA as many as fit, probed once); 1 = the per-timestep loop.
    timesteps_per_forward: int = 0
    shuffle_timesteps: bool = False  # recipe: the first steps in order
    zero_stage: int = 2
    deepspeed_config: Union[str, None] = None  # default: configs/deepspeed/zero{stage}.json
    ema: bool = True
    ema_decay: float = 0.9
    ema_interval: int = 8  # optimizer steps between EMA updates
    # paper: update after every minibatch when (s+1) % interval == 0, decay min((1+s)/(10+s), ema_decay);
    # fixed: after every applied optimizer step when s % interval == 0, constant ema_decay (ema.py).
    ema_schedule: Literal["paper", "fixed"] = "paper"
    # paper: an epoch's kept samples (padded with zero-advantage ones) make exactly
    # sampler.num_batches_per_epoch minibatches, gradient_accumulation_steps per optimizer step;
    # fixed_size: minibatches of train.batch_size rows (phases/update.py).
    update_schedule: Literal["paper", "fixed_size"] = "paper"
    lora_path: Union[str, None] = None  # start from this LoRA (diffusers file or peft folder) instead of a fresh one


@dataclass
class PromptsConfig:
    train: str = "data/pickscore_train.txt"  # .txt (one per line) or .jsonl with a "prompt" field
    test: str = "data/pickscore_test.txt"


@dataclass
class EvalTarget:
    """One evaluation target (the paper's ``*_eval_targets`` entries, config/base.py of
    Tencent-Hunyuan/Precise): its own prompt set, rewards, sampler and batch size. ``None``
    fields inherit the training run's value, so by default an eval rollout uses the
    training sampler (kind, noise level), as the paper's does."""

    name: str = "eval"
    prompts: Union[str, None] = None  # None: prompts.test
    reward: Union[str, dict, None] = None  # a reward spec as reward.spec; None: the training reward
    kind: Union[SamplerKind, None] = None  # None: sampler.kind
    eta: Union[float, None] = None  # None: the training noise level (sampler.eta)
    num_steps: Union[int, None] = None  # None: sampler.num_steps
    batch_size: int = 8  # images per rank per eval batch (the paper's test_batch_size)
    num_prompts: int = 0  # 0: the whole prompt set
    # Images per prompt, each with its own seed. The paper's eval draws 1; GenEval's own
    # protocol (djghosh13/geneval, generation/diffusers_generate.py --n_samples) draws 4.
    images_per_prompt: int = 1


@dataclass
class EvalConfig:
    every: int = 50  # epochs; 0 disables
    num_prompts: int = 64
    batch_size: int = 8
    images_per_prompt: int = 1  # as EvalTarget.images_per_prompt
    kind: SamplerKind = ODE
    use_ema: bool = True
    at_start: bool = False
    # Seed of the eval items' noise (None: run.seed). Fix it to compare runs that differ in
    # run.seed on the same eval images (the learning test, the sampler study).
    seed: Union[int, None] = None
    targets: list[EvalTarget] = field(default_factory=list)  # empty: one target from the fields above


@dataclass
class CheckpointConfig:
    every: int = 10  # epochs; the last epoch is always saved
    keep_last: int = 3
    export_lora: bool = True  # also write the EMA LoRA as a diffusers LoRA file


@dataclass
class LogConfig:
    wandb: bool = False  # TensorBoard is always written; wandb in addition when asked
    wandb_project: str = "precise_fast"
    image_every: int = 10  # epochs between PNG sample grids (the reward curve is redrawn with them)
    num_images: int = 16
    progress: bool = True


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Union[str, None] = None  # the YAML file this came from (set by the loader)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


# ----------------------------------------------------------------------------- typing


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str):
    """``value`` checked against ``tp``; ints are accepted for floats. Raises naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return [_build(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 (PyYAML) reads `1e-4` (no dot) as a string; a number was meant.
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    else:  # pragma: no cover - a schema type this loader does not know is a bug here
        raise TypeError(f"{key}: unsupported schema type {tp!r}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (valid keys{' of ' + prefix if prefix else ''}: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


# ----------------------------------------------------------------------------- loading


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "spec":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{getattr(err, 'problem', None) or err}"


def _parse_yaml_text(path: Path):
    """The YAML document in ``path``; malformed or non-UTF-8 text is a one-line ConfigError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML at {_yaml_problem(err)}") from None


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"base: cycle through {path}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = _parse_yaml_text(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    return _merge(_read_yaml(path.parent / base, seen + (path,)), data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must be section.key (e.g. train.lr)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is malformed YAML ({_yaml_problem(err)})") from None
    return parts, value


def _apply(data: dict, parts: list[str], value) -> None:
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {p} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Load and validate a run config (``None``: the defaults), then apply ``overrides``."""
    data = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides:
        parts, value = parse_override(text)
        _apply(data, parts, value)
    cfg = _build(Config, data, "")
    cfg.source = str(Path(path).resolve()) if path is not None else None
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    """A config from a plain mapping (e.g. the snapshot stored in a checkpoint)."""
    cfg = _build(Config, dict(data), "")
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- checks


_TARGET_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_target_name(name: str, key: str) -> None:
    """The one rule for eval target names, which become folder and metric names: no path
    separator, and not ``.`` or ``..`` (either would put a target's files outside its folder)."""
    if not isinstance(name, str) or not _TARGET_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{key}: letters, digits, '_', '.', '-' only, not '.' or '..' (it names metrics and files), "
                          f"got {name!r}")


def _positive(value, key: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_finite(value, key: str) -> None:
    """Every number in the config, reward specs included, is finite: NaN slips past every
    range check (``nan < 0`` and ``nan == 0`` are both False) and fails later in the run."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_finite(v, f"{key}[{i}]")


def _resolve_noise_levels(cfg: Config) -> None:
    """Fill the noise levels a config leaves to the kind table (recipes do not restate the
    default eta): ``sampler.eta`` null is the kind's ``DEFAULT_ETA``, an eval target's null eta
    on the training kind is the training noise level. The run then prints, saves and compares on
    resume the value it samples with; a target of another kind keeps null (its engine takes
    that kind's default)."""
    s = cfg.sampler
    if s.eta is None:
        s.eta = DEFAULT_ETA[s.kind]
    for target in cfg.eval.targets:
        if target.eta is None and (target.kind or s.kind) == s.kind:
            target.eta = s.eta


def validate(cfg: Config) -> None:
    """Cross-field checks (types are already checked); errors name the key."""
    check_finite(cfg.to_dict(), "")
    s, a, t = cfg.sampler, cfg.algorithm, cfg.train
    for key, value in (
        ("run.epochs", cfg.run.epochs),
        ("sampler.num_steps", s.num_steps),
        ("sampler.batch_size", s.batch_size),
        ("sampler.num_batches_per_epoch", s.num_batches_per_epoch),
        ("sampler.images_per_prompt", s.images_per_prompt),
        ("train.batch_size", t.batch_size),
        ("train.gradient_accumulation_steps", t.gradient_accumulation_steps),
        ("train.num_inner_epochs", t.num_inner_epochs),
        ("train.lr", t.lr),
        ("train.clip_range", t.clip_range),
        ("train.ema_interval", t.ema_interval),
        ("model.lora_rank", cfg.model.lora_rank),
        ("reward.max_pending", cfg.reward.max_pending),
        ("checkpoint.keep_last", cfg.checkpoint.keep_last),
        ("eval.batch_size", cfg.eval.batch_size),
        ("eval.images_per_prompt", cfg.eval.images_per_prompt),
        ("log.num_images", cfg.log.num_images),
        ("advantage.clip", cfg.advantage.clip),
        ("run.collective_timeout_s", cfg.run.collective_timeout_s),
    ):
        _positive(value, key)
    for key, value in (
        ("run.num_threads", cfg.run.num_threads),
        ("train.timesteps_per_forward", t.timesteps_per_forward),
        ("train.beta", t.beta),
        ("train.weight_decay", t.weight_decay),
        ("train.max_grad_norm", t.max_grad_norm),
        ("advantage.eps", cfg.advantage.eps),
        ("eval.every", cfg.eval.every),
        ("eval.num_prompts", cfg.eval.num_prompts),
        ("checkpoint.every", cfg.checkpoint.every),
        ("log.image_every", cfg.log.image_every),
    ):
        _positive(value, key, allow_zero=True)
    if s.eta is not None and s.eta < 0:
        raise ConfigError(f"sampler.eta: must be >= 0, got {s.eta}")
    if s.eta is not None and s.eta > MAX_ETA[s.kind]:
        raise ConfigError(f"sampler.eta: {s.kind} needs 0 <= eta <= {MAX_ETA[s.kind]:g}, got {s.eta}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas: expected two values in [0, 1), got {t.betas}")
    _resolve_noise_levels(cfg)
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: must lie in [0, 1), got {t.ema_decay}")
    if cfg.model.precision == "autocast_bf16" and cfg.model.dtype != "float32":
        raise ConfigError(f"model.dtype: autocast_bf16 keeps float32 master weights, got {cfg.model.dtype}; "
                          "set model.dtype=float32, or model.precision=pure")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage: must be 0, 1, 2 or 3, got {t.zero_stage}")
    if cfg.model.finetune == "full" and t.beta > 0 and t.zero_stage == 3:
        raise ConfigError("train.beta: a KL term with full fine-tuning under ZeRO-3 needs a second partitioned model; not supported")
    if not 0 < a.timestep_fraction <= 1:
        raise ConfigError(f"algorithm.timestep_fraction: must lie in (0, 1], got {a.timestep_fraction}")
    n = s.num_steps
    if a.name == "grpo" and int(n * a.timestep_fraction) < 1:
        raise ConfigError(f"algorithm.timestep_fraction: int({n} * {a.timestep_fraction}) trains no step")
    if a.name == "sde_window":
        _positive(a.window_size, "algorithm.window_size")
        if not 0 <= a.window_start_min <= a.window_start_max or a.window_start_max + a.window_size > n:
            raise ConfigError(
                f"algorithm.window_start_max: windows [{a.window_start_min}..{a.window_start_max}] + size "
                f"{a.window_size} must fit in {n} steps"
            )
    if t.update_schedule == "paper" and a.name != "g2rpo" and s.num_batches_per_epoch % t.gradient_accumulation_steps:
        raise ConfigError(
            f"train.gradient_accumulation_steps: the paper's update schedule needs it to divide sampler.num_batches_per_epoch "
            f"({t.gradient_accumulation_steps} does not divide {s.num_batches_per_epoch}); or set train.update_schedule=fixed_size"
        )
    if a.name == "g2rpo":
        if not a.g2rpo_steps or any(not 0 <= k < n for k in a.g2rpo_steps) or len(set(a.g2rpo_steps)) != len(a.g2rpo_steps):
            raise ConfigError(f"algorithm.g2rpo_steps: need distinct step indices in [0, {n}), got {a.g2rpo_steps}")
        if not a.g2rpo_granularities or any(g < 1 for g in a.g2rpo_granularities):
            raise ConfigError(f"algorithm.g2rpo_granularities: need integers >= 1, got {a.g2rpo_granularities}")
        if not 0 <= a.g2rpo_steps_per_batch <= len(a.g2rpo_steps):
            raise ConfigError(f"algorithm.g2rpo_steps_per_batch: must lie in [0, {len(a.g2rpo_steps)}]")
    names = [t.name for t in cfg.eval.targets]
    for i, t in enumerate(cfg.eval.targets):
        key = f"eval.targets[{i}]"
        check_target_name(t.name, f"{key}.name")
        if names.count(t.name) > 1:
            raise ConfigError(f"{key}.name: {t.name!r} names two targets")
        _positive(t.batch_size, f"{key}.batch_size")
        _positive(t.num_prompts, f"{key}.num_prompts", allow_zero=True)
        _positive(t.images_per_prompt, f"{key}.images_per_prompt")
        if t.num_steps is not None:
            _positive(t.num_steps, f"{key}.num_steps")
        if t.eta is not None and t.eta < 0:
            raise ConfigError(f"{key}.eta: must be >= 0, got {t.eta}")
    if not 0 < cfg.reward.abort_invalid_fraction <= 1:
        raise ConfigError(f"reward.abort_invalid_fraction: must lie in (0, 1], got {cfg.reward.abort_invalid_fraction}")
    _positive(cfg.reward.abort_window, "reward.abort_window", allow_zero=True)
    if not isinstance(cfg.reward.spec, (str, dict)) or not cfg.reward.spec:
        raise ConfigError(f"reward.spec: expected a reward name or mapping, got {cfg.reward.spec!r}")


def check_world(cfg: Config, world_size: int) -> None:
    """Checks that need the world size: the groups of k images must tile the global batch."""
    s = cfg.sampler
    if cfg.algorithm.name != "g2rpo":
        total = world_size * s.batch_size * s.num_batches_per_epoch
        if total % s.images_per_prompt:
            raise ConfigError(
                f"sampler.images_per_prompt: {s.images_per_prompt} must divide the global images per epoch "
                f"(world {world_size} x batch_size {s.batch_size} x num_batches_per_epoch {s.num_batches_per_epoch} = {total})"
            )


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# Which update schedule a config asks for: rules of the config that the credit and update phases share.
def paper_schedule(cfg) -> bool:
    """Whether this run trains on the paper's fixed count of minibatches (G2RPO has its own steps)."""
    return cfg.train.update_schedule == "paper" and cfg.algorithm.name != "g2rpo"


def g2rpo_step_per_column(cfg) -> bool:
    """G2RPO as its authors train (github.com/bcmi/Granular-GRPO train_one_step): one optimizer
    step per branching step, over every member, its loss their mean."""
    return cfg.train.update_schedule == "paper" and cfg.algorithm.name == "g2rpo"
