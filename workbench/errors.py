"""The one base class of every error a user can cause.

Each stage raises its own subclass (``ConfigError``, ``DataError``, ``CacheError``,
``TemplateError``, ``TrainError``, ``CheckpointError``, ``EvalError``, ...), whose message
says what is wrong, where (file, row, sample id or cache key) and what to do. Every entry
point (the ``workbench`` command, ``distill.py``) catches :class:`WorkbenchError` alone and
prints that message, with no traceback, exiting with :attr:`WorkbenchError.exit_code`.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A problem the user can fix; the message names it and the fix."""

    exit_code: int = 2
    """Process exit code of an entry point that stops on this error."""
