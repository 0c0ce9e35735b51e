"""Modality availability and seeded missing-modality masks.

Availability says which modalities a sample carries at all. The LNLN protocol
(Zhang et al., "Towards robust multimodal sentiment analysis with incomplete data")
additionally drops a random fraction of each available modality: text tokens become
[UNK], audio/visual frames (or whole utterance vectors) become zeros, and the model is
told through a mask. The mask generator here is shared by training (random rate per
sample) and evaluation (one rate for all), and is seeded by (seed, epoch, sample id)
alone, so masks do not depend on data-loader workers, batch order or process count.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from workbench.config import MODALITIES
from workbench.data.schema import Sample


def availability(sample: Sample, modalities: list[str] | tuple[str, ...] = MODALITIES) -> dict[str, bool]:
    """Which of ``modalities`` the sample carries."""
    return {m: sample.has(m) for m in modalities}


def availability_counts(samples: list[Sample], modalities: list[str]) -> dict[str, int]:
    """How many samples carry each modality."""
    counts: Counter[str] = Counter()
    for s in samples:
        for m, ok in availability(s, modalities).items():
            counts[m] += int(ok)
    return {m: counts[m] for m in modalities}


def mask_rng(seed: int, epoch: int, sample_id: str) -> np.random.Generator:
    """A generator determined by (seed, epoch, sample id) only."""
    digest = hashlib.blake2b(f"{seed}\x00{epoch}\x00{sample_id}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest, "little")))


def keep_mask(rng: np.random.Generator, length: int, rate: float) -> np.ndarray:
    """Boolean mask over ``length`` positions; each is dropped with probability ``rate``."""
    if length <= 0:
        return np.zeros(0, dtype=bool)
    return rng.random(length) >= rate


def draw_rates(
    rng: np.random.Generator, modalities: list[str], complete_fraction: float = 0.5
) -> dict[str, float]:
    """LNLN training rates: with prob. ``complete_fraction`` all 0, else each ~ U(0, 1)."""
    if rng.random() < complete_fraction:
        return {m: 0.0 for m in modalities}
    return {m: float(rng.random()) for m in modalities}
