"""GRPO training on DeepSpeed ZeRO (shared/DESIGN.md "Training loop").

Entry points: ``python -m precise_fast.train --config configs/tiny_cpu.yaml`` (one process),
``DS_ACCELERATOR=cpu deepspeed --num_gpus 2 --module precise_fast.train --config ...``,
``precise-fast train ...``, and ``make train`` (the README's main job).

Top level: ``main`` (the command line), ``supervise`` (``make train``'s wrapper: TERM / INT stop the
ranks at a safe point), ``config`` (schema, YAML, overrides, the rules between keys), ``trainer``
(builds the run; each epoch is four calls: sample, credit, update, report). Below them, by
responsibility (docs/ARCHITECTURE.md; .importlinter checks the order): ``report`` (the report phase,
tracking, plots, the held-out evaluation, throughput), ``phases`` (sample, credit, update, the
re-scoring and the divergence checks), ``state`` (checkpoint, resume, rng streams), ``policy`` (how
the policy is built, process groups, DeepSpeed ZeRO, the non-finite guard, EMA, the KL reference),
``lifecycle`` (run lock, checks before the model loads, signals, health, fault injection), ``grpo``
(pure tensor math: advantages, the clipped loss with GRPO-Guard's ratio, transitions).
"""

from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
