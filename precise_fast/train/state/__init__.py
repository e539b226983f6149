"""Run state that makes a resume exact: atomic checkpoints (``checkpoint``), what a start or resume
does with its run folder (``resume``), every random stream a rank has (``rng``)."""
