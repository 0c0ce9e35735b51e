"""A small synthetic MSA dataset the workbench generates itself (the demo's default data).

Each utterance has a latent sentiment ``z`` in [-3, 3]. The label is ``z``. The words
carry part of it (a sentiment phrase whose polarity and strength follow ``z``, but some
utterances are worded neutrally or sarcastically), and acoustic / visual vectors are
drawn around directions that encode ``z`` with modality noise, so that no single
modality suffices. Some samples lack audio or vision entirely. It is synthetic: numbers
on it say the workbench runs, not how a method does on real data.

With ``domains=K`` (K >= 2) sample ``i`` belongs to domain ``i % K`` (``DOMAINS``, a
``domain`` column of the manifest; ``data.domain: column:domain`` in the written config):
each domain talks about its own subjects with its own sentiment words (vocabulary shift)
and adds its own offset to the audio and visual vectors (feature shift, of norm about
``domain_shift``), for domain-generalization protocols.
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
DOMAINS = ["movies", "food", "gadgets", "travel", "books", "music"]
DOMAIN_SUBJECTS = {
    "movies": SUBJECTS,
    "food": ["the soup", "this pasta", "the dessert", "the service", "the menu", "the wine"],
    "gadgets": ["the battery", "this phone", "the screen", "the charger", "the keyboard"],
    "travel": ["the hotel", "this beach", "the flight", "the tour guide", "the old town"],
    "books": ["the novel", "this chapter", "the narrator", "the prose", "the last page"],
    "music": ["the album", "this song", "the chorus", "the drummer", "the live set"],
}
DOMAIN_WORDS = {  # per domain: positive / negative words by strength (its own vocabulary)
    "food": (["edible", "tasty", "delicious", "exquisite"], ["salty", "stale", "inedible", "revolting"]),
    "gadgets": (["usable", "handy", "slick", "flawless"], ["laggy", "flimsy", "broken", "useless"]),
    "travel": (["restful", "charming", "stunning", "breathtaking"], ["crowded", "shabby", "filthy", "dreadful"]),
    "books": (["readable", "engaging", "gripping", "masterful"], ["wordy", "tedious", "unreadable", "dire"]),
    "music": (["catchy", "groovy", "soaring", "sublime"], ["tinny", "repetitive", "grating", "unbearable"]),
}
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
    domains: int = 0
    """Number of domains (0: none; at most ``len(DOMAINS)``); see the module docstring."""
    domain_shift: float = 1.5
    """Norm of each domain's offset of the audio / visual vectors."""

    def __post_init__(self) -> None:
        if self.domains == 1 or not 0 <= self.domains <= len(DOMAINS):
            raise ValueError(f"SynthSpec.domains={self.domains}: use 0 (none) or 2.."
                             f"{len(DOMAINS)}")


def _sentence(rng: np.random.Generator, z: float, text_signal: float,
              domain: str = "movies") -> str:
    subjects = DOMAIN_SUBJECTS[domain]
    subject = subjects[rng.integers(len(subjects))]
    opener = OPENERS[rng.integers(len(OPENERS))]
    if abs(z) < 0.5 or rng.random() > text_signal:
        return f"{opener} {subject} was {NEUTRAL[rng.integers(len(NEUTRAL))]}"
    strength = int(min(3, abs(z)))
    if domain in DOMAIN_WORDS:
        pos, neg = DOMAIN_WORDS[domain]
        words = [(pos if z > 0 else neg)[strength]]
    else:
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
    names = DOMAINS[:spec.domains]
    if names:  # a separate stream: without domains the data is unchanged
        drng = np.random.default_rng(spec.seed + 7919)
        shift_a = drng.normal(size=(len(names), spec.audio_dim))
        shift_v = drng.normal(size=(len(names), spec.vision_dim))
        shift_a *= spec.domain_shift / np.linalg.norm(shift_a, axis=1, keepdims=True)
        shift_v *= spec.domain_shift / np.linalg.norm(shift_v, axis=1, keepdims=True)
        k = np.arange(spec.n) % len(names)
        audio = (audio + shift_a[k]).astype(np.float32)
        vision = (vision + shift_v[k]).astype(np.float32)
    for i in range(spec.n):
        split = "train" if split_draw[i] < 0.7 else "valid" if split_draw[i] < 0.85 else "test"
        domain = names[i % len(names)] if names else "movies"
        row = {"id": ids[i], "text": _sentence(rng, float(z[i]), spec.text_signal, domain),
               "label": float(z[i]), "split": split}
        if names:
            row["domain"] = domain
        rows.append(row)
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
        w = csv.DictWriter(f, fieldnames=["id", "text", "label", "split",
                                          *(["domain"] if spec.domains else [])])
        w.writeheader()
        w.writerows(rows)
    np.savez(out / "features.npz", **feats)
    return manifest


CONFIG_FILE = "data.yaml"


def write_with_config(out_dir: str | Path, spec: SynthSpec | None = None) -> Path:
    """:func:`write`, plus ``data.yaml`` (the data config that reads it); return that config.

    What ``workbench data synth`` writes and the demo reads. Its paths name the files beside
    it, so the folder reads from any working directory and can be moved whole.
    """
    import yaml

    out = Path(out_dir)
    manifest = write(out, spec)
    cfg = {"name": "synth", "path": manifest.name, "features": "features.npz",
           "feature_keys": {"audio": "audio", "vision": "vision"},
           "modalities": ["text", "audio", "vision"], "task": "regression",
           "metric_set": "mosi", "label_range": [-3, 3]}
    if spec and spec.domains:
        cfg["domain"] = "column:domain"
    config = out / CONFIG_FILE
    config.write_text("# Synthetic MSA data written by `workbench data synth` (not real data).\n"
                      + yaml.safe_dump(cfg, sort_keys=False))
    return config
