"""MS-Mix: sentiment-aware mixup of the encoded modalities (``train.msmix``)."""

from students.methods.msmix.method import MsMix

__all__ = ["MsMix"]
