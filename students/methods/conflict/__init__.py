"""Conflict-aware gradient penalty and statistical loss (``train.conflict``)."""

from students.methods.conflict.method import Conflict

__all__ = ["Conflict"]
