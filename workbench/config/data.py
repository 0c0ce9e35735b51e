"""Where a dataset lives and how to read it (``data:`` of every recipe)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from workbench.config.fields import MODALITIES, SPLITS, check, short_repr


def check_domain_spec(spec: str) -> str | None:
    """None when ``spec`` is a valid ``data.domain``, else what to set instead."""
    if spec in ("", "name"):
        return None
    if spec.startswith("column:") and spec[len("column:"):].strip():
        return None
    if spec.startswith("source:"):
        n = spec[len("source:"):]
        if n.isdigit() and int(n) >= 2:
            return None
        return "source:N needs a group count N >= 2, e.g. source:4"
    return "use '' (no domains), name, column:COL or source:N"


@dataclass
class DataConfig:
    """Where a dataset lives and how to read it."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("path", "features", "media_root")
    """Input paths read relative to the YAML file that names them
    (:func:`workbench.config.loader.load_config`)."""

    path: str = ""
    """Dataset location: an MMSA pickle (.pkl), a manifest (.csv/.jsonl), or a directory
    written by ``workbench data import`` (Hugging Face ``datasets`` on disk)."""
    format: Literal["auto", "mmsa", "manifest", "hf"] = "auto"
    """Reader to use; ``auto`` picks from the path (.pkl -> mmsa, .csv/.jsonl -> manifest,
    directory -> hf)."""
    name: str = ""
    """Dataset name shown in reports (defaults to the file or directory stem)."""
    modalities: list[str] = field(default_factory=lambda: ["text", "audio", "vision"])
    """Modalities to keep; features of the others are dropped on load."""
    task: Literal["regression", "classification"] = "regression"
    """Regression on a sentiment score, or classification into ``class_names``."""
    metric_set: Literal["auto", "mosi", "sims", "classification"] = "auto"
    """Which metric definitions apply (MOSI/MOSEI scale, SIMS scale, or plain classes);
    ``auto``: ``classification`` for a classification task, else ``mosi``."""
    label_range: tuple[float, float] = (-3.0, 3.0)
    """Declared range of the score labels; labels outside it are rejected."""
    class_names: list[str] = field(default_factory=list)
    """Names of the classes for classification datasets, in label-index order."""
    subset: dict[str, float] = field(default_factory=dict)
    """A seeded random subset per split, e.g. ``{train: 1500}`` (a count) or
    ``{train: 0.15}`` (a fraction, < 1); splits not named are kept whole. Applied when the
    dataset loads, so caching, distillation and evaluation see the same samples (and the
    dataset's fingerprint is that of the subset)."""
    subset_seed: int = 0
    """Seed of ``subset``: a sample is kept by the rank of hash(seed, id), so the choice does
    not depend on the file's row order and a larger count keeps every smaller one's."""
    few_shot: int = 0
    """Few-shot examples per answer word that a teacher's template is shown, drawn from this
    dataset's own **train** split (never valid or test; a sample never sees itself), for
    templates that render ``examples`` (``dialogue_polarity``, ``sentiment_polarity``); 0:
    the template's own neutral examples."""
    few_shot_seed: int = 0
    """Seed of the few-shot draw."""
    # Manifest reader --------------------------------------------------------
    encoding: str = "utf-8"
    """Text encoding of a CSV/JSONL manifest (any Python codec name, e.g. ``latin-1``,
    ``cp1252``); ``utf-8`` also accepts a leading byte-order mark."""
    id_column: str = "id"
    """Manifest column holding the sample id (ignored when ``id_format`` is set)."""
    id_format: str = ""
    """Build ids from other columns, e.g. ``"{video_id}_{clip_id}"``."""
    text_column: str = "text"
    label_column: str = "label"
    class_column: str = ""
    """Manifest column holding a class index or a name of ``class_names`` (classification;
    ``label_column`` is the numeric score of a regression task)."""
    labels: Literal["required", "optional"] = "required"
    """Whether every sample must carry a gold label. ``optional`` for data a trained model
    is applied to (``workbench predict --new-data``, ``data validate --unlabeled``): rows
    without a label (no label/class column, or an empty cell) are accepted; a label that is
    present is still checked. Training and evaluation need labels whatever this says."""
    split_column: str = "split"
    """Manifest column holding the split of each row."""
    default_split: str = ""
    """Split of the manifest rows that have no ``split_column`` (new data a trained model is
    applied to, e.g. ``test``); empty: such a row is an error naming the file and line.
    ``workbench predict --new-data`` reads rows without it as ``test`` when this is empty."""
    split_files: dict[str, str] = field(default_factory=dict)
    """One manifest per split instead of a split column, e.g. ``{train: train.csv, valid:
    dev.csv, test: test.csv}``, named relative to ``path`` (then a folder). Each row gets
    its file's split; ``id_format`` may use ``{split}`` where ids repeat across files."""
    dialogue_column: str = ""
    """Manifest column with a dialogue (conversation) id: turns the dialogue context on."""
    turn_column: str = ""
    """Manifest column with the utterance's position in its dialogue (a number)."""
    speaker_column: str = ""
    """Manifest column with the speaker's name (shown with the context)."""
    context_turns: int | None = None
    """How many previous utterances each sample carries as ``context`` for templates
    (with speakers), oldest first; 0: none. From other rows (``dialogue_column``): the N
    previous turns of the same dialogue and split; unset means 0. From a list
    (``context_column``): the last N lines of the list; unset means the whole list. So
    ``context_turns=0`` is the no-context run of either. What a template renders of it
    enters the cache key, and the setting enters the caching job's id."""
    context_column: str = ""
    """Manifest column holding each sample's previous lines itself, as a list (oldest
    first): a JSON list in a JSONL record, a cell holding a JSON list in a CSV; each entry
    a string or an object ``{"speaker": ..., "text": ...}``; empty or missing: no context.
    The alternative to ``dialogue_column`` (not both); ``context_turns`` keeps the last N."""
    context_speakers_column: str = ""
    """Manifest column holding the speakers of ``context_column``'s lines, a list of the same
    length (null or "" for an unknown one); it wins over an entry's own ``speaker``."""
    context_only_column: str = ""
    """Manifest column marking rows that are only context (true/1/yes; false/0/no or empty
    for samples): previous lines that the dialogue rows path (``dialogue_column``) shows in
    other samples' prompts, never samples themselves (no label needed; not trained,
    evaluated, cached, counted, subset or fingerprinted). The id of such a row may be
    missing."""
    split_names: dict[str, str] = field(default_factory=dict)
    """Map raw split values to train/valid/test, e.g. ``{dev: valid, val: valid}``."""
    frames_column: str = ""
    """Manifest column with video frame / image paths (``;``-separated)."""
    audio_file_column: str = ""
    """Manifest column with an audio file path."""
    video_file_column: str = ""
    """Manifest column with a video file path."""
    media_root: str = ""
    """Directory that relative media paths are resolved against (default: the manifest's)."""
    features: str = ""
    """Optional ``.npz`` with per-sample feature arrays keyed by id."""
    features_id_key: str = "id"
    """Array in ``features`` holding the sample ids."""
    feature_keys: dict[str, str] = field(default_factory=lambda: {"audio": "audio", "vision": "vision"})
    """Which ``features`` array feeds each modality, e.g. ``{audio: audio, vision: video}``."""
    # MMSA reader ------------------------------------------------------------
    mmsa_text_key: Literal["raw_text"] = "raw_text"
    """MMSA field with the transcript (the student tokenizes it itself)."""
    # Domains ----------------------------------------------------------------
    domain: str = ""
    """What a sample's domain is (MIDG's invariance penalty, ``train.holdout_domain``,
    leave-one-domain-out): ``""`` none, ``name`` the dataset's name, ``column:COL`` a
    manifest column, ``source:N`` the sample's source (id before the last ``_``) hashed
    into N groups (``workbench.data.domains``)."""
    # Validation -------------------------------------------------------------
    check_media: bool = True
    """Fail when a referenced media file does not exist."""
    nonfinite: Literal["error", "zero"] = "error"
    """NaN/inf in features: fail (default), or replace them with 0 as the MMSA toolkit
    does for the -inf values in its MOSI/MOSEI audio features."""

    def __post_init__(self) -> None:
        problem = check_domain_spec(self.domain)
        check(problem is None, "data.domain", self.domain, problem or "")
        for m in self.modalities:
            check(m in MODALITIES, "data.modalities", self.modalities,
                  f"each entry must be one of {list(MODALITIES)}")
        check(len(self.modalities) > 0, "data.modalities", self.modalities,
              "keep at least one modality, e.g. [text, audio]")
        self.label_range = tuple(float(x) for x in self.label_range)  # type: ignore[assignment]
        check(len(self.label_range) == 2 and self.label_range[0] < self.label_range[1],
              "data.label_range", self.label_range, "give [low, high] with low < high")
        if self.metric_set == "auto":
            self.metric_set = "classification" if self.task == "classification" else "mosi"
        if self.task == "classification":
            check(len(self.class_names) >= 2, "data.class_names", self.class_names,
                  "classification needs at least two class names")
            check(self.metric_set == "classification", "data.metric_set", self.metric_set,
                  "set data.metric_set=classification for a classification task")
        else:
            check(self.metric_set != "classification", "data.metric_set", self.metric_set,
                  "use mosi or sims for a regression task, or set data.task=classification")
        for raw, split in self.split_names.items():
            check(split in SPLITS, f"data.split_names.{raw}", split,
                  f"map each raw split to one of {list(SPLITS)}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            check(False, "data.encoding", self.encoding,
                  "use a Python codec name such as utf-8, latin-1 or cp1252")
        check(self.default_split in ("", *SPLITS), "data.default_split", self.default_split,
              f"use one of {list(SPLITS)}, or leave it empty to require a split column")
        for split in self.split_files:
            check(split in SPLITS, f"data.split_files.{split}", self.split_files[split],
                  f"key each file by one of {list(SPLITS)}")
        check(self.few_shot >= 0, "data.few_shot", self.few_shot,
              "use 0 (the template's own examples) or a positive count per answer word")
        check(self.context_turns is None or self.context_turns >= 0, "data.context_turns",
              self.context_turns, "use 0 (no context) or a positive number of previous "
              "utterances (unset: none from rows, the whole list from data.context_column)")
        check(not (self.context_column and self.dialogue_column), "data.context_column",
              self.context_column, "take the context from a list column or from the previous "
              f"rows of data.dialogue_column={short_repr(self.dialogue_column)}, not both: unset one")
        check(not self.context_turns
              or bool(self.context_column or (self.dialogue_column and self.turn_column)),
              "data.context_turns", self.context_turns,
              "dialogue context needs data.dialogue_column and data.turn_column (previous "
              "rows), or data.context_column (a list per sample)")
        check(not self.context_speakers_column or bool(self.context_column),
              "data.context_speakers_column", self.context_speakers_column,
              "it names the speakers of data.context_column's lines: set data.context_column "
              "too, or data.speaker_column for the previous rows of a dialogue")
        check(not self.context_only_column or bool(self.dialogue_column and self.turn_column),
              "data.context_only_column", self.context_only_column,
              "context-only rows are previous lines of the dialogue rows path: set "
              "data.dialogue_column and data.turn_column (with data.context_column each "
              "sample carries its own lines; drop the context-only rows)")
        for split, n in self.subset.items():
            check(split in SPLITS, f"data.subset.{split}", n,
                  f"name a split of {list(SPLITS)}")
            check(0 < n < 1 or (n >= 1 and float(n).is_integer()), f"data.subset.{split}", n,
                  "give a fraction in (0, 1) or a whole count of samples >= 1")
        for mod in self.feature_keys:
            check(mod in ("audio", "vision"), "data.feature_keys", self.feature_keys,
                  "keys must be audio and/or vision")
