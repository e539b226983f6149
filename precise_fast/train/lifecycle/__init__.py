"""A run's life around the epochs (docs/RELIABILITY.md): one run per folder (``run_lock``), checks
before the model loads (``validation``), stop at safe points on TERM / INT (``signals``), runs that
train nothing (``health``) or diverge (``divergence``), crash injection for the tests (``faults``)."""
