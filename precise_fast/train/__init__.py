"""GRPO training on DeepSpeed ZeRO (shared/DESIGN.md "Training loop").

Entry points: ``python -m precise_fast.train --config configs/tiny_cpu.yaml`` (one process),
``DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module precise_fast.train --config ...``,
``precise-fast train ...``, and ``make train`` (the README's main job).

Modules, one job each: ``config`` (schema, YAML, overrides), ``prompt_groups`` (prompt groups
per rank), ``rollouts`` / ``sampling_phase`` (trajectories with overlapped rewards), ``credit`` /
``advantages`` (normalisation, GRPO and G2RPO advantages), ``objective`` / ``loss``
(re-scoring and the clipped loss), ``update_phase`` (accumulation windows),
``policy_engine`` / ``guard`` (DeepSpeed and the non-finite guard), ``ema``, ``checkpoint`` / ``rng`` (exact
resume), ``evaluate``, ``tracking`` / ``plots`` (logs and PNGs), ``trainer`` (the loop).
Reliability (docs/RELIABILITY.md): ``resume`` (start or resume, what a resume may change),
``validation`` (reward checks before the model loads), ``health`` (runs that train nothing),
``signals`` / ``supervise`` (TERM / INT stop at safe points; ``make train``'s wrapper).
"""

from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
