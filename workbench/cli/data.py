"""``workbench data``: validate, import, media, synth, augment, stats.

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


@app.command("media")
def data_media(
    source: SourceArg,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="DataConfig overrides (e.g. video_file_column=video) and MediaConfig ones as "
             "media.KEY=VALUE (e.g. media.frames=4 media.image_encoder=DIR).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset directory.")] = Path("runs/data/media"),
    processes: Annotated[int, typer.Option(help="Worker processes (--engine local).")] = 1,
    engine: Annotated[str | None, typer.Option(
        help="local: decode in --processes worker processes here; ray: one Ray task "
             "per clip (1 CPU each) on a Ray cluster. On a cluster the media files and "
             "--out must be on storage every node mounts at the same path (the workers read "
             "the media and write frames, audio and clip records into OUT/media) "
             "[default: local].")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="With --engine ray: the cluster to join (auto, HOST:6379, ray://HOST:10001); "
             "empty starts a local instance on this machine.")] = None,
) -> None:
    """Decode the video / audio / image files a manifest names into a dataset: frames
    (JPEG), 16 kHz audio, eGeMAPS features, acoustic cues, optional frame embeddings.
    Resumable (a rerun skips clips done); failing clips are listed in
    OUT/media_errors.jsonl. Past one machine: --engine ray."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from workbench.cli.common import data_config, err_console
    from workbench.config import MediaConfig, MediaJobConfig, from_dict
    from workbench.config.loader import apply_overrides
    from workbench.data.ingest import ERRORS_FILE, ingest_media

    overrides = overrides or []
    media_ov = [o.removeprefix("media.") for o in overrides if o.startswith("media.")]
    data_ov = [o for o in overrides if not o.startswith("media.")]
    dcfg = data_config(source, data_ov)
    options = {"processes": processes, "engine": engine, "ray_address": ray_address}
    mdict = apply_overrides({k: v for k, v in options.items() if v is not None}, media_ov)
    cfg = MediaJobConfig(data=dcfg, media=from_dict(MediaConfig, mdict, prefix="media"),
                         out=str(out))
    with Progress(TextColumn("ingesting"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[errors]} errors"), console=err_console,
                  transient=True) as bar:
        task = bar.add_task("media", total=None, errors=0)
        errors = 0

        def progress(rec: dict) -> None:
            nonlocal errors
            errors += rec["status"] != "ok"
            bar.update(task, advance=1, errors=errors)

        report = ingest_media(cfg, progress=progress)
    for e in report.errors:
        console.print(f"[yellow]error[/] {escape(e['id'])}: {escape(e['reason'])}")
    parts = sum(report.seconds.values()) or 1.0
    shares = ", ".join(f"{k} {v / parts:.0%}" for k, v in sorted(report.seconds.items()))
    console.print(f"ingested {report.ok} of {report.clips} clips into {escape(str(out))} "
                  f"({report.done} decoded now, {report.skipped} already done, "
                  f"{len(report.errors)} errors{', in ' + escape(str(out / ERRORS_FILE)) if report.errors else ''})"
                  f" in {report.wall_s:.1f}s" + (f"; time: {shares}" if report.done else ""))
    console.print(f"use it with data.path={escape(str(out))} "
                  + escape("(acoustic cues for text-only teachers: cache.cue_fields=[acoustic])"))


@app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/synth"),
    n: Annotated[int, typer.Option(help="Number of utterances (default 600; 48 with --media).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    media: Annotated[bool, typer.Option("--media", help="Write real mp4 clips (drawn faces, "
                                        "voiced tones) and a manifest naming them, for "
                                        "`workbench data media`.")] = False,
    domains: Annotated[int, typer.Option(help="Domains differing in vocabulary and feature "
                                         "shift (0: none; 2..6), declared as data.domain.")] = 0,
) -> None:
    """Generate the synthetic MSA dataset (manifest.csv + features.npz + data.yaml), or
    with --media a folder of mp4 clips plus manifest.csv + data.yaml."""
    from workbench.data.synth import SynthSpec, write_with_config

    n = n or (48 if media else 600)
    if n < 20:
        raise ConfigError(f"--n={n} is too small to fill train/valid/test; use at least 20")
    if media:
        from workbench.data.synth_media import MediaSynthSpec, write_media_dataset

        config = write_media_dataset(out, MediaSynthSpec(n=n, seed=seed))
        console.print(f"wrote {n} synthetic clips to {escape(str(out / 'videos'))}; config: "
                      f"{escape(str(config))}; next: workbench data media {escape(str(config))} "
                      f"--out DIR")
        return
    if domains == 1 or not 0 <= domains <= 6:
        raise ConfigError(f"--domains={domains}: use 0 (none) or 2..6")
    config = write_with_config(out, SynthSpec(n=n, seed=seed, domains=domains))
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
    recipe: Annotated[Path | None, typer.Option(
        help="Distillation recipe whose student.text_encoder counts the tokens and whose "
             "student.max_text_len is the limit: texts over it are counted.")] = None,
    max_text_len: Annotated[int, typer.Option(
        "--max-text-len", help="Count the texts longer than this many tokens (the "
                               "student's max_text_len; overrides the recipe's).")] = 0,
) -> None:
    """Split sizes, label distribution, modality availability, text lengths in the student
    encoder's tokens (and, with --recipe or --max-text-len, the texts it would cut)."""
    from workbench.data.stats import dataset_stats, token_stats

    if max_text_len < 0:
        raise ConfigError(f"--max-text-len={max_text_len}: use a positive token count (0: the "
                          "recipe's student.max_text_len, or no limit)")
    encoder, limit = "minilm", max_text_len or None
    if recipe is not None:
        from workbench.config import DistillConfig, load_config

        student = load_config(DistillConfig, recipe).student
        encoder, limit = student.text_encoder, limit or student.max_text_len
    _, ds = load_data(source, overrides)
    stats = dataset_stats(ds)
    stats["tokens"] = tokens = token_stats(ds, encoder, limit)
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
    _print_tokens(tokens)


def _print_tokens(tokens: dict) -> None:
    """The token-length table of ``data stats`` (or why there is none), and what a limit cuts."""
    from workbench.data.lengths import percent

    if "note" in tokens:
        console.print(f"[yellow]note[/]: {escape(tokens['note'])}")
        return
    limit = tokens["limit"]
    console.print(f"text length in tokens of student.text_encoder={escape(tokens['encoder'])} "
                  "(special tokens included):")
    table = Table()
    for name in ("split", "p50", "p95", "max", *([f"over {limit}", "share"] if limit else [])):
        table.add_column(name, justify="left" if name == "split" else "right", no_wrap=True)
    for split, t in tokens["splits"].items():
        figures = [t["p50"], t["p95"], t["max"], *([t["over"], percent(t["share"])] if limit else [])]
        table.add_row(split, *(map(str, figures) if t else ["-"] * (5 if limit else 3)))
    console.print(table)
    if tokens.get("warning"):
        console.print(f"[yellow]cut[/]: {escape(tokens['warning'])}")
    elif limit:
        console.print(f"student.max_text_len={limit} cuts no text")
    else:
        console.print("count the texts a student would cut: --max-text-len N, or --recipe "
                      "configs/distill/X.yaml (its student.max_text_len)")
