"""``workbench demo``: prints what :func:`eval.demo.run_demo` does."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workbench.cli.common import console, data_config, err_console
from workbench.config import ConfigError


def demo_data(source: str) -> tuple[str, list[str]]:
    """The data source ``--data`` names and its DataConfig overrides.

    A folder holding the shared MOSI files (``mosi_label.csv`` +
    ``mosi_bclstm_features.npz``) is read through ``configs/data/mosi.yaml``; anything
    else is a data YAML or a dataset path.
    """
    from eval.demo import REPO

    folder = Path(source)
    if folder.is_dir() and (folder / "mosi_label.csv").is_file():
        feats = folder / "mosi_bclstm_features.npz"
        if not feats.is_file():
            raise ConfigError(f"{folder} has mosi_label.csv but no {feats.name}; give a data "
                              "YAML (see configs/data/mosi.yaml) that names its feature file")
        return str(REPO / "configs" / "data" / "mosi.yaml"), [
            f"path={folder / 'mosi_label.csv'}", f"features={feats}"]
    return source, []


def _reporter():
    from eval.demo import DemoReporter
    from workbench.cli.cache import job_progress, print_report
    from workbench.cli.evaluate import eval_progress, print_eval, print_metric_tables

    class Printer(DemoReporter):
        def stage(self, title: str) -> None:
            console.rule(f"[bold]{escape(title)}")

        def note(self, text: str) -> None:
            console.print(text, markup=False, highlight=False)

        def cache_progress(self):
            return job_progress

        def cache_done(self, summary) -> None:
            print_report(summary.report, summary.status)

        @contextmanager
        def evaluation(self, name: str):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          console=err_console, transient=True) as bar:
                yield eval_progress(bar, bar.add_task(escape(name), total=None))

        def eval_done(self, ev, written) -> None:
            print_eval(ev, written)

        def comparison_done(self, results, written) -> None:
            meta = results["meta"]
            console.rule("[bold]text + audio against text alone")
            print_metric_tables(f"{meta['split']} split, {meta['n_samples']} clips; majority: "
                                f"{meta['majority_constant']:g} for every clip",
                                results["leaderboard"], results["metric_set"], "model")
            console.print("wrote " + ", ".join(escape(str(p)) for p in written))

    return Printer()


def demo(
    data: Annotated[str, typer.Option(
        help="Data YAML, MMSA pickle, dataset path or the shared MOSI folder "
             "(default: the synthetic dataset).")] = "",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where everything goes.")] = Path("runs/demo"),
    samples: Annotated[int, typer.Option(
        help="Synthetic utterances (default 400) or, with --media, clips (default 240: "
             "120 train / 60 valid / 60 test) to generate.")] = 0,
    seeds: Annotated[str, typer.Option(help="Mask seeds of the missing-rate sweep.")] = "1111,1112,1113",
    missing_rates: Annotated[str, typer.Option(help="Missing rates of the sweep.")] = "0:0.9:0.1",
    media: Annotated[bool, typer.Option(
        "--media", help="Run from raw files: synthetic mp4 clips decoded into frames, 16 kHz "
                        "audio, eGeMAPS sequences and acoustic cues (`workbench data media`); "
                        "a text + audio and a text-only student against the majority class.")
    ] = False,
) -> None:
    """The three jobs end to end on embedded defaults: teacher cache, distillation, evaluation.

    Teacher: Gemma 3 270M on CPU (transformers); student: MiniLM-L6 + LoRA; cache: SQLite
    in OUT/cache. Rerunning reuses the cache (no teacher calls) and the finished student.
    """
    from eval.demo import MEDIA_CLIPS, DemoConfig, run_demo
    from eval.options import parse_rates, parse_seeds

    samples = samples or (MEDIA_CLIPS if media else 400)
    if not data and samples < 20:
        raise ConfigError(f"--samples={samples} is too small to fill train/valid/test; "
                          "use at least 20")
    if media and data:
        raise ConfigError("--media runs on its own synthetic clips; drop --data, or ingest "
                          "your files with `workbench data media` and pass --data OUT")
    cfg = DemoConfig(out=out, samples=samples, seeds=parse_seeds(seeds),
                     missing_rates=parse_rates(missing_rates), media=media,
                     media_clips=samples)
    if data:
        source, overrides = demo_data(data)
        cfg.data, cfg.data_source = data_config(source, overrides), source
    summary = run_demo(cfg, _reporter())
    console.rule("[bold]done")
    console.print(f"robustness plot: {escape(str(summary.robustness_plot))}")
    console.print(f"next: workbench predict {escape(str(summary.checkpoint))} --data "
                  f"{escape(summary.data_source)} --out {escape(str(out / 'predictions.csv'))}")
