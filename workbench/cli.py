"""The ``workbench`` command.

Data commands take a SOURCE (a data YAML config, or a dataset path: .pkl, .csv/.jsonl,
or a directory) followed by ``key=value`` overrides of :class:`DataConfig` fields::

    workbench data stats configs/data/mosi.yaml
    workbench data import configs/data/mosi.yaml --out runs/data/mosi
    workbench data validate my.pkl nonfinite=zero
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workbench.config import ConfigError, DataConfig, load_config

app = typer.Typer(
    help="Distil multimodal LLM teachers into compact multimodal sentiment students.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Import, validate and describe datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
cache_app = typer.Typer(help="Teacher caching jobs: run, status, retry, export, merge.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("workbench")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("httpx", "httpx2", "openai", "urllib3", "datasets", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def data_config(source: str, overrides: list[str]) -> DataConfig:
    """A :class:`DataConfig` from a YAML file or a dataset path, plus overrides."""
    overrides = [o.removeprefix("data.") for o in overrides]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"expected key=value overrides after SOURCE, got {bad}")
    if source.endswith((".yaml", ".yml")):
        return load_config(DataConfig, source, overrides)
    from workbench.data import imported_info

    info = imported_info(source)
    seeded = []
    if info is not None:  # an imported dataset describes itself; overrides still win
        seeded = [f"name={info.name}", f"task={info.task}", f"metric_set={info.metric_set}",
                  f"label_range={list(info.label_range)}", f"class_names={info.class_names}"]
    return load_config(DataConfig, None, [f"path={source}", *seeded, *overrides])


SourceArg = Annotated[str, typer.Argument(help="Data YAML config, or a dataset path.")]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="DataConfig overrides, e.g. modalities=[text,audio].")
]


def _load(source: str, overrides: list[str] | None):
    from workbench.data import DataError, load_dataset

    try:
        cfg = data_config(source, overrides or [])
        return cfg, load_dataset(cfg)
    except (ConfigError, DataError) as e:
        raise _fail(str(e)) from None


@data_app.command("validate")
def data_validate(source: SourceArg, overrides: OverridesArg = None) -> None:
    """Check a dataset: duplicate ids, empty text, NaN/inf, shapes, labels, splits, media."""
    cfg, ds = _load(source, overrides)
    console.print(f"[green]ok[/]: {ds.num_rows()} samples in {cfg.path} "
                  f"({', '.join(f'{s}={ds.num_rows(s)}' for s in ds.splits)}), "
                  f"fingerprint {ds.fingerprint}")


@data_app.command("import")
def data_import(
    source: SourceArg,
    overrides: OverridesArg = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/data"),
    force: Annotated[bool, typer.Option(help="Overwrite a non-empty --out.")] = False,
) -> None:
    """Convert an MMSA pickle or a manifest (+ .npz) to the internal Arrow format."""
    from workbench.config import dump_config

    if out.exists() and any(out.iterdir()) and not force:
        raise _fail(f"{out} exists and is not empty: choose another --out or pass --force")
    cfg, ds = _load(source, overrides)
    ds.save(out)
    dump_config(cfg, out, "data_config.yaml")
    console.print(f"wrote {ds!r} to {out}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("runs/synth"),
    n: Annotated[int, typer.Option(help="Number of utterances.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate the synthetic MSA dataset (manifest.csv + features.npz + data.yaml)."""
    import yaml

    from workbench.data.synth import SynthSpec, write

    if n < 20:
        raise _fail(f"--n={n} is too small to fill train/valid/test; use at least 20")
    manifest = write(out, SynthSpec(n=n, seed=seed))
    cfg = {"name": "synth", "path": str(manifest), "features": str(out / "features.npz"),
           "feature_keys": {"audio": "audio", "vision": "vision"},
           "modalities": ["text", "audio", "vision"], "task": "regression",
           "metric_set": "mosi", "label_range": [-3, 3]}
    (out / "data.yaml").write_text(
        "# Synthetic MSA data written by `workbench data synth` (not real data).\n"
        + yaml.safe_dump(cfg, sort_keys=False))
    console.print(f"wrote {n} synthetic utterances to {manifest}; config: {out / 'data.yaml'}")


@data_app.command("augment")
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
    from workbench.cache.store import CacheError
    from workbench.data import DataError
    from workbench.data.augment import build_augmented, write_augmented

    if out.exists() and any(out.iterdir()) and not force:
        raise _fail(f"{out} exists and is not empty: choose another --out or pass --force")
    cfg, ds = _load(data, overrides)
    try:
        samples, report = build_augmented(ds, cache, template, teacher)
        path = write_augmented(out, samples, cfg, report)
    except (CacheError, DataError) as e:
        raise _fail(str(e)) from None
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(report.skipped.items())) or "none"
    console.print(f"wrote {report.written} rewrites of {report.sources_covered}/{report.sources} "
                  f"train samples to {out} (job {report.job}; skipped {skipped}"
                  f"{f'; {report.not_train} non-train rewrites left out' if report.not_train else ''})"
                  f"; data config: {path}")


def _label_stats(values: list[float]) -> dict[str, Any]:
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {
        "mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
        "min": float(a.min()), "max": float(a.max()),
        "positive": int((a > 0).sum()), "negative": int((a < 0).sum()), "zero": int((a == 0).sum()),
    }


def dataset_stats(ds) -> dict[str, Any]:
    """Split sizes, label distribution and modality availability of ``ds``."""
    import numpy as np

    from workbench.data import availability_counts

    out: dict[str, Any] = {
        "name": ds.info.name, "fingerprint": ds.fingerprint, "task": ds.info.task,
        "metric_set": ds.info.metric_set, "modalities": ds.info.modalities,
        "feature_dims": ds.info.feature_dims, "feature_kind": ds.info.feature_kind, "splits": {},
    }
    for split in ds.splits:
        samples = ds.samples(split)
        entry: dict[str, Any] = {"n": len(samples)}
        if ds.info.task == "regression":
            labels = [s.label for s in samples if s.label is not None]
            entry["label"] = _label_stats(labels)
            lo, hi = ds.info.label_range
            if labels:
                r = np.clip(np.round(np.asarray(labels)), lo, hi).astype(int)
                entry["label_hist"] = {int(k): int((r == k).sum()) for k in range(int(lo), int(hi) + 1)}
        else:
            names = ds.info.class_names
            entry["classes"] = {names[k]: sum(1 for s in samples if s.label_class == k)
                                for k in range(len(names))}
        entry["available"] = availability_counts(samples, ds.info.modalities)
        out["splits"][split] = entry
    return out


@data_app.command("stats")
def data_stats(
    source: SourceArg,
    overrides: OverridesArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Split sizes, label distribution, modality availability."""
    _, ds = _load(source, overrides)
    stats = dataset_stats(ds)
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    console.print(f"[bold]{stats['name']}[/]  task={stats['task']}  metrics={stats['metric_set']}  "
                  f"fingerprint={stats['fingerprint']}")
    dims = ", ".join(f"{m}: {stats['feature_kind'][m]} d={d}" for m, d in stats["feature_dims"].items())
    console.print(f"modalities: {', '.join(stats['modalities'])}" + (f"  ({dims})" if dims else ""))
    table = Table()
    table.add_column("split")
    table.add_column("n", justify="right")
    for m in stats["modalities"]:
        table.add_column(f"has {m}", justify="right")
    table.add_column("labels")
    for split, e in stats["splits"].items():
        if "label" in e:
            lab = e["label"]
            desc = (f"mean {lab['mean']:+.2f} sd {lab['std']:.2f} "
                    f"+{lab['positive']}/-{lab['negative']}/0:{lab['zero']}") if lab else "-"
            if "label_hist" in e:
                desc += "  " + " ".join(f"{k:+d}:{v}" for k, v in e["label_hist"].items())
        else:
            desc = " ".join(f"{k}:{v}" for k, v in e["classes"].items())
        table.add_row(split, str(e["n"]), *[str(e["available"][m]) for m in stats["modalities"]], desc)
    console.print(table)


# ------------------------------------------------------------------------- cache


def _split_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """Route ``teacher.x=1 cache.y=2 data.z=3`` to their sections."""
    out: dict[str, list[str]] = {"teacher": [], "cache": [], "data": []}
    for o in overrides:
        section, _, rest = o.partition(".")
        if section not in out or not rest or "=" not in rest:
            raise ConfigError(f"override {o!r} must look like teacher.KEY=V, cache.KEY=V or data.KEY=V")
        out[section].append(rest)
    return out


def _parse_shard(shard: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ConfigError(f"--shard={shard!r} must look like i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard={shard!r}: need 0 <= i < N")
    return i, n


class _JobProgress:
    """A rich progress bar: done/total, ok/errors, tokens, cost, ETA."""

    def __init__(self, total: int, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=err_console, transient=False)
        self.task = self.progress.add_task(label, total=total, stats="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, report, _out) -> None:
        stats = (f"ok {report.ok} err {report.errors}  tok {report.tokens_in}+{report.tokens_out}"
                 f"  ${report.cost_usd:.4f}")
        self.progress.update(self.task, completed=sum(report.finished.values()), stats=stats)


def _print_report(report, store, job: str) -> None:
    st = store.status(job)
    console.print(
        f"job {job}: {report.selected} samples, {report.unique_keys} keys, "
        f"{report.already_ok} already cached, {report.sent} sent "
        f"({report.ok} ok, {report.errors} errors, {report.retries} retries) in {report.wall_s:.1f}s; "
        f"tokens {report.tokens_in}+{report.tokens_out}, cost ${report.cost_usd:.4f}")
    if report.sent == 0:
        console.print("nothing to do: every key is already in the cache (no teacher calls)")
    if report.stopped == "budget":
        console.print("[yellow]stopped: teacher.budget_usd reached; rerun with a larger budget "
                      "to continue[/]")
    console.print(f"cache now: {st['ok']}/{st['keys']} ok, errors {st['errors'] or 'none'}, "
                  f"pending {st['pending']}")


@cache_app.command("run")
def cache_run(
    teacher: Annotated[Path, typer.Option(help="Teacher YAML (configs/teachers/...).")],
    data: Annotated[str, typer.Option(help="Data YAML config or dataset path.")],
    template: Annotated[str, typer.Option(help="Template name or .yaml path.")] = "sentiment_score",
    cache: Annotated[Path, typer.Option(help="Cache directory.")] = Path("runs/cache"),
    splits: Annotated[str, typer.Option(help="Comma-separated splits (default: all).")] = "",
    shard: Annotated[str, typer.Option(help="Deterministic subset i/N of the samples.")] = "0/1",
    variants: Annotated[int, typer.Option(help="Requests per sample (e.g. k paraphrases).")] = 1,
    limit: Annotated[int, typer.Option(help="Only the first N selected samples (0: all).")] = 0,
    overrides: Annotated[list[str] | None, typer.Argument(help="teacher.K=V, cache.K=V, data.K=V")] = None,
) -> None:
    """Ask a teacher about every sample and store the answers (resumable)."""
    from prompts import TemplateError, load_template
    from teachers import make_teacher
    from teachers.job import CachingJob, JobFailed
    from workbench.cache.store import CacheStore
    from workbench.config import CacheConfig, TeacherConfig, dump_config
    from workbench.data import DataError, load_dataset

    try:
        ov = _split_overrides(overrides or [])
        tcfg = load_config(TeacherConfig, teacher, ov["teacher"])
        ccfg = load_config(CacheConfig, None, [f"dir={cache}", f"template={template}", *ov["cache"]])
        dcfg = data_config(data, ov["data"])
        tmpl = load_template(ccfg.template)
        ds = load_dataset(dcfg)
        wanted = [s for s in splits.split(",") if s] or None
        shard_t = _parse_shard(shard)
    except (ConfigError, DataError, TemplateError) as e:
        raise _fail(str(e)) from None
    backend = make_teacher(tcfg)
    with CacheStore(ccfg.dir) as store:
        job = CachingJob(tcfg, ccfg, tmpl, ds, store, backend.model_id())
        planned = job.plan(wanted, shard_t, variants)
        if limit:
            planned = planned[:limit]
        dump_config({"teacher": tcfg, "cache": ccfg, "data": dcfg}, ccfg.dir / Path("jobs") / job.job_id)
        todo = len({p.key for p in planned} - store.ok_keys())
        try:
            if todo:
                backend.load()
                with _JobProgress(todo, f"{tmpl.name} x {tcfg.model}") as bar:
                    report = job.run(backend, planned, progress=bar)
            else:
                report = job.run(backend, planned)
        except JobFailed as e:
            raise _fail(str(e), code=1) from None
        finally:
            backend.close()
        _print_report(report, store, job.job_id)


def _store(cache: Path):
    from workbench.cache.store import CacheError, CacheStore

    try:
        return CacheStore(cache, create=False)
    except CacheError as e:
        raise _fail(str(e)) from None


@cache_app.command("status")
def cache_status(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")] = Path("runs/cache"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts by status and error kind, tokens and cost, per job."""
    with _store(cache) as store:
        jobs = store.jobs()
        out = {"cache": str(cache), "total": store.status(),
               "jobs": [{**j, "status": store.status(j["job"])} for j in jobs]}
    if as_json:
        print(json.dumps(out, indent=2))
        return
    table = Table(title=f"cache {cache}")
    for col in ("job", "template", "teacher", "data", "ok/keys", "errors", "pending",
                "tokens in+out", "cost $", "mean latency s"):
        table.add_column(col)
    for j in out["jobs"]:
        st = j["status"]
        errs = ", ".join(f"{k}={v}" for k, v in st["errors"].items()) or "-"
        table.add_row(j["job"], j["template"], j["teacher"], f"{j['data_name']} ({j['data_fingerprint']})",
                      f"{st['ok']}/{st['keys']}", errs, str(st["pending"]),
                      f"{st['tokens_in']}+{st['tokens_out']}", f"{st['cost_usd']:.4f}",
                      f"{st['mean_latency_s']:.3f}")
    console.print(table)


@cache_app.command("retry")
def cache_retry(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    teacher: Annotated[Path, typer.Option(help="Teacher YAML; must be the model the job used.")],
    errors: Annotated[str, typer.Option(help="Comma-separated error kinds (default: all).")] = "",
    job: Annotated[str, typer.Option(help="Job id (default: every job in the cache).")] = "",
    overrides: Annotated[list[str] | None, typer.Argument(help="teacher.K=V")] = None,
) -> None:
    """Re-send the requests whose current answer is an error (from the stored requests)."""
    from teachers import make_teacher
    from teachers.job import JobFailed, retry_errors
    from workbench.config import TeacherConfig

    try:
        ov = _split_overrides(overrides or [])
        tcfg = load_config(TeacherConfig, teacher, ov["teacher"])
    except ConfigError as e:
        raise _fail(str(e)) from None
    kinds = [k for k in errors.split(",") if k]
    backend = make_teacher(tcfg)
    with _store(cache) as store:
        try:
            reports = retry_errors(store, backend, tcfg, kinds=kinds, job=job or None)
        except (JobFailed, ValueError) as e:
            raise _fail(str(e), code=1) from None
        finally:
            backend.close()
        if not reports:
            console.print("no error rows to retry")
        for r in reports:
            _print_report(r, store, r.job)


@cache_app.command("export")
def cache_export(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=".parquet file or a directory (hf).")],
    fmt: Annotated[str, typer.Option("--format", help="parquet or hf.")] = "parquet",
    job: Annotated[str, typer.Option(help="Only this job id.")] = "",
) -> None:
    """Write the cache (one row per job and sample) as Parquet or a HF dataset on disk."""
    from workbench.cache.export import export

    if fmt not in ("parquet", "hf"):
        raise _fail(f"--format={fmt!r}: use parquet or hf")
    with _store(cache) as store:
        n = export(store, out, fmt, job or None)
    console.print(f"wrote {n} rows to {out}")


@cache_app.command("merge")
def cache_merge(
    dest: Annotated[Path, typer.Argument(help="Cache directory to merge into (created if absent).")],
    sources: Annotated[list[Path], typer.Argument(help="Cache directories to merge from.")],
) -> None:
    """Combine caches (e.g. shards from several machines) by key; idempotent."""
    from workbench.cache.store import CacheError, CacheStore

    with CacheStore(dest) as store:
        for src in sources:
            try:
                added = store.merge_from(src)
            except CacheError as e:
                raise _fail(str(e)) from None
            console.print(f"merged {src}: {added['attempts_added']} attempts added")
        st = store.status()
    console.print(f"{dest}: {st['ok']}/{st['keys']} keys ok")


# -------------------------------------------------------------------------- eval


def _set_threads(threads: int) -> None:
    """Apply a ``--threads`` option: 0 keeps torch's default."""
    if threads < 0:
        raise _fail(f"--threads={threads}: use 0 (torch's default) or a positive count")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _metric_table(title: str, rows: dict[str, Any], metric_set: str, first: str) -> Table:
    from eval.report import format_cell, order_metrics

    cols = order_metrics((m for r in rows.values() for m in r), metric_set)
    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for c in cols:
        table.add_column(c, justify="right")
    for name, metrics in rows.items():
        table.add_row(escape(str(name)), *[format_cell(c, metrics.get(c)) for c in cols])
    return table


def _print_cost(cost: dict[str, Any]) -> None:
    p, size = cost["parameters"], cost["size"]
    console.print(f"parameters {p['total']:,} total, {p['trainable']:,} trainable; checkpoint "
                  f"{size['mb']:.2f} MB on disk"
                  + (f" (without {'; '.join(size['excludes'])})" if size.get("excludes") else ""))
    speed = cost.get("speed")
    if speed is None:
        return
    lat, mem = speed["latency_batch1_ms"], speed["memory"]
    mem_text = f"maxrss {mem['maxrss_mb']:.0f} MB"
    if "rss_delta_mb" in mem:
        mem_text = f"RSS +{mem['rss_delta_mb']:.0f} MB since load, " + mem_text
    if "cuda_max_allocated_mb" in mem:
        mem_text += f", CUDA peak {mem['cuda_max_allocated_mb']:.0f} MB"
    console.print(f"student on {speed['device']} ({speed['threads']} threads): "
                  f"{speed['throughput_samples_per_s']:.1f} samples/s at batch "
                  f"{speed['batch_size']}; batch-1 latency p50 {lat['p50']:.1f} ms, p95 "
                  f"{lat['p95']:.1f} ms; {mem_text}")
    teacher, cmp_ = cost["teacher"], cost["comparison"]
    if cmp_["teacher_job"] is None:
        console.print(f"[yellow]teacher side unavailable[/]: {escape(teacher.get('note') or '')}"
                      + "".join(f"\n  {escape(w)}: {escape(j.get('reason', ''))}"
                                for w, j in teacher.get("jobs", {}).items()
                                if not j.get("available")))
        return
    job = teacher["jobs"][cmp_["teacher_job"]]
    per = job["per_sample"]
    console.print(f"teacher {escape(str(job['teacher']))} ({cmp_['teacher_job']}, "
                  f"{job['ok_samples']} cached samples): {per['latency_s'] * 1000:.1f} ms, "
                  f"{per['tokens_in']:.0f}+{per['tokens_out']:.0f} tokens, "
                  f"${per['cost_usd']:.6f} per sample")
    ratio = (f"student/teacher latency {cmp_['latency_ratio']:.3g} "
             f"(speedup {cmp_['speedup']:.3g}x)" if cmp_["latency_ratio"] is not None
             else f"latency ratio n/a: {cmp_.get('latency_note', '')}")
    if cmp_["cost_ratio"] is None:
        cost_r = f"cost ratio n/a: {cmp_.get('cost_note', '')}"
    elif cmp_.get("cost_basis") == "machine_time":
        cost_r = (f"student/teacher cost ratio {cmp_['cost_ratio']:.3g} in machine-seconds "
                  "per sample (a $0 local teacher; same-price hardware assumed)")
    else:
        cost_r = f"student/teacher cost ratio {cmp_['cost_ratio']:.3g} (USD per sample)"
    console.print(f"{escape(ratio)}; {escape(cost_r)}")


def _print_eval(ev, paths: list[Path]) -> None:
    console.print(f"\n[bold]{escape(ev.name)}[/] ({escape(str(ev.path))}), {ev.split} split, "
                  f"{ev.n_samples} samples, {ev.meta.kind}; {escape(ev.protocol['selection'])}")
    console.print(_metric_table(f"{ev.split} metrics", ev.conditions, ev.metric_set,
                                "condition"))
    rob = ev.robustness()
    if rob is not None:
        rows: dict[str, Any] = {f"{r:g}": rob["per_rate"][r] for r in rob["rates"]}
        rows["average"] = rob["average"]
        console.print(_metric_table(
            f"missing-rate sweep (mean ± std over seeds {','.join(map(str, ev.seeds))})",
            rows, ev.metric_set, "missing rate"))
    if ev.cost is not None:
        _print_cost(ev.cost)
    console.print("wrote " + ", ".join(escape(str(p)) for p in paths))


@app.command("eval")
def eval_checkpoints(
    checkpoints: Annotated[list[str], typer.Argument(
        help="Checkpoint dirs, run dirs holding checkpoint-best/, dirs of runs, or globs.")],
    data: Annotated[str | None, typer.Option(
        help="Data YAML or dataset path (default: the checkpoint's own data config).")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split to report (default: the checkpoint's eval.split, test).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output dir (default: <run>/eval-<split> beside checkpoint-best).")
    ] = None,
    missing_rates: Annotated[str | None, typer.Option(
        help="LNLN sweep a:b:step (inclusive), e.g. 0:0.9:0.1, a comma list, or none "
             "(default: the checkpoint's eval.missing_rates).")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="Comma-separated mask seeds (default: the checkpoint's eval.seeds).")] = None,
    missing_modality: Annotated[list[str] | None, typer.Option(
        help="Remove whole modalities: text, audio, vision or e.g. audio,vision; repeat for "
             "several patterns; none for no patterns (default: every pattern).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Batch size (default: the checkpoint's eval.batch_size).")] = None,
    no_cost: Annotated[bool, typer.Option(
        "--no-cost", help="Skip speed, memory and the teacher comparison.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: torch's default).")] = 0,
    latency_samples: Annotated[int, typer.Option(
        help="Batch-1 calls timed for the latency percentiles.")] = 50,
    device_cost_per_hour: Annotated[float, typer.Option(
        help="USD per hour of this machine, for the student/teacher cost ratio.")] = 0.0,
) -> None:
    """Evaluate checkpoints: metrics, missing-modality robustness, cost; several -> leaderboard."""
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from eval.evaluate import (
        EvalError,
        default_out_dir,
        evaluate_checkpoint,
        find_checkpoints,
        leaderboard,
        options_for,
        parse_patterns,
        parse_rates,
        parse_seeds,
        unique_names,
        write_checkpoint_results,
        write_leaderboard,
    )
    from eval.protocol import ProtocolError
    from students.checkpoint import CheckpointError
    from workbench.cache.store import CacheError
    from workbench.data import DataError

    _set_threads(threads)
    errors = (EvalError, ProtocolError, CheckpointError, ConfigError, DataError, CacheError)
    try:
        paths = find_checkpoints(checkpoints)
        names = unique_names(paths)
        dcfg = data_config(data, []) if data else None
        common = dict(
            split=split, batch_size=batch_size, cost=not no_cost, device=device,
            missing_rates=parse_rates(missing_rates) if missing_rates is not None else None,
            seeds=parse_seeds(seeds) if seeds is not None else None,
            patterns=parse_patterns(missing_modality) if missing_modality else None,
            latency_samples=latency_samples, device_cost_per_hour=device_cost_per_hour)
        options = [options_for(p, **common) for p in paths]
    except errors as e:
        raise _fail(str(e)) from None
    evals, datasets = [], {}
    for path, name, opts in zip(paths, names, options, strict=True):
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=err_console, transient=True) as bar:
            task = bar.add_task(escape(name), total=None)

            def progress(label: str, done: int, total: int, bar=bar, task=task) -> None:
                bar.update(task, description=escape(label), completed=done, total=total)

            try:
                ev = evaluate_checkpoint(path, opts, dcfg, data_source=data or "",
                                         datasets=datasets, name=name, progress=progress)
                target = (out / name if len(paths) > 1 else out) if out else \
                    default_out_dir(path, opts.split)
                written = write_checkpoint_results(ev, target)
            except errors as e:
                raise _fail(str(e)) from None
        _print_eval(ev, written)
        evals.append(ev)
    if len(evals) < 2:
        return
    try:
        board = leaderboard(evals)
        board_dir = out or Path(os.path.commonpath([p.resolve().parent for p in paths])) / \
            f"leaderboard-{evals[0].split}"
        written = write_leaderboard(evals, board_dir)
    except errors as e:
        raise _fail(str(e)) from None
    console.print()
    console.print(_metric_table(f"leaderboard, {board['split']} split, complete inputs",
                                board["complete"], board["metric_set"], "checkpoint"))
    if board["lnln"]:
        console.print(_metric_table("LNLN average over missing rates (mean ± std over seeds)",
                                    board["lnln"], board["metric_set"], "checkpoint"))
    console.print("wrote " + ", ".join(escape(str(p)) for p in written))


# ------------------------------------------------------------------- predict / export


def _one_checkpoint(arg: str) -> Path:
    from eval.evaluate import find_checkpoints

    found = find_checkpoints([arg])
    if len(found) > 1:
        raise _fail(f"{arg} holds {len(found)} checkpoints ({', '.join(map(str, found[:4]))}"
                    f"{', ...' if len(found) > 4 else ''}); name one checkpoint directory")
    return found[0]


@app.command("predict")
def predict_cmd(
    checkpoint: Annotated[str, typer.Argument(
        help="Checkpoint dir, or a run dir holding checkpoint-best/.")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output file; the format follows the suffix: .csv or .jsonl.")],
    data: Annotated[str | None, typer.Option(
        help="Data YAML or dataset path (default: the checkpoint's own data config).")] = None,
    split: Annotated[str, typer.Option(help="Split to predict, or all.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    missing_modality: Annotated[list[str] | None, typer.Option(
        help="Remove modalities for every sample: text, audio, vision or e.g. audio,vision "
             "(text -> [UNK], features -> zeros).")] = None,
    new_data: Annotated[bool, typer.Option(
        "--new-data", help="Accept data other than the training data when task, metric set "
                           "and features match (new utterances).")] = False,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0: torch's default).")] = 0,
) -> None:
    """Per-sample predictions (score / class, classes, modality availability, label) as CSV or JSONL."""
    from eval.evaluate import EvalError
    from eval.predict import PredictOptions, output_format, parse_drop, predict_checkpoint
    from students.checkpoint import CheckpointError
    from workbench.cache.store import CacheError
    from workbench.data import DataError

    _set_threads(threads)
    try:
        output_format(out)
        path = _one_checkpoint(checkpoint)
        opts = PredictOptions(split=split, batch_size=batch_size, device=device,
                              drop=parse_drop(missing_modality), new_data=new_data)
        res = predict_checkpoint(path, out, opts, data_config(data, []) if data else None,
                                 data_source=data or "")
    except (EvalError, CheckpointError, ConfigError, DataError, CacheError) as e:
        raise _fail(str(e)) from None
    per = ", ".join(f"{k} {v}" for k, v in res.splits.items())
    dropped = f", without {'+'.join(res.dropped)}" if res.dropped else ""
    console.print(f"wrote {len(res.rows)} predictions ({per}{dropped}, {res.device}) to "
                  f"{escape(str(res.out))}")


@app.command("export")
def export_cmd(
    checkpoint: Annotated[str, typer.Argument(
        help="Checkpoint dir, or a run dir holding checkpoint-best/.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Export directory (new or empty).")],
    onnx: Annotated[bool, typer.Option(
        "--onnx", help="Also write model.onnx (needs the onnx and onnxscript packages).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    device: Annotated[str, typer.Option(
        help="Where to load the checkpoint (a bitsandbytes base may need cuda).")] = "cpu",
) -> None:
    """Merge the LoRA adapter into the text encoder; write a standalone model (safetensors +
    export.json; load with students.export.load_exported)."""
    from eval.evaluate import EvalError
    from students.checkpoint import CheckpointError
    from students.export import ExportError, export_checkpoint, read_export

    try:
        path = _one_checkpoint(checkpoint)
        written = export_checkpoint(path, out, onnx=onnx, overwrite=force, device=device)
        spec = read_export(written)
    except (EvalError, CheckpointError, ConfigError, ExportError) as e:
        raise _fail(str(e)) from None
    how = spec["text_encoder"]
    what = {"merged_lora": "LoRA adapter merged into the text encoder",
            "full": "fine-tuned text encoder copied", "frozen": "frozen text encoder copied"}
    note = (f" (dequantized from {how['dequantized_from']}: float32 weights)"
            if how.get("dequantized_from") else "")
    console.print(f"exported {escape(str(path))} to {escape(str(written))}: "
                  f"{what.get(how['made_by'], how['made_by'])}{note}"
                  + (", model.onnx" if spec.get("onnx") else "")
                  + "; load with students.export.load_exported")


@app.command()
def distill(
    config: Annotated[Path, typer.Option(help="Distillation recipe (configs/distill/...).")],
    resume: Annotated[bool, typer.Option(help="Continue the run in train.output_dir.")] = False,
    overrides: Annotated[list[str] | None, typer.Argument(help="section.key=value overrides")] = None,
) -> None:
    """Train a student in this process (multi-GPU: `accelerate launch distill.py ...`)."""
    from students.checkpoint import CheckpointError
    from students.trainer import TrainError, train
    from workbench.cache.store import CacheError
    from workbench.config import DistillConfig
    from workbench.data import DataError

    try:
        cfg = load_config(DistillConfig, config, overrides or [])
        best = train(cfg, resume=resume)
    except (ConfigError, CacheError, DataError, TrainError, CheckpointError) as e:
        raise _fail(str(e)) from None
    console.print(f"best checkpoint: {best}")


REPO = Path(__file__).resolve().parents[1]
DEMO_TEACHER = REPO / "configs" / "teachers" / "gemma3_270m_cpu.yaml"
DEMO_RECIPE = REPO / "configs" / "distill" / "synth_demo.yaml"
DEMO_TEMPLATE = "sentiment_polarity"  # the 270M base model answers in words, not digits


def _demo_data(source: str, out: Path, n: int) -> tuple[str, list[str]]:
    """The demo's data source and its DataConfig overrides.

    Default: the synthetic dataset, written once to ``out/synth``. A folder holding the
    shared MOSI files (``mosi_label.csv`` + ``mosi_bclstm_features.npz``) is read through
    ``configs/data/mosi.yaml``; anything else is a data YAML or a dataset path.
    """
    if not source:
        if not (out / "synth" / "data.yaml").is_file():
            data_synth(out=out / "synth", n=n, seed=0)
        else:
            console.print(f"synthetic data: reusing {out / 'synth'}")
        return str(out / "synth" / "data.yaml"), []
    folder = Path(source)
    if folder.is_dir() and (folder / "mosi_label.csv").is_file():
        feats = folder / "mosi_bclstm_features.npz"
        if not feats.is_file():
            raise _fail(f"{folder} has mosi_label.csv but no {feats.name}; give a data YAML "
                        "(see configs/data/mosi.yaml) that names its feature file")
        return str(REPO / "configs" / "data" / "mosi.yaml"), [f"path={folder / 'mosi_label.csv'}",
                                          f"features={feats}"]
    return source, []


@app.command()
def demo(
    data: Annotated[str, typer.Option(
        help="Data YAML, MMSA pickle, dataset path or the shared MOSI folder "
             "(default: the synthetic dataset).")] = "",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where everything goes.")] = Path("runs/demo"),
    samples: Annotated[int, typer.Option(help="Synthetic utterances to generate.")] = 400,
    seeds: Annotated[str, typer.Option(help="Mask seeds of the missing-rate sweep.")] = "1111,1112,1113",
    missing_rates: Annotated[str, typer.Option(help="Missing rates of the sweep.")] = "0:0.9:0.1",
) -> None:
    """The three jobs end to end on embedded defaults: teacher cache, distillation, evaluation.

    Teacher: Gemma 3 270M on CPU (transformers); student: MiniLM-L6 + LoRA; cache: SQLite
    in OUT/cache. Rerunning reuses the cache (no teacher calls) and the finished student.
    """
    from students.trainer import TrainError, train
    from workbench.cache.store import CacheError
    from workbench.config import DistillConfig
    from workbench.data import DataError

    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]data")
    source, data_ov = _demo_data(data, out, samples)
    dcfg, ds = _load(source, data_ov)
    console.print(f"{ds!r}")
    console.rule("[bold]1/3 teacher caching job")
    cache = out / "cache"
    console.print(f"teacher {DEMO_TEACHER.relative_to(REPO)} on the train split, template {DEMO_TEMPLATE}, "
                  f"cache {cache}")
    cache_run(teacher=DEMO_TEACHER, data=source, template=DEMO_TEMPLATE, cache=cache,
              splits="train", shard="0/1", variants=1, limit=0,
              overrides=[f"data.{o}" for o in data_ov])
    console.rule("[bold]2/3 distillation")
    run_dir = out / f"student-{dcfg.name or 'data'}"
    try:
        cfg = load_config(DistillConfig, DEMO_RECIPE, [
            f"signals.cache_dir={cache}", f"signals.soft_label_template={DEMO_TEMPLATE}",
            f"train.output_dir={run_dir}"])
        cfg.data = dcfg
        resume = (run_dir / "config.yaml").is_file()
        try:
            best = train(cfg, resume=resume)
        except TrainError as e:
            if not resume:
                raise
            console.print(f"[yellow]cannot reuse {run_dir}[/] ({escape(str(e))}); training afresh")
            cfg.train.overwrite = True
            best = train(cfg, resume=False)
    except (ConfigError, CacheError, DataError, TrainError) as e:
        raise _fail(str(e)) from None
    console.print(f"student checkpoint: {best}")
    console.rule("[bold]3/3 evaluation")
    eval_dir = run_dir / "eval-test"
    eval_checkpoints([str(best)], data=None, split="test", out=eval_dir,
                     missing_rates=missing_rates, seeds=seeds, missing_modality=None,
                     batch_size=None, no_cost=False, device="cpu", threads=0,
                     latency_samples=50, device_cost_per_hour=0.0)
    console.rule("[bold]done")
    console.print(f"robustness plot: {eval_dir / 'robustness.png'}\n"
                  f"next: workbench predict {best} --data {source} --out {out / 'predictions.csv'}")


@app.command()
def doctor() -> None:
    """Versions, devices, and which optional backends work here (and why not)."""
    from workbench.doctor import report

    rows = report()
    table = Table(title="workbench doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for name, ok, detail in rows:
        mark = {True: "[green]ok[/]", False: "[red]no[/]", None: "[yellow]info[/]"}[ok]
        table.add_row(name, mark, escape(detail))
    console.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
