"""MIDG: a mixture of invariant experts and a cross-modal adapter (``student.midg``)."""

from students.methods.midg.method import Midg

__all__ = ["Midg"]
