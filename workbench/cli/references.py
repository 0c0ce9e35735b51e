"""``workbench baselines`` and ``workbench eval-teacher``: the reference rows a student is
compared with (:mod:`eval.baselines`, :mod:`eval.teacher_eval`), printed as a table and,
with ``--out``, written as a ``results.json`` that ``workbench eval ... --reference DIR``
shows beside the checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workbench.cli.common import (
    DeviceOpt,
    OverridesArg,
    SourceArg,
    ThreadsOpt,
    console,
    data_config,
    set_threads,
)

OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Write results.json / results.md (+ config.yaml) here, for "
                        "`workbench eval ... --reference DIR`.")]
SplitOpt = Annotated[str, typer.Option(help="Split to report.")]


def _show(table, out: Path | None, config, head: str) -> None:
    from eval.references import write_reference
    from workbench.cli.evaluate import print_metric_tables

    console.print(head, highlight=False)
    print_metric_tables(f"{table.split} split ({table.n_samples} samples)", table.rows,
                        table.metric_set, "system")
    if out is None:
        console.print("pass --out DIR to write results.json for the leaderboard "
                      "(`workbench eval ... --reference DIR`)", highlight=False)
        return
    written = write_reference(table, out, config)
    console.print("wrote " + ", ".join(escape(str(p)) for p in written))


def baselines(
    data: SourceArg,
    overrides: OverridesArg = None,
    split: SplitOpt = "test",
    recipe: Annotated[Path | None, typer.Option(
        help="Distillation recipe whose student.text_encoder and student.max_text_len the "
             "probe uses (--encoder / --max-text-len still win).")] = None,
    encoder: Annotated[str | None, typer.Option(
        help="Frozen text encoder of the probe: minilm or a local directory (default: "
             "minilm, or the recipe's).")] = None,
    max_text_len: Annotated[int | None, typer.Option(
        help="Tokens read per text (default: 64, or the recipe's).")] = None,
    features: Annotated[bool, typer.Option(
        help="Also probe text + the audio/vision features where the data has them.")] = True,
    folds: Annotated[int, typer.Option(
        help="Cross-validation folds on train choosing the probe's regularisation.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the folds.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Texts per encoder batch.")] = 64,
    out: OutOpt = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 0,
) -> None:
    """Baselines fitted on train, reported on a split: the majority class of train (the
    train mean for scores) and a frozen-encoder linear probe (logistic / ridge regression
    over mean-pooled token states, standardised, regularisation by cross-validation on
    train), also over text + audio/vision features where there are some. DATA's
    data.subset applies."""
    from eval.baselines import BaselineOptions, run_baselines
    from workbench.config import DistillConfig, StudentConfig, load_config

    set_threads(threads)
    dcfg = data_config(data, overrides or [])
    student = load_config(DistillConfig, recipe).student if recipe else StudentConfig()
    opts = BaselineOptions(split=split, encoder=encoder or student.text_encoder,
                           max_text_len=max_text_len or student.max_text_len,
                           features=features, folds=folds, seed=seed, batch_size=batch_size,
                           device=device)
    table = run_baselines(dcfg, opts)
    head = (f"[bold]baselines[/] on {escape(table.data['name'])}, fitted on "
            f"{table.meta['n_train']} train samples; {table.meta['seconds']:.0f} s "
            f"(encoding {table.meta['embed_seconds']:.0f} s)")
    _show(table, out, {"data": dcfg, "baselines": opts}, head)


def eval_teacher(
    cache: Annotated[Path, typer.Argument(help="Teacher cache directory (cache.sqlite).")],
    data: Annotated[str, typer.Option(
        help="Data YAML or dataset path the cache was made from.")],
    overrides: OverridesArg = None,
    split: SplitOpt = "test",
    template: Annotated[str, typer.Option(
        help="The job's template (default: the cache's one soft-label template for the "
             "data).")] = "",
    teacher: Annotated[str, typer.Option(help="The job's teacher model id.")] = "",
    job: Annotated[str, typer.Option(help="A job id (`workbench cache status` lists them).")
                   ] = "",
    out: OutOpt = None,
) -> None:
    """Score a teacher cache as a predictor: the argmax of its soft label (classes) or its
    expected score against gold on a split, on the answered samples only and with the
    unanswered predicted as the train majority class (mean), with the answer rate."""
    from eval.teacher_eval import TeacherEvalOptions, score_teacher

    dcfg = data_config(data, overrides or [])
    opts = TeacherEvalOptions(split=split, template=template, teacher=teacher, job=job)
    table = score_teacher(cache, dcfg, opts)
    m = table.meta
    why = ", ".join(f"{k} {v}" for k, v in m["unanswered"].items()) or "none"
    head = (f"[bold]teacher[/] {escape(m['job']['teacher'])}, template "
            f"{escape(m['job']['template'])} (job {m['job']['job']}): answered {m['answered']} "
            f"of {m['samples']} {table.split} samples ({100 * m['answer_rate']:.1f}%; the job "
            f"asked {m['asked']}); unanswered: {escape(why)}")
    _show(table, out, {"data": dcfg, "teacher_eval": opts}, head)
