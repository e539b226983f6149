"""A run's life around the epochs (docs/RELIABILITY.md): one run per folder (``run_lock``), checks
before the model loads (``validation``), stop at safe points on TERM / INT (``signals``), runs that
train nothing (``health``), crash injection for the tests (``faults``). Below the phases and the
run state, which call into it; a diverged run is found by ``phases.divergence``."""
