"""Evaluation of student checkpoints: protocols, metrics on a split, robustness under
missing modalities, cost against the teacher, reports and plots.

The top library layer: it reads checkpoints (:mod:`students.checkpoint`) and predicts
through :mod:`students.inference`; the metrics themselves are pure and live in the core
(:mod:`workbench.metrics`). Import the modules themselves (``eval.evaluate``,
``eval.report``, ...).
"""
