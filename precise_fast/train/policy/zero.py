"""The policy under DeepSpeed: ZeRO 0-3, caller-owned gradient accumulation, guarded steps.

``configs/deepspeed/zero{0,1,2,3}.json`` hold the ZeRO settings; the trainer fills in what
the run config owns (micro-batch, clipping, precision). Choices and why:

- ``managed_gradient_accumulation: false``: after dropping zero-advantage samples the
  number of microbatches per optimizer step is not a constant, so the trainer calls
  ``backward`` per microbatch (already normalised, ``scale_wrt_gas=False``) and ``step``
  once per update, which is then the accumulation boundary.
- ``overlap_comm: false``: DeepSpeed allows it with caller-owned accumulation only on
  ZeRO-2, and LoRA gradients are a few MB, nothing to hide.
- The optimizer is ours (:class:`~precise_fast.train.policy.guard.GuardedAdamW`, a torch AdamW),
  not DeepSpeed's fused one: it makes the non-finite skip possible, equals single-process
  AdamW bit for bit, and avoids JIT-building DeepSpeed's CPU Adam on a fresh machine.
- ZeRO-3 ``stage3_param_persistence_threshold: 0``: no parameter stays resident, so every
  weight is read through its partition (``ds_tensor``) and a gather; the partitioned EMA
  swaps weights in by writing partitions, which a resident (persistent) parameter would ignore.
- ZeRO-3 forwards must go through the engine (measured: calling the module directly
  accumulated wrong gradients across microbatches), so training calls the engine; rollouts
  run the module inside ``GatheredParameters`` (one gather per rollout, not per step).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ..config import Config, ConfigError
from .distributed import all_reduce_max_
from .guard import GuardedAdamW, NonFiniteGuard

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "deepspeed"


def deepspeed_config(cfg: Config) -> dict:
    """The DeepSpeed config dict of a run: the ZeRO file plus the run's own settings."""
    t = cfg.train
    if cfg.model.dtype == "float16":
        # DeepSpeed's fp16 lowers its dynamic loss scale when it sees overflowing gradients; the
        # non-finite guard (guard.py) zeroes those and skips the update itself, so the scale would
        # never come down and no update would ever apply.
        raise ConfigError("model.dtype: float16 does not train here (DeepSpeed's dynamic loss scaling and the "
                          "non-finite guard conflict); use bfloat16 with model.precision=pure, or float32 "
                          "with the recipes' autocast_bf16")
    path = Path(t.deepspeed_config) if t.deepspeed_config else CONFIG_DIR / f"zero{t.zero_stage}.json"
    if not path.is_file():
        raise ConfigError(f"train.deepspeed_config: {path} does not exist")
    ds = json.loads(path.read_text())
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage != t.zero_stage:
        raise ConfigError(f"train.zero_stage is {t.zero_stage} but {path} sets stage {stage}")
    ds.update(
        train_micro_batch_size_per_gpu=t.batch_size,
        gradient_accumulation_steps=1,
        gradient_clipping=t.max_grad_norm,
        managed_gradient_accumulation=False,
        zero_allow_untested_optimizer=True,
    )
    ds["bf16"] = {"enabled": cfg.model.dtype == "bfloat16"}
    ds["fp16"] = {"enabled": False}  # float16 is refused above
    # DeepSpeed's throughput timer starts in a forward pre-hook on the transformer itself and,
    # from its second step on, synchronizes the device there: inside a rollout's CUDA-graph
    # capture that is an error, and in eager rollouts it stalls the reward stream. The trainer
    # reports its own throughput (train/report/throughput.py).
    ds["timers"] = {"throughput": {"enabled": False}}
    return ds


class PolicyEngine:
    """The trainable transformer wrapped by ``deepspeed.initialize``."""

    def __init__(self, transformer: torch.nn.Module, params: list[torch.nn.Parameter], cfg: Config, device: torch.device):
        import deepspeed

        t = cfg.train
        self.cfg = cfg
        self.zero_stage = t.zero_stage
        self.optimizer = GuardedAdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.adam_eps, weight_decay=t.weight_decay)
        self.engine, _, _, _ = deepspeed.initialize(model=transformer, optimizer=self.optimizer, config=deepspeed_config(cfg))
        self.module = self.engine.module
        self.params = params
        self.guard = NonFiniteGuard(params, device)
        self.applied_steps = 0  # optimizer steps that changed the weights

    def __call__(self, **kwargs):
        """The training forward (through the engine: required by ZeRO-3)."""
        return self.engine(**kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> tuple[bool, float | None]:
        """End an update: skip it (weights untouched) if any rank saw a non-finite value."""
        skip = self.guard.decide(all_reduce_max_)
        self.optimizer.skip = skip
        try:
            self.engine.step()
        finally:
            self.optimizer.skip = False
        if not skip:
            self.applied_steps += 1
        norm = self.engine.get_global_grad_norm()
        return not skip, (float(norm) if norm is not None else None)

    def gathered(self):
        """Full parameters for inference (rollouts, eval): a ZeRO-3 gather, else nothing."""
        if self.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.module.parameters()))
        return contextlib.nullcontext()

    def save(self, folder: Path, *, exclude_frozen: bool) -> None:
        self.engine.save_checkpoint(str(folder), tag="state", save_latest=False, exclude_frozen_parameters=exclude_frozen)

    def load(self, folder: Path, *, exclude_frozen: bool) -> None:
        path, _ = self.engine.load_checkpoint(
            str(folder), tag="state", load_module_strict=not exclude_frozen,
            load_optimizer_states=True, load_lr_scheduler_states=True,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {folder}")

    def state_dict(self) -> dict:
        return {"applied_steps": self.applied_steps, "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.applied_steps = state["applied_steps"]
        self.guard.load_state_dict(state["guard"])
