"""The demo: the three jobs end to end on embedded defaults (``workbench demo``).

data (the synthetic set by default; with ``media`` synthetic mp4 clips decoded by
:func:`workbench.data.ingest.ingest_media` into eGeMAPS LLD sequences, frames and
acoustic cues the text-only teacher reads) -> teacher caching (Gemma 3 270M on CPU through
transformers, soft labels on the train split) -> distillation (MiniLM-L6 + LoRA,
``configs/distill/synth_demo.yaml``) -> evaluation (test split, missing-rate sweep, cost).
Each step calls the library entry users call (:func:`teachers.run.run_cache_job`,
:func:`students.trainer.train`, :func:`eval.evaluate.evaluate_checkpoint`). A rerun reuses
the cache (no teacher calls) and the finished student.

:func:`run_demo` reports through a :class:`DemoReporter` (the default one logs); the
command prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from eval.evaluate import CheckpointEval, Progress
from teachers.run import JobSummary, ProgressFactory
from workbench.config import DataConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEMO_TEACHER = REPO / "configs" / "teachers" / "gemma3_270m_cpu.yaml"
DEMO_RECIPE = REPO / "configs" / "distill" / "synth_demo.yaml"
DEMO_TEMPLATE = "sentiment_polarity"  # the 270M base model answers in words, not digits
SYNTH_DIR = "synth"
MEDIA_SRC_DIR = "synth_media"
MEDIA_DATA_DIR = "data_media"


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
    media_clips: int = 48
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

    @property
    def robustness_plot(self) -> Path:
        return self.eval_dir / "robustness.png"


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
        lambda: write_media_dataset(src, MediaSynthSpec(n=cfg.media_clips, seed=0)),
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


def _distill(data: DataConfig, cache: JobSummary, run_dir: Path, report: DemoReporter
             ) -> Path:
    from students.trainer import TrainError, train
    from workbench.config import DistillConfig, load_config

    dcfg = load_config(DistillConfig, DEMO_RECIPE, [
        f"signals.cache_dir={cache.cache_dir}", f"signals.soft_label_template={DEMO_TEMPLATE}",
        f"train.output_dir={run_dir}"])
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


def _evaluate(cfg: DemoConfig, best: Path, eval_dir: Path, report: DemoReporter
              ) -> tuple[CheckpointEval, list[Path]]:
    from eval.evaluate import evaluate_checkpoint, write_checkpoint_results
    from eval.options import options_for
    from students.checkpoint import unique_names

    opts = options_for(best, split="test", missing_rates=cfg.missing_rates, seeds=cfg.seeds,
                       batch_size=None, cost=True, device="cpu", patterns=None,
                       latency_samples=50, device_cost_per_hour=0.0)
    name = unique_names([best])[0]
    with report.evaluation(name) as progress:
        ev = evaluate_checkpoint(best, opts, name=name, progress=progress)
        written = write_checkpoint_results(ev, eval_dir)
    report.eval_done(ev, written)
    return ev, written


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
    run_dir = cfg.out / f"student-{data.name or 'data'}"
    best = _distill(data, cache, run_dir, report)
    report.note(f"student checkpoint: {best}")
    report.stage("3/3 evaluation")
    eval_dir = run_dir / "eval-test"
    ev, written = _evaluate(cfg, best, eval_dir, report)
    return DemoSummary(data=data, data_source=source, dataset=repr(ds), cache=cache,
                       checkpoint=best, evaluation=ev, written=written, eval_dir=eval_dir)
