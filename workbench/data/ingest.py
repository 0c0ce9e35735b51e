"""Media ingestion as a data stage: a manifest of video / audio / image files to a dataset.

``ingest_media(cfg)`` reads the manifest (``cfg.data``), turns each row into a clip
(:class:`~workbench.data.media.ClipSpec`: a video with optional ``start`` / ``end``
seconds, and/or an audio file, and/or frame images) and, over ``media.processes`` worker
processes (or as Ray tasks with ``media.engine: ray``, :mod:`workbench.data.ray_media`;
on a cluster the media files and ``OUT`` must be on storage shared by every node),
decodes it:

- ``media.frames`` frames sampled uniformly inside the segment, resized to
  ``media.max_side`` and written as ``OUT/media/frames/<sha256>.jpg``;
- the audio resampled to 16 kHz mono (``OUT/media/audio/<clip>.wav``) and described by
  eGeMAPSv02: 88 functionals and 25 low-level descriptors at 100 Hz;
- optionally frame embeddings from a local image encoder (``media.image_encoder``).

The dataset it writes to ``OUT`` (read with ``data.path=OUT``) fills each Sample as:

=====================  ==================================================================
``media.frames``       the JPEG paths (absolute), in time order; the files' content
                       hashes enter fingerprints and cache keys (pixels, not paths)
``media.audio_file``   the 16 kHz mono 16-bit WAV of the segment (absolute), or None
``media.video_file``   None (the source video is in ``meta["source_video"]``)
``audio``              ``(T, 25)`` eGeMAPS LLD sequence with ``audio_length=T``
                       (``media.audio_features=lld``, the default) or the ``(88,)``
                       functionals (``functionals``)
``vision``             ``(N, d)`` frame embeddings with ``vision_length=N`` when
                       ``media.image_encoder`` is set, else None
``meta``               the manifest's other columns, plus ``egemaps`` (88 functionals),
                       ``pitch`` / ``loudness`` / ``speaking_rate`` / ``pauses`` (cue
                       words), ``acoustic_cues_version``, ``source_video`` /
                       ``source_audio``, ``segment`` ([start, end] seconds used)
=====================  ==================================================================

Resumable: each clip's result is stored under a key hashed from its source files'
content, its segment and the decoding settings, and a rerun skips clips already done.
Every failing clip becomes an error row (``OUT/media_errors.jsonl``: id, reason,
sources); past ``media.max_error_rate`` the job stops with :class:`MediaJobFailed`,
keeping every finished clip.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from workbench.cache.records import stable_hash
from workbench.config.media import MediaConfig, MediaJobConfig
from workbench.data.acoustic import (
    CUES_VERSION,
    CUES_VERSION_KEY,
    FUNCTIONALS_KEY,
    acoustic_cues,
    cue_thresholds,
    egemaps,
    functional_names,
)
from workbench.data.arrays import READ_ERRORS, check_npz
from workbench.data.media import (
    AUDIO_SUFFIXES,
    ClipError,
    ClipSpec,
    decode_audio,
    decode_frames,
    load_image,
    wav_bytes,
    write_jpeg,
)
from workbench.data.schema import DataError, Media, Sample
from workbench.data.store import MSADataset, file_sha256, infer_info
from workbench.errors import WorkbenchError
from workbench.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

CLIP_VERSION = 1
ERRORS_FILE = "media_errors.jsonl"
PARTS = ("decode_video", "frames", "decode_audio", "egemaps")


class MediaJobFailed(WorkbenchError, RuntimeError):
    """Too many clips failed: the job stopped; finished clips are kept for a rerun."""

    exit_code = 1


@dataclass
class MediaReport:
    clips: int
    done: int = 0
    """Clips decoded in this run."""
    skipped: int = 0
    """Clips already done by an earlier run (same content hash)."""
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: Counter = field(default_factory=Counter)
    """Seconds spent in each part (summed over workers): decode_video, frames,
    decode_audio, egemaps, embed."""
    wall_s: float = 0.0
    out: str = ""

    @property
    def ok(self) -> int:
        return self.done + self.skipped


# ------------------------------------------------------------------ clips


def _seconds(value: Any, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ClipError(f"column {column!r} is {value!r}, not a number of seconds") from None
    if not math.isfinite(x):
        raise ClipError(f"column {column!r} is {value!r}, not a finite number of seconds")
    return x


def clip_spec(sample: Sample, mcfg: MediaConfig) -> ClipSpec:
    """The clip a manifest row asks for (raises ClipError on a bad start / end cell)."""
    video, audio = sample.media.video_file, sample.media.audio_file
    if video and Path(video).suffix.lower() in AUDIO_SUFFIXES and not audio:
        video, audio = None, video  # an audio file in the video column
    return ClipSpec(id=sample.id, video=video, audio=audio, images=list(sample.media.frames),
                    start=_seconds(sample.meta.get(mcfg.start_column), mcfg.start_column),
                    end=_seconds(sample.meta.get(mcfg.end_column), mcfg.end_column))


def clip_key(spec: ClipSpec, mcfg: MediaConfig) -> str:
    """Content hash of a clip's inputs and the settings that shape its result."""
    sources = []
    for p in spec.sources():
        if not Path(p).is_file():
            raise ClipError(f"file not found: {p}")
        sources.append(file_sha256(p))
    return stable_hash({"v": CLIP_VERSION, "video": bool(spec.video), "audio": bool(spec.audio),
                        "sources": sources, "start": spec.start, "end": spec.end,
                        "frames": mcfg.frames, "max_side": mcfg.max_side,
                        "quality": mcfg.jpeg_quality, "want_audio": mcfg.audio})


def process_clip(spec: ClipSpec, mcfg: MediaConfig, media_dir: Path) -> dict[str, Any]:
    """Decode one clip and store its result; an ok or error record (a ClipError or running
    out of memory on this clip is its error record, never raised)."""
    try:
        key = clip_key(spec, mcfg)
        record_path = media_dir / "clips" / f"{key}.json"
        if record_path.is_file():
            return {**json.loads(record_path.read_text()), "skipped": True}
        return _decode_clip(spec, mcfg, media_dir, key, record_path)
    except ClipError as e:
        return {"id": spec.id, "status": "error", "reason": str(e), "sources": spec.sources()}
    except MemoryError:
        return {"id": spec.id, "status": "error", "sources": spec.sources(),
                "reason": "decoding it needed more memory than this process could get (a "
                          "damaged or forged header?); check the file with ffprobe, re-encode "
                          "it or remove the row"}


def _decode_clip(spec: ClipSpec, mcfg: MediaConfig, media_dir: Path, key: str,
                 record_path: Path) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    segment: list[float] | None = None
    frames: list[str] = []
    t = time.perf_counter()
    if spec.images:
        images = [load_image(p) for p in spec.images]
    elif spec.video and mcfg.frames:
        images, seg = decode_frames(spec.video, spec.start, spec.end, mcfg.frames)
        segment = list(seg)
    else:
        images = []
    seconds["decode_video"] = time.perf_counter() - t
    t = time.perf_counter()
    (media_dir / "frames").mkdir(parents=True, exist_ok=True)
    frames = [write_jpeg(im, media_dir / "frames", mcfg.max_side, mcfg.jpeg_quality).name
              for im in images]
    seconds["frames"] = time.perf_counter() - t
    record: dict[str, Any] = {"id": spec.id, "status": "ok", "key": key, "frames": frames,
                              "audio_file": None, "segment": segment}
    audio_src = spec.audio or (spec.video if mcfg.audio else None)
    if mcfg.audio and audio_src:
        t = time.perf_counter()
        signal, seg = decode_audio(audio_src, spec.start, spec.end)
        seconds["decode_audio"] = time.perf_counter() - t
        t = time.perf_counter()
        func, lld = egemaps(signal)
        seconds["egemaps"] = time.perf_counter() - t
        wav = media_dir / "audio" / f"{key}.wav"
        atomic_write_bytes(wav, wav_bytes(signal))
        buf = io.BytesIO()
        np.savez(buf, functionals=func, lld=lld)
        atomic_write_bytes(media_dir / "clips" / f"{key}.npz", buf.getvalue())
        record.update(audio_file=wav.name, segment=record["segment"] or list(seg),
                      lld_frames=int(lld.shape[0]))
    if not frames and record["audio_file"] is None:
        raise ClipError("nothing to ingest: the row names no video, audio or frame images")
    record["seconds"] = seconds
    atomic_write_text(record_path, json.dumps(record))
    return record


def _work(args: tuple[ClipSpec, MediaConfig, str]) -> dict[str, Any]:
    spec, mcfg, media_dir = args
    return process_clip(spec, mcfg, Path(media_dir))


# ------------------------------------------------------------------ the job


def _start_method() -> str:
    """``fork`` (workers start at once) unless torch is loaded in this process, whose
    threads do not survive a fork; then ``spawn`` (workers import PyAV and openSMILE)."""
    import sys

    return "spawn" if "torch" in sys.modules else "fork"


def _run_clips(specs: list[ClipSpec], mcfg: MediaConfig, media_dir: Path, allowed: int,
               progress: Callable[[dict[str, Any]], None] | None) -> tuple[list[dict], bool]:
    """Every clip's record; ``stopped`` when errors passed ``allowed`` (the rest not run)."""
    records: list[dict] = []
    errors = 0

    def take(rec: dict) -> bool:
        nonlocal errors
        records.append(rec)
        if progress:
            progress(rec)
        errors += rec["status"] != "ok"
        return errors > allowed

    if mcfg.engine == "ray":
        from contextlib import closing

        from workbench.data.ray_media import ray_records

        with closing(ray_records(specs, mcfg, media_dir)) as finished:
            for rec in finished:
                if take(rec):
                    return records, True  # closing stops the clips not started
        return records, False
    if mcfg.processes == 1 or len(specs) <= 1:
        for spec in specs:
            if take(process_clip(spec, mcfg, media_dir)):
                return records, True
        return records, False
    with ProcessPoolExecutor(max_workers=mcfg.processes, mp_context=get_context(_start_method())) as pool:
        pending = {pool.submit(_work, (s, mcfg, str(media_dir))) for s in specs}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                if take(fut.result()):
                    for p in pending:
                        p.cancel()
                    return records, True
    return records, False


def _load_samples(cfg: MediaJobConfig) -> list[Sample]:
    from workbench.data import read_samples

    if not (cfg.data.video_file_column or cfg.data.audio_file_column or cfg.data.frames_column):
        raise DataError(f"{cfg.data.path}: name the media columns: data.video_file_column, "
                        "data.audio_file_column and/or data.frames_column")
    # missing files become error rows of their clips, not one failure of the whole manifest
    return read_samples(replace(cfg.data, check_media=False))


def ingest_media(cfg: MediaJobConfig,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> MediaReport:
    """Decode every clip of ``cfg.data`` and write the dataset to ``cfg.out``."""
    from workbench.config import dump_config

    t0 = time.perf_counter()
    mcfg = cfg.media
    if mcfg.engine == "ray":
        from workbench.ray_engine import import_ray

        import_ray()  # not installed: one clear error, before any work
    out = Path(cfg.out).resolve()
    media_dir = out / "media"
    (media_dir / "clips").mkdir(parents=True, exist_ok=True)
    samples = _load_samples(cfg)
    report = MediaReport(clips=len(samples), out=str(out))
    specs, by_id = [], {s.id: s for s in samples}
    for s in samples:
        try:
            specs.append(clip_spec(s, mcfg))
        except ClipError as e:
            report.errors.append({"id": s.id, "status": "error", "reason": str(e), "sources": []})
    allowed = int(mcfg.max_error_rate * len(samples))
    records, stopped = _run_clips(specs, mcfg, media_dir, allowed - len(report.errors), progress)
    position = {s.id: i for i, s in enumerate(samples)}  # workers finish in any order
    records.sort(key=lambda r: position[r["id"]])
    for rec in records:
        if rec["status"] != "ok":
            report.errors.append(rec)
        elif rec.get("skipped"):
            report.skipped += 1
        else:
            report.done += 1
        report.seconds.update(rec.get("seconds", {}) if not rec.get("skipped") else {})
    report.errors.sort(key=lambda e: position[e["id"]])
    errors_text = "".join(json.dumps({k: e[k] for k in ("id", "reason", "sources")}) + "\n"
                          for e in report.errors)
    atomic_write_text(out / ERRORS_FILE, errors_text)
    if stopped or len(report.errors) > allowed:
        first = "; ".join(f"{e['id']}: {e['reason']}" for e in report.errors[:3])
        raise MediaJobFailed(
            f"{len(report.errors)} of {len(samples)} clips failed, more than "
            f"media.max_error_rate={mcfg.max_error_rate} allows; stopped, keeping the "
            f"{report.ok} clips done under {media_dir} (a rerun skips them). Every error is in "
            f"{out / ERRORS_FILE}; first: {first}")
    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        raise MediaJobFailed(f"no clip of {cfg.data.path} could be ingested; see {out / ERRORS_FILE}")
    embeddings = {}
    if mcfg.image_encoder and any(r["frames"] for r in ok):
        from workbench.data.embed import embed_clips

        t = time.perf_counter()
        embeddings = embed_clips(ok, mcfg, media_dir)
        report.seconds["embed"] += time.perf_counter() - t
    built = [_sample(by_id[r["id"]], r, mcfg, media_dir, embeddings.get(r["key"])) for r in ok]
    if mcfg.cues:
        add_acoustic_cues(built)
    if mcfg.standardize:
        standardize_audio(built, media_dir / "feature_stats.json")
    data_cfg = replace(cfg.data, modalities=list(cfg.data.modalities))
    ds = MSADataset.from_samples(built, infer_info(built, data_cfg, cfg.data.path))
    ds.save(out)
    dump_config(cfg, out, "media_config.yaml")
    report.wall_s = time.perf_counter() - t0
    log.info("ingested %d clips (%d done now, %d already done, %d errors) into %s",
             report.ok, report.done, report.skipped, len(report.errors), out)
    return report


def _sample(src: Sample, rec: dict[str, Any], mcfg: MediaConfig, media_dir: Path,
            embedding: np.ndarray | None) -> Sample:
    meta = {k: v for k, v in src.meta.items()
            if k not in (mcfg.start_column, mcfg.end_column, "source_line")}
    if src.media.video_file:
        meta["source_video"] = src.media.video_file
    if src.media.audio_file:
        meta["source_audio"] = src.media.audio_file
    if rec.get("segment"):
        meta["segment"] = rec["segment"]
    s = Sample(id=src.id, text=src.text, split=src.split, label=src.label,
               label_class=src.label_class, meta=meta,
               media=Media(frames=[str(media_dir / "frames" / f) for f in rec["frames"]],
                           audio_file=str(media_dir / "audio" / rec["audio_file"])
                           if rec["audio_file"] else None))
    if rec["audio_file"]:
        func, lld = _clip_features(media_dir / "clips" / f"{rec['key']}.npz", src.id)
        meta[FUNCTIONALS_KEY] = [round(float(x), 6) for x in func]
        if mcfg.audio_features == "lld":
            s.audio, s.audio_length = lld.astype(np.float32), int(lld.shape[0])
        else:
            s.audio = func.astype(np.float32)
    if embedding is not None:
        s.vision, s.vision_length = embedding.astype(np.float32), int(embedding.shape[0])
    return s


def _clip_features(path: Path, sid: str) -> tuple[np.ndarray, np.ndarray]:
    """The eGeMAPS functionals and LLD a finished clip stored in ``path``."""
    fix = (f"delete {path.name} and {path.with_suffix('.json').name} from {path.parent} and "
           "rerun to decode the clip again")
    try:
        check_npz(path, fix)
        with np.load(path, allow_pickle=False) as z:
            return z["functionals"], z["lld"]
    except DataError:  # a ValueError, but already the message to show
        raise
    except READ_ERRORS as e:
        raise DataError(f"{path}: the stored eGeMAPS features of clip {sid!r} cannot be read "
                        f"({type(e).__name__}: {e}); {fix}") from None
    except KeyError as e:
        raise DataError(f"{path}: the stored eGeMAPS features of clip {sid!r} lack {e}; "
                        f"{fix}") from None


def add_acoustic_cues(samples: list[Sample]) -> None:
    """Write the cue words into each sample's meta, relative to the dataset's train clips
    (all clips when fewer than three are in train)."""
    with_audio = [s for s in samples if FUNCTIONALS_KEY in s.meta]
    if not with_audio:
        return
    names = functional_names()
    ref = [s for s in with_audio if s.split == "train"]
    ref = ref if len(ref) >= 3 else with_audio
    thresholds = cue_thresholds(np.asarray([s.meta[FUNCTIONALS_KEY] for s in ref]), names)
    for s in with_audio:
        s.meta.update(acoustic_cues(np.asarray(s.meta[FUNCTIONALS_KEY]), names, thresholds))
        s.meta[CUES_VERSION_KEY] = CUES_VERSION


def standardize_audio(samples: list[Sample], stats_path: Path) -> None:
    """Z-score each audio dimension by the train clips' statistics (all clips when no
    train clip has audio); padding and missing audio stay as they are."""
    def rows(s: Sample) -> np.ndarray:
        return s.audio[: s.audio_length] if s.audio.ndim == 2 else s.audio[None]

    with_audio = [s for s in samples if s.audio is not None]
    if not with_audio:
        return
    ref = [s for s in with_audio if s.split == "train"] or with_audio
    table = np.concatenate([rows(s) for s in ref]).astype(np.float64)
    mean, std = table.mean(0), table.std(0)
    std[std < 1e-8] = 1.0
    for s in with_audio:
        s.audio = ((s.audio - mean) / std).astype(np.float32)
    atomic_write_text(stats_path, json.dumps({"mean": mean.tolist(), "std": std.tolist(),
                                              "reference": "train" if ref is not with_audio else "all"}))
