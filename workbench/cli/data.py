"""``workbench data``: validate, import, synth, augment, stats.

Data commands take a SOURCE (a data YAML config, or a dataset path: .pkl, .csv/.jsonl,
or a directory) followed by ``key=value`` overrides of :class:`DataConfig` fields::

    workbench data stats configs/data/mosi.yaml
    workbench data import configs/data/mosi.yaml --out runs/data/mosi
    workbench data validate my.pkl nonfinite=zero
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from workbench.cli.common import (
    OverridesArg,
    SourceArg,
    check_empty_out,
    console,
    load_data,
    new_app,
)
from workbench.config import ConfigError

app = new_app("Import, validate and describe datasets.")


@app.command("validate")
def data_validate(
    source: SourceArg,
    overrides: OverridesArg = None,
    unlabeled: Annotated[bool, typer.Option(
        "--unlabeled", help="Data a trained model is only applied to (workbench predict "
                            "--new-data): rows without a label are accepted "
                            "(labels=optional).")] = False,
) -> None:
    """Check a dataset: duplicate ids, empty text, NaN/inf, shapes, labels, splits, media."""
    cfg, ds = load_data(source, [*(overrides or []), *(["labels=optional"] if unlabeled else [])])
    console.print(f"[green]ok[/]: {ds.num_rows()} samples in {escape(cfg.path)} "
                  f"({', '.join(f'{s}={ds.num_rows(s)}' for s in ds.splits)}), "
                  f"fingerprint {ds.fingerprint}")


@app.command("import")
def data_import(
    source: SourceArg,
    overrides: OverridesArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/data"),
    force: Annotated[bool, typer.Option(help="Overwrite a non-empty --out.")] = False,
) -> None:
    """Convert an MMSA pickle or a manifest (+ .npz) to the internal Arrow format."""
    from workbench.config import dump_config

    check_empty_out(out, force)
    cfg, ds = load_data(source, overrides)
    ds.save(out)
    dump_config(cfg, out, "data_config.yaml")
    console.print(f"wrote {escape(repr(ds))} to {escape(str(out))}")


@app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/synth"),
    n: Annotated[int, typer.Option(help="Number of utterances.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate the synthetic MSA dataset (manifest.csv + features.npz + data.yaml)."""
    from workbench.data.synth import SynthSpec, write_with_config

    if n < 20:
        raise ConfigError(f"--n={n} is too small to fill train/valid/test; use at least 20")
    config = write_with_config(out, SynthSpec(n=n, seed=seed))
    console.print(f"wrote {n} synthetic utterances to {escape(str(out / 'manifest.csv'))}; "
                  f"config: {escape(str(config))}")


@app.command("augment")
def data_augment(
    data: Annotated[str, typer.Option(help="Data YAML config or dataset path (the source).")],
    cache: Annotated[Path, typer.Option(help="Teacher cache holding the paraphrase job.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    template: Annotated[str, typer.Option(help="Template of the rewrites.")] = "paraphrase",
    teacher: Annotated[str, typer.Option(help="Teacher of the job, if the cache has several.")] = "",
    force: Annotated[bool, typer.Option(help="Overwrite a non-empty --out.")] = False,
    overrides: OverridesArg = None,
) -> None:
    """Write the teacher's rewrites of the train transcripts as a dataset (QASA-style
    augmentation): manifest.csv + features.npz + data.yaml, for a second teacher pass
    (`cache run --data OUT/data.yaml --template sentiment_polarity`) and
    `train.augment_data=OUT`."""
    from workbench.data.augment import build_augmented, write_augmented

    check_empty_out(out, force)
    cfg, ds = load_data(data, overrides)
    samples, report = build_augmented(ds, cache, template, teacher)
    path = write_augmented(out, samples, cfg, report)
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(report.skipped.items())) or "none"
    left_out = f"; {report.not_train} non-train rewrites left out" if report.not_train else ""
    console.print(f"wrote {report.written} rewrites of {report.sources_covered}/{report.sources} "
                  f"train samples to {escape(str(out))} (job {report.job}; skipped {skipped}"
                  f"{left_out}); data config: {escape(str(path))}")


@app.command("stats")
def data_stats(
    source: SourceArg,
    overrides: OverridesArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Split sizes, label distribution, modality availability."""
    from workbench.data.stats import dataset_stats

    _, ds = load_data(source, overrides)
    stats = dataset_stats(ds)
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    console.print(f"[bold]{escape(stats['name'])}[/]  task={stats['task']}  "
                  f"metrics={stats['metric_set']}  fingerprint={stats['fingerprint']}")
    dims = ", ".join(f"{m}: {stats['feature_kind'][m]} d={d}"
                     for m, d in stats["feature_dims"].items())
    console.print(f"modalities: {', '.join(stats['modalities'])}" + (f"  ({dims})" if dims else ""))
    table = Table()
    table.add_column("split", no_wrap=True)
    table.add_column("n", justify="right", no_wrap=True)
    for m in stats["modalities"]:
        table.add_column(f"has {m}", justify="right", no_wrap=True)
    table.add_column("labels", overflow="fold")
    for split, e in stats["splits"].items():
        if "label" in e:
            lab = e["label"]
            desc = (f"mean {lab['mean']:+.2f} sd {lab['std']:.2f} "
                    f"+{lab['positive']}/-{lab['negative']}/0:{lab['zero']}") if lab else "-"
            if "label_hist" in e:
                desc += "  " + " ".join(f"{k:+d}:{v}" for k, v in e["label_hist"].items())
        else:
            desc = " ".join(f"{k}:{v}" for k, v in e["classes"].items())
        table.add_row(split, str(e["n"]), *[str(e["available"][m]) for m in stats["modalities"]],
                      escape(desc))
    console.print(table)
