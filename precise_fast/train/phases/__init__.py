"""One epoch's phases, in run order: sample, credit, update, report (``Trainer.run_epoch``).

``sample`` (rollouts with rewards overlapped; ``prompt_groups`` and ``trajectories`` feed it),
``credit`` (gather, normalise, advantages, drop, balance), ``update`` (minibatches, accumulation
windows, guarded steps; ``rescore`` re-scores stored transitions under the current policy),
``report`` (the epoch's metrics, eval, plots, checkpoint). ``overlap_probe`` measures what the
overlap in ``sample`` saves.
"""
