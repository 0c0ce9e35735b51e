"""A small synthetic MSA dataset the workbench generates itself (the demo's default data).

Each utterance has a latent sentiment ``z`` in [-3, 3]. The label is ``z``. The words
carry part of it (a sentiment phrase whose polarity and strength follow ``z``, but some
utterances are worded neutrally or sarcastically), and acoustic / visual vectors are
drawn around directions that encode ``z`` with modality noise, so that no single
modality suffices. Some samples lack audio or vision entirely. It is synthetic: numbers
on it say the workbench runs, not how a method does on real data.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POSITIVE = [["fine", "okay", "decent"], ["good", "nice", "pleasant"],
            ["great", "lovely", "wonderful"], ["amazing", "brilliant", "fantastic"]]
NEGATIVE = [["meh", "so so", "bland"], ["bad", "dull", "poor"],
            ["awful", "terrible", "boring"], ["horrible", "disgusting", "atrocious"]]
NEUTRAL = ["there", "on", "about", "long", "in color", "a sequel", "from last year"]
SUBJECTS = ["the movie", "this film", "the acting", "the plot", "the ending", "the soundtrack",
            "the main character", "the dialogue", "the second half", "the camera work"]
OPENERS = ["i think", "honestly", "well", "you know", "to be fair", "i mean", "so", "basically"]


@dataclass
class SynthSpec:
    n: int = 600
    audio_dim: int = 16
    vision_dim: int = 20
    text_signal: float = 0.6
    """Probability that the words carry the sentiment (else neutral wording)."""
    audio_noise: float = 1.0
    vision_noise: float = 1.2
    missing_audio: float = 0.1
    missing_vision: float = 0.1
    seed: int = 0


def _sentence(rng: np.random.Generator, z: float, text_signal: float) -> str:
    subject = SUBJECTS[rng.integers(len(SUBJECTS))]
    opener = OPENERS[rng.integers(len(OPENERS))]
    if abs(z) < 0.5 or rng.random() > text_signal:
        return f"{opener} {subject} was {NEUTRAL[rng.integers(len(NEUTRAL))]}"
    strength = int(min(3, abs(z)))
    words = (POSITIVE if z > 0 else NEGATIVE)[strength]
    adverb = ["", "really ", "very ", "extremely "][min(3, strength)]
    return f"{opener} {subject} was {adverb}{words[rng.integers(len(words))]}"


def generate(spec: SynthSpec) -> tuple[list[dict[str, object]], dict[str, np.ndarray]]:
    """Manifest rows and feature arrays (``id``, ``audio``, ``vision``)."""
    rng = np.random.default_rng(spec.seed)
    z = np.clip(rng.normal(0.0, 1.5, spec.n), -3, 3).round(1)
    wa = rng.normal(size=spec.audio_dim) / np.sqrt(spec.audio_dim)
    wv = rng.normal(size=spec.vision_dim) / np.sqrt(spec.vision_dim)
    base_a = rng.normal(size=(spec.n, spec.audio_dim)) * spec.audio_noise
    base_v = rng.normal(size=(spec.n, spec.vision_dim)) * spec.vision_noise
    audio = (base_a + np.outer(z, wa) * 1.5 + np.outer(np.abs(z), wa[::-1]) * 0.5).astype(np.float32)
    vision = (base_v + np.outer(np.tanh(z), wv) * 3.0).astype(np.float32)
    split_draw = rng.random(spec.n)
    ids = [f"synth_{i:05d}" for i in range(spec.n)]
    rows = []
    keep_a = rng.random(spec.n) >= spec.missing_audio
    keep_v = rng.random(spec.n) >= spec.missing_vision
    for i in range(spec.n):
        split = "train" if split_draw[i] < 0.7 else "valid" if split_draw[i] < 0.85 else "test"
        rows.append({"id": ids[i], "text": _sentence(rng, float(z[i]), spec.text_signal),
                     "label": float(z[i]), "split": split})
    feats = {
        "id": np.asarray(ids),
        "audio_ids": np.asarray([ids[i] for i in range(spec.n) if keep_a[i]]),
        "audio": audio[keep_a],
        "vision_ids": np.asarray([ids[i] for i in range(spec.n) if keep_v[i]]),
        "vision": vision[keep_v],
    }
    return rows, feats


def write(out_dir: str | Path, spec: SynthSpec | None = None) -> Path:
    """Write ``manifest.csv`` and ``features.npz`` into ``out_dir``; return the manifest.

    Samples without audio/vision are absent from ``audio_ids`` / ``vision_ids``, which the
    manifest reader turns into a missing modality.
    """
    spec = spec or SynthSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, feats = generate(spec)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    np.savez(out / "features.npz", **feats)
    return manifest


CONFIG_FILE = "data.yaml"


def write_with_config(out_dir: str | Path, spec: SynthSpec | None = None) -> Path:
    """:func:`write`, plus ``data.yaml`` (the data config that reads it); return that config.

    What ``workbench data synth`` writes and the demo reads.
    """
    import yaml

    out = Path(out_dir)
    manifest = write(out, spec)
    cfg = {"name": "synth", "path": str(manifest), "features": str(out / "features.npz"),
           "feature_keys": {"audio": "audio", "vision": "vision"},
           "modalities": ["text", "audio", "vision"], "task": "regression",
           "metric_set": "mosi", "label_range": [-3, 3]}
    config = out / CONFIG_FILE
    config.write_text("# Synthetic MSA data written by `workbench data synth` (not real data).\n"
                      + yaml.safe_dump(cfg, sort_keys=False))
    return config
