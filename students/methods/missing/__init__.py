"""LNLN missing-modality training (``train.missing``)."""

from students.methods.missing.method import Missing

__all__ = ["Missing"]
