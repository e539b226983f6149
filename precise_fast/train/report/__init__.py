"""What a run shows: the report phase of each epoch (``epoch``: metrics, the epoch line, the run's
summary), metrics and logs (``tracking``), PNGs (``plots``), progress bars (``progress``), the
held-out evaluation shared with ``precise-fast eval`` (``evaluator``, ``stats``), images/s and MFU
(``throughput``)."""
