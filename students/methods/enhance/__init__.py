"""Cross-sample enhancement of missing modalities, after HME (``student.enhance``)."""

from students.methods.enhance.method import Enhance

__all__ = ["Enhance"]
