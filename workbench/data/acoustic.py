"""Acoustic features (openSMILE eGeMAPSv02) and the plain-word acoustic cues built on them.

:func:`egemaps` describes a 16 kHz mono signal by the 88 eGeMAPS functionals (one utterance
vector) and the 25 low-level descriptors at 100 Hz (a sequence). :func:`acoustic_cues`
turns the functionals of a whole dataset into a few words per clip -- pitch level and
variability, loudness, speaking rate, pauses -- each relative to the dataset's own
distribution (its tertiles), so a text-only teacher hears something of the voice:

    pitch: high and varied
    loudness: soft
    speaking rate: fast
    pauses: long

The wording and the thresholds are versioned (:data:`CUES_VERSION`); the version is
stored with the cues and enters the cache key of every request that shows them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from workbench.data.media import SAMPLE_RATE, ClipError

CUES_VERSION = 1
CUE_FIELDS = ("pitch", "loudness", "speaking_rate", "pauses")
"""The ``meta`` keys ingestion writes; ``cache.cue_fields=[acoustic]`` shows them all."""
CUES_VERSION_KEY = "acoustic_cues_version"
FUNCTIONALS_KEY = "egemaps"
"""``meta`` key holding the 88 functionals (a list in :func:`functional_names` order)."""

# eGeMAPSv02 functionals each cue reads.
PITCH = "F0semitoneFrom27.5Hz_sma3nz_amean"
PITCH_VAR = "F0semitoneFrom27.5Hz_sma3nz_stddevNorm"
LOUDNESS = "loudness_sma3_amean"
RATE = "VoicedSegmentsPerSec"
PAUSE = "MeanUnvoicedSegmentLength"

WORDS = {
    "pitch": ("low", "medium", "high"),
    "pitch_var": ("flat", "somewhat varied", "varied"),
    "loudness": ("soft", "moderate", "loud"),
    "speaking_rate": ("slow", "moderate", "fast"),
    "pauses": ("short", "medium", "long"),
}


@lru_cache(maxsize=1)
def _smiles():
    import opensmile

    fs = opensmile.FeatureSet.eGeMAPSv02
    return (opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.Functionals),
            opensmile.Smile(feature_set=fs, feature_level=opensmile.FeatureLevel.LowLevelDescriptors))


def functional_names() -> list[str]:
    """The 88 eGeMAPSv02 functional names, in vector order."""
    return list(_smiles()[0].feature_names)


def lld_names() -> list[str]:
    """The 25 eGeMAPSv02 low-level descriptor names, in column order."""
    return list(_smiles()[1].feature_names)


def egemaps(signal: np.ndarray, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """``(functionals (88,), lld (T, 25))`` of a mono float signal; float32.

    One openSMILE run feeds both levels (the eGeMAPSv02 config computes the LLDs once and
    the functionals from them) through openSMILE's two-sink output config, half the cost
    of ``Smile.process_signal`` once per level and the same numbers (tested)."""
    import os

    from opensmile.core.config import config as smile_config
    from opensmile.core.lib import OpenSMILE

    func = _smiles()[0]
    root = func.default_config_root
    options = {**func._options(),
               "source": os.path.join(root, smile_config.EXTERNAL_INPUT_CONFIG),
               "sink": os.path.join(root, smile_config.EXTERNAL_OUTPUT_MULTI_CONFIG),
               "sinkLevelLLD": "lld", "sinkLevelFunc": "func", "sampleRate": rate, "nBits": 16}
    pcm = (np.asarray(signal, dtype=np.float32) * 32768).astype(np.int16)
    lld_rows: list[np.ndarray] = []
    func_rows: list[np.ndarray] = []
    smile = OpenSMILE()
    smile.initialize(config_file=func.config_path, options=options, loglevel=func.loglevel,
                     log_file=None, debug=False)
    try:
        smile.external_sink_set_callback_ex("extsinklld", lambda d, _m: lld_rows.append(d.copy()))
        smile.external_sink_set_callback_ex("extsinkfunc", lambda d, _m: func_rows.append(d.copy()))
        smile.external_audio_source_write_data(smile_config.EXTERNAL_SOURCE_COMPONENT, pcm.tobytes())
        smile.external_audio_source_set_eoi(smile_config.EXTERNAL_SOURCE_COMPONENT)
        smile.run()
    finally:
        smile.free()
    if not func_rows or not lld_rows:
        raise ClipError("eGeMAPS gave no frames (audio too short)")
    f = np.vstack(func_rows).astype(np.float32).reshape(-1)
    seq = np.vstack(lld_rows).astype(np.float32)
    if not (np.isfinite(f).all() and np.isfinite(seq).all()):
        raise ClipError("eGeMAPS gave non-finite values (silent or broken audio?)")
    if seq.shape[0] == 0:
        raise ClipError("eGeMAPS gave no frames (audio too short)")
    return f, seq


def _level(x: float, lo: float, hi: float, words: tuple[str, str, str]) -> str:
    return words[0] if x < lo else words[2] if x > hi else words[1]


def cue_thresholds(functionals: np.ndarray, names: list[str]) -> dict[str, tuple[float, float]]:
    """Tertiles of each cue's functional over a set of clips (rows of ``functionals``)."""
    col = {n: i for i, n in enumerate(names)}
    out = {}
    for key, name in (("pitch", PITCH), ("pitch_var", PITCH_VAR), ("loudness", LOUDNESS),
                      ("speaking_rate", RATE), ("pauses", PAUSE)):
        v = functionals[:, col[name]]
        lo, hi = np.quantile(v, [1 / 3, 2 / 3])
        out[key] = (float(lo), float(hi))
    return out


def acoustic_cues(functionals: np.ndarray, names: list[str],
                  thresholds: dict[str, tuple[float, float]]) -> dict[str, str]:
    """The cue words of one clip's functionals against a dataset's ``thresholds``."""
    col = {n: i for i, n in enumerate(names)}

    def word(key: str, name: str) -> str:
        return _level(float(functionals[col[name]]), *thresholds[key], WORDS[key])

    return {
        "pitch": f"{word('pitch', PITCH)} and {word('pitch_var', PITCH_VAR)}",
        "loudness": word("loudness", LOUDNESS),
        "speaking_rate": word("speaking_rate", RATE),
        "pauses": word("pauses", PAUSE),
    }
