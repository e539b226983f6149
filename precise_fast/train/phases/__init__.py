"""One epoch's phases, in run order (``Trainer.run_epoch``): sample, credit, update; the fourth,
report, is ``train.report.epoch``.

``sample`` (rollouts with rewards overlapped; ``prompt_groups`` and ``trajectories`` feed it),
``credit`` (gather, normalise, advantages, drop, balance), ``update`` (minibatches, accumulation
windows, guarded steps; ``rescore`` re-scores stored transitions under the current policy),
``divergence`` (the checks after sampling and after the update that stop a diverged run).
Each phase takes its own settings (``SampleSettings`` ...), built once from the config.
``overlap_probe`` measures what the overlap in ``sample`` saves.
"""
