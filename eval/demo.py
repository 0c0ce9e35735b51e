"""The demo: the three jobs end to end on embedded defaults (``workbench demo``).

data (the synthetic set by default; with ``media`` synthetic mp4 clips decoded by
:func:`workbench.data.ingest.ingest_media` into eGeMAPS LLD sequences, frames and
acoustic cues the text-only teacher reads) -> teacher caching (Gemma 3 270M on CPU through
transformers, soft labels on the train split) -> distillation (MiniLM-L6 + LoRA,
``configs/distill/synth_demo.yaml``) -> evaluation (test split, missing-rate sweep, cost).

Each step calls the library entry users call (:func:`teachers.run.run_cache_job`,
:func:`students.trainer.train`, :func:`eval.evaluate.evaluate_checkpoint`). A rerun reuses
the cache (no teacher calls) and the finished student.

With ``media`` the demo trains two students on the same clips and teacher cache, one on
text + the voice's LLD sequences and one on the text alone, and compares them with the
majority class on the test split (:func:`compare`: ``OUT/compare-test/results.json`` and a
robustness plot with both students): the voice carries sentiment the words leave out, so
the student that hears it should do better.

:func:`run_demo` reports through a :class:`DemoReporter` (the default one logs); the
command prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from eval.evaluate import CheckpointEval, Progress
from teachers.run import JobSummary, ProgressFactory
from workbench.config import DataConfig
from workbench.data import MSADataset

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEMO_TEACHER = REPO / "configs" / "teachers" / "gemma3_270m_cpu.yaml"
DEMO_RECIPE = REPO / "configs" / "distill" / "synth_demo.yaml"
DEMO_TEMPLATE = "sentiment_polarity"  # the 270M base model answers in words, not digits
SYNTH_DIR = "synth"
MEDIA_SRC_DIR = "synth_media"
MEDIA_DATA_DIR = "data_media"
COMPARE_DIR = "compare-test"
MEDIA_CLIPS = 240
"""Clips of the media demo: 120 train / 60 valid / 60 test (48 clips, split 37/5/6, left
a student that learned nothing, selected at epoch 1 on 5 validation clips)."""
MEDIA_TRAIN = ["train.epochs=15", "train.batch_size=16", "train.early_stop_patience=5"]
"""The media demo's changes to the recipe: 120 training clips make only 4 steps an epoch
at its batch of 32, and after 5 such epochs both students were still improving."""
MEDIA_FPS = 4
"""Video frame rate of the media demo's clips: no student or teacher of the demo sees the
frames (ingestion keeps 3 a clip), so fewer of them only save encoding and decoding."""
TEXT_ONLY = "text only"
TEXT_AUDIO = "text + audio"
MAJORITY = "majority (train median)"


@dataclass
class DemoConfig:
    """What the demo runs on and where it writes."""

    data: DataConfig | None = None
    """The dataset; None: the synthetic one, written once to ``out/synth``."""
    data_source: str = ""
    """How the user named ``data`` (a YAML, a dataset path), for the hints printed after."""
    out: Path = Path("runs/demo")
    """Where everything goes: ``synth/``, ``cache/``, ``student-<data name>/``."""
    samples: int = 400
    """Synthetic utterances to generate (only without ``data``)."""
    seeds: list[int] = field(default_factory=lambda: [1111, 1112, 1113])
    """Mask seeds of the missing-rate sweep."""
    missing_rates: list[float] = field(default_factory=lambda: [i / 10 for i in range(10)])
    """Missing rates of the sweep."""
    media: bool = False
    """Run from raw files: synthetic mp4 clips (``out/synth_media``) ingested into
    ``out/data_media`` (only without ``data``)."""
    media_clips: int = MEDIA_CLIPS
    """Synthetic clips to write with ``media``."""
    media_processes: int = 2
    """Worker processes of the media ingestion."""


@dataclass
class DemoSummary:
    data: DataConfig
    data_source: str
    """The data YAML or path to hand to later commands (``workbench predict --data``)."""
    dataset: str
    """``repr`` of the dataset: name, split sizes, fingerprint."""
    cache: JobSummary
    checkpoint: Path
    evaluation: CheckpointEval
    written: list[Path]
    eval_dir: Path
    comparison: dict[str, Any] | None = None
    """With ``media``: :func:`compare`'s results (majority, text only, text + audio)."""
    compare_dir: Path | None = None

    @property
    def robustness_plot(self) -> Path:
        return (self.compare_dir or self.eval_dir) / "robustness.png"


class DemoReporter:
    """Where :func:`run_demo` reports as it goes. This one logs; subclass to print."""

    def stage(self, title: str) -> None:
        log.info("== %s", title)

    def note(self, text: str) -> None:
        log.info("%s", text)

    def cache_progress(self) -> ProgressFactory | None:
        """The progress factory of the caching job (None: no progress bar)."""
        return None

    def cache_done(self, summary: JobSummary) -> None:
        r = summary.report
        log.info("job %s: %d keys, %d already cached, %d sent (%d ok, %d errors) in %.1fs",
                 summary.job_id, r.unique_keys, r.already_ok, r.sent, r.ok, r.errors, r.wall_s)

    def evaluation(self, name: str) -> AbstractContextManager[Progress | None]:
        """A context around the evaluation yielding its progress callback (or None)."""
        return nullcontext(None)

    def eval_done(self, ev: CheckpointEval, written: list[Path]) -> None:
        log.info("%s: %s", ev.name, {k: round(v, 4) for k, v in ev.metrics.items()})

    def comparison_done(self, results: dict[str, Any], written: list[Path]) -> None:
        for name, metrics in results["leaderboard"].items():
            log.info("%s: %s", name, {k: round(v, 4) for k, v in metrics.items()
                                      if v is not None})


def _data(cfg: DemoConfig, report: DemoReporter) -> tuple[DataConfig, str]:
    from workbench.config import load_config
    from workbench.data.synth import CONFIG_FILE, SynthSpec, write_with_config

    if cfg.data is not None:
        return cfg.data, cfg.data_source or cfg.data.path
    if cfg.media:
        return _media_data(cfg, report)
    synth = cfg.out / SYNTH_DIR
    config = _write_once(
        synth / CONFIG_FILE, lambda: write_with_config(synth, SynthSpec(n=cfg.samples, seed=0)),
        report, reusing=f"synthetic data: reusing {synth}",
        wrote=f"wrote {cfg.samples} synthetic utterances to {synth / 'manifest.csv'}; "
              f"config: {synth / CONFIG_FILE}")
    return load_config(DataConfig, config), str(config)


def _write_once(config: Path, write: Callable[[], object], report: DemoReporter, *,
                reusing: str, wrote: str) -> Path:
    """``config``: reused where it is a file (noting ``reusing``), else written by ``write``
    (noting ``wrote``)."""
    if config.is_file():
        report.note(reusing)
    else:
        write()
        report.note(wrote)
    return config


def _media_data(cfg: DemoConfig, report: DemoReporter) -> tuple[DataConfig, str]:
    """Synthetic mp4 clips, written once, ingested into a dataset (resumably)."""
    from workbench.config import MediaConfig, MediaJobConfig, load_config
    from workbench.data import imported_info
    from workbench.data.ingest import ingest_media
    from workbench.data.synth_media import MEDIA_CONFIG_FILE, MediaSynthSpec, write_media_dataset

    src, out = cfg.out / MEDIA_SRC_DIR, cfg.out / MEDIA_DATA_DIR
    config = _write_once(
        src / MEDIA_CONFIG_FILE,
        lambda: write_media_dataset(src, MediaSynthSpec(n=cfg.media_clips, seed=0, fps=MEDIA_FPS)),
        report, reusing=f"synthetic clips: reusing {src / 'videos'}",
        wrote=f"wrote {cfg.media_clips} synthetic mp4 clips to {src / 'videos'}; "
              f"manifest: {src / 'manifest.csv'}")
    info = imported_info(str(out))
    if info is not None:
        report.note(f"media dataset: reusing {out}")
    else:
        r = ingest_media(MediaJobConfig(data=load_config(DataConfig, config), out=str(out),
                                        media=MediaConfig(processes=cfg.media_processes)))
        report.note(f"ingested {r.ok} clips into {out} in {r.wall_s:.1f}s (frames, 16 kHz "
                    f"audio, eGeMAPS LLD sequences, acoustic cues; {len(r.errors)} errors)")
        info = imported_info(str(out))
    # the frames stay in the dataset for teachers that see images; the student reads text
    # and the LLD sequences (no image encoder in the demo, so no vision features)
    data = DataConfig(path=str(out), name=info.name, task=info.task, metric_set=info.metric_set,
                      label_range=info.label_range, modalities=["text", "audio"])
    return data, str(out)


def _cache(cfg: DemoConfig, data: DataConfig, report: DemoReporter) -> JobSummary:
    from teachers.run import run_cache_job
    from workbench.config import CacheConfig, CacheJobConfig, TeacherConfig, load_config

    cache = cfg.out / "cache"
    report.note(f"teacher {DEMO_TEACHER.relative_to(REPO)} on the train split, template "
                f"{DEMO_TEMPLATE}, cache {cache}")
    cues: list[str] = []
    if cfg.media and cfg.data is None:
        # a text-only teacher: no frames in its prompt, the voice as acoustic cue words
        cues = ["acoustic"]
        report.note("the text-only teacher hears the voice through acoustic cues "
                    "(cache.cue_fields=[acoustic])")
    job = CacheJobConfig(data=data, teacher=load_config(TeacherConfig, DEMO_TEACHER),
                         cache=CacheConfig(dir=str(cache), template=DEMO_TEMPLATE,
                                           cue_fields=cues),
                         splits=["train"])
    summary = run_cache_job(job, progress=report.cache_progress())
    report.cache_done(summary)
    return summary


def _distill(data: DataConfig, cache: JobSummary, run_dir: Path, report: DemoReporter,
             overrides: Sequence[str] = ()) -> Path:
    from students.trainer import TrainError, train
    from workbench.config import DistillConfig, load_config

    dcfg = load_config(DistillConfig, DEMO_RECIPE, [
        f"signals.cache_dir={cache.cache_dir}", f"signals.soft_label_template={DEMO_TEMPLATE}",
        f"train.output_dir={run_dir}", *overrides])
    dcfg.data = data
    resume = (run_dir / "config.yaml").is_file()
    try:
        return Path(train(dcfg, resume=resume))
    except TrainError as e:
        if not resume:
            raise
        report.note(f"cannot reuse {run_dir} ({e}); training afresh")
        dcfg.train.overwrite = True
        return Path(train(dcfg, resume=False))


def _evaluate(cfg: DemoConfig, best: Path, eval_dir: Path, report: DemoReporter, *,
              name: str = "", cost: bool = True) -> tuple[CheckpointEval, list[Path]]:
    from eval.evaluate import evaluate_checkpoint, write_checkpoint_results
    from eval.options import options_for
    from students.checkpoint import unique_names

    opts = options_for(best, split="test", missing_rates=cfg.missing_rates, seeds=cfg.seeds,
                       batch_size=None, cost=cost, device="cpu", patterns=None,
                       latency_samples=50, device_cost_per_hour=0.0)
    name = name or unique_names([best])[0]
    with report.evaluation(name) as progress:
        ev = evaluate_checkpoint(best, opts, name=name, progress=progress)
        written = write_checkpoint_results(ev, eval_dir)
    report.eval_done(ev, written)
    return ev, written


class _ConstantCorrelation(logging.Filter):
    """Drops :func:`workbench.metrics.pearson`'s warning about constant predictions (the
    majority row is a constant by design; its correlation is reported as absent)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("correlation undefined")


def majority_metrics(ds: MSADataset, split: str = "test") -> tuple[dict[str, float | None], float]:
    """The metrics of one constant prediction for every ``split`` sample: the median of the
    train labels (its sign is train's majority class in both binary splits, and no constant
    has a lower train MAE); ``corr`` is None (undefined for a constant). Returns
    ``(metrics, the constant)``."""
    from workbench.metrics import compute_metrics

    train = np.asarray(ds.column("train", "label"), dtype=np.float64)
    labels = np.asarray(ds.column(split, "label"), dtype=np.float64)
    value = float(np.median(train))
    quiet = _ConstantCorrelation()
    logging.getLogger("workbench.metrics").addFilter(quiet)
    try:
        metrics: dict[str, float | None] = dict(
            compute_metrics(ds.info.metric_set, np.full(len(labels), value), labels))
    finally:
        logging.getLogger("workbench.metrics").removeFilter(quiet)
    if "corr" in metrics:
        metrics["corr"] = None
    return metrics, value


def compare(ds: MSADataset, evals: dict[str, CheckpointEval], out: Path
            ) -> tuple[dict[str, Any], list[Path]]:
    """The majority row and each student's complete-input test metrics in one results
    file (``out/results.json``, ``results.md``) and the students' missing-rate sweeps in one
    plot (``out/robustness.png``)."""
    from eval.evaluate import plot_metrics
    from eval.plots import robustness_curve
    from eval.report import write_results

    first = next(iter(evals.values()))
    majority, value = majority_metrics(ds, first.split)
    board: dict[str, Any] = {MAJORITY: majority}
    board.update({name: ev.metrics for name, ev in evals.items()})
    robust = {name: ev.robustness() for name, ev in evals.items() if ev.sweep}
    results: dict[str, Any] = {
        "metric_set": first.metric_set, "leaderboard": board,
        "meta": {"split": first.split, "n_samples": first.n_samples,
                 "majority_constant": value,
                 "checkpoints": {name: str(ev.path) for name, ev in evals.items()},
                 "note": "majority: the train labels' median predicted for every sample; "
                         "students: complete inputs; robustness: one missing rate for every "
                         "modality a student reads"}}
    if robust:
        results["robustness"] = robust
    written = list(write_results(out, results, row_header="model"))
    if robust:
        written.append(robustness_curve(robust, plot_metrics(first.metric_set, first.metrics),
                                        out_path=out / "robustness.png"))
    return results, written


def run_demo(cfg: DemoConfig, reporter: DemoReporter | None = None) -> DemoSummary:
    """Run the demo (resumably) and return what it made."""
    from workbench.data import load_dataset

    report = reporter or DemoReporter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    report.stage("data")
    data, source = _data(cfg, report)
    ds = load_dataset(data)
    report.note(repr(ds))
    report.stage("1/3 teacher caching job")
    cache = _cache(cfg, data, report)
    report.stage("2/3 distillation")
    media = cfg.media and cfg.data is None
    run_dir = cfg.out / f"student-{data.name or 'data'}"
    overrides = MEDIA_TRAIN if media else []
    best = _distill(data, cache, run_dir, report, overrides)
    report.note(f"student checkpoint: {best}")
    text_best = None
    if media:
        # the same clips, cache and recipe, the words alone: what hearing the voice adds
        text_best = _distill(replace(data, modalities=["text"]), cache,
                             run_dir.with_name(run_dir.name + "-text"), report, overrides)
        report.note(f"text-only student checkpoint: {text_best}")
    report.stage("3/3 evaluation")
    eval_dir = run_dir / "eval-test"
    ev, written = _evaluate(cfg, best, eval_dir, report,
                            name=TEXT_AUDIO if media else "")
    summary = DemoSummary(data=data, data_source=source, dataset=repr(ds), cache=cache,
                          checkpoint=best, evaluation=ev, written=written, eval_dir=eval_dir)
    if text_best is not None:
        text_ev, _ = _evaluate(cfg, text_best, text_best.parent / "eval-test", report,
                               name=TEXT_ONLY, cost=False)
        summary.compare_dir = cfg.out / COMPARE_DIR
        summary.comparison, compared = compare(ds, {TEXT_ONLY: text_ev, TEXT_AUDIO: ev},
                                               summary.compare_dir)
        report.comparison_done(summary.comparison, compared)
    return summary
