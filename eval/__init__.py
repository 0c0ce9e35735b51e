"""Evaluation of student checkpoints: protocols, metrics on a split, robustness under
missing modalities, cost against the teacher, reports and plots.

The top library layer: it reads checkpoints (:mod:`students.checkpoint`, which also finds
them and checks their files) and predicts through :mod:`students.inference`; the metrics
themselves are pure and live in the core (:mod:`workbench.metrics`). Import the modules
themselves: ``eval.options`` (what to evaluate, :class:`~eval.options.EvalError`),
``eval.data`` (the data checks), ``eval.evaluate`` (one checkpoint), ``eval.leaderboard``
(several), ``eval.protocol``, ``eval.cost``, ``eval.report``, ``eval.plots``,
``eval.predict``.
"""
