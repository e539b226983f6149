"""Standalone evaluation of saved checkpoints (``precise-fast eval``); see :mod:`.cli`.

The eval loop itself is :mod:`precise_fast.train.report.evaluator`, shared with the trainer's
in-training eval; this package adds checkpoint discovery and the paper's argument forms
(:mod:`.jobs`), resumable per-item JSONL (:mod:`.records`), statistics (:mod:`.stats`)
and the reports (:mod:`.report`).
"""
