"""What a run shows: metrics and logs (``tracking``), PNGs (``plots``), the held-out evaluation
shared with ``precise-fast eval`` (``evaluator``, ``stats``), images/s and MFU (``throughput``)."""
