"""``workbench cache``: run, status, retry, export, merge.

``cache run`` builds a :class:`CacheJobConfig` from a recipe (``--config
configs/cache/X.yaml``), the flags given explicitly (which override the recipe) and
``section.key=value`` overrides (which override both), then calls
:func:`teachers.run.run_cache_job`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from workbench.cli.common import console, data_config, err_console, new_app
from workbench.config import CacheJobConfig, ConfigError, load_config

app = new_app("Teacher caching jobs: run, status, retry, export, merge.")


PROGRESS_EVERY_S = 10.0
"""Seconds between the progress lines of ``cache run`` when stderr is not a terminal (a log
file, a pipe): the default of its ``--progress-every`` option."""


class JobBar:
    """A rich progress bar for :func:`teachers.run.run_cache_job` on a terminal: done/total,
    ok/errors, cost, elapsed and ETA; fits 80 columns."""

    def __init__(self, total: int, label: str, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
            transient=False)
        self.task = self.progress.add_task(label, total=total, stats="")

    def __enter__(self) -> JobBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, report, _out) -> None:
        stats = f"ok {report.ok} err {report.errors} ${report.cost_usd:.4f}"
        self.progress.update(self.task, completed=report.answered, stats=stats)


def _clock_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class JobLines:
    """Progress of a caching job as plain lines, for a stream that is not a terminal (where
    a bar shows nothing until the end): a line at the first answer ``every_s`` seconds after
    the last line (0: at every answer), and one at the end for the answers since. Each
    line: answered/total, ok and errors, answers per second, ETA, spend, elapsed."""

    def __init__(self, total: int, console: Console, every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.console, self.every_s, self.clock = total, console, every_s, clock
        self.start = self.last = clock()
        self.report: Any = None
        self.shown = 0

    def __enter__(self) -> JobLines:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.report is not None and self.report.answered != self.shown:
            self.line(self.report)

    def __call__(self, report, _out) -> None:
        self.report = report
        if self.clock() - self.last >= self.every_s:
            self.line(report)

    def line(self, report) -> None:
        """Print where the job stands now."""
        now = self.clock()
        done, elapsed = report.answered, now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _clock_text((self.total - done) / rate) if rate > 0 else "unknown"
        self.console.print(
            f"{done}/{self.total} ({100.0 * done / max(self.total, 1):.0f}%) ok {report.ok} "
            f"err {report.errors}, {rate:.2f}/s, ETA {eta}, ${report.cost_usd:.4f}, "
            f"{_clock_text(elapsed)} elapsed", highlight=False)
        self.last, self.shown = now, done


def job_progress(total: int, label: str, *, every_s: float = PROGRESS_EVERY_S,
                 console: Console | None = None) -> JobBar | JobLines:
    """The progress of a caching job (a :data:`teachers.run.ProgressFactory`): a bar where
    ``console`` (default: stderr) is a terminal, else a line every ``every_s`` seconds."""
    out = console or err_console
    out.print(f"asking {escape(label)} about {total} keys", highlight=False)
    if out.is_terminal:
        return JobBar(total, label, out)
    return JobLines(total, out, every_s)


def print_report(report, status: dict[str, Any]) -> None:
    """What a job (or a retry) did, and where its part of the cache stands now."""
    console.print(
        f"job {report.job}: {report.selected} samples, {report.unique_keys} keys, "
        f"{report.already_ok} already cached, {report.sent} sent "
        f"({report.ok} ok, {report.errors} errors, {report.retries} retries) in "
        f"{report.wall_s:.1f}s; tokens {report.tokens_in}+{report.tokens_out}, "
        f"cost ${report.cost_usd:.4f}", highlight=False)
    if report.sent == 0:
        console.print("nothing to do: every key is already in the cache (no teacher calls)")
    if report.stopped == "budget":
        console.print("[yellow]stopped: teacher.budget_usd reached; rerun with a larger budget "
                      "to continue[/]")
    errors = ", ".join(f"{k}={v}" for k, v in status["errors"].items()) or "none"
    console.print(f"cache now: {status['ok']}/{status['keys']} ok, errors {escape(errors)}, "
                  f"pending {status['pending']}", highlight=False)


def job_config(recipe: Path | None, teacher: Path | None, data: str | None,
               flags: dict[str, Any], overrides: list[str]) -> CacheJobConfig:
    """The job: the recipe, then the flags given (``None``: not given), then overrides."""
    from workbench.config import (
        TeacherConfig,
        apply_overrides,
        attribute_error,
        from_dict,
        to_dict,
    )

    if recipe is None and (teacher is None or data is None):
        missing = " and ".join(f for f, v in (("--teacher", teacher), ("--data", data)) if v is None)
        raise ConfigError(f"cache run needs {missing}, or a recipe: --config "
                          "configs/cache/RECIPE.yaml")
    tree: dict[str, Any] = to_dict(load_config(CacheJobConfig, recipe)) if recipe else {}
    if teacher is not None:
        tree["teacher"] = to_dict(load_config(TeacherConfig, teacher))
    if data is not None:
        tree["data"] = to_dict(data_config(data, []))
    for dotted, value in flags.items():
        if value is None:
            continue
        node = tree
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    apply_overrides(tree, overrides, CacheJobConfig)  # data=FILE reads that file
    try:
        return from_dict(CacheJobConfig, tree)
    except ConfigError as e:
        raise attribute_error(e, recipe, overrides) from None


@app.command("run")
def cache_run(
    config: Annotated[Path | None, typer.Option(
        help="Caching recipe (configs/cache/...): data, teacher, cache and samples in one file; "
             "the flags below override it.")] = None,
    teacher: Annotated[Path | None, typer.Option(
        help="Teacher YAML (configs/teachers/...); optional with --config.")] = None,
    data: Annotated[str | None, typer.Option(
        help="Data YAML config or dataset path; optional with --config.")] = None,
    template: Annotated[str | None, typer.Option(
        help="Template name or .yaml path [default: sentiment_score].")] = None,
    cache: Annotated[Path | None, typer.Option(
        help="Cache directory [default: runs/cache].")] = None,
    splits: Annotated[str | None, typer.Option(
        help="Comma-separated splits [default: all].")] = None,
    shard: Annotated[str | None, typer.Option(
        help="Deterministic subset i/N of the samples [default: 0/1].")] = None,
    variants: Annotated[int | None, typer.Option(
        help="Requests per sample, e.g. k paraphrases [default: 1].")] = None,
    limit: Annotated[int | None, typer.Option(
        help="Only the first N selected samples [default: 0, all].")] = None,
    engine: Annotated[str | None, typer.Option(
        help="local: send from this process; ray: through a pool of teacher actors on a Ray "
             "cluster (cache.ray.*) [default: local].")] = None,
    ray_address: Annotated[str | None, typer.Option(
        help="With --engine ray: the cluster to join (auto, ray://HOST:10001); empty starts a "
             "local instance [default: RAY_ADDRESS or local].")] = None,
    ray_actors: Annotated[int | None, typer.Option(
        help="With --engine ray: teacher actors in the pool [default: 2].")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="teacher.K=V, cache.K=V, data.K=V, or splits=, shard=, variants=, limit=")] = None,
    progress_every: Annotated[float, typer.Option(
        help="Where stderr is not a terminal (a log file): seconds between progress lines "
             "(answered/total, ok/errors, rate, ETA, spend); 0: a line per answer.")
    ] = PROGRESS_EVERY_S,
) -> None:
    """Ask a teacher about every sample and store the answers (resumable)."""
    from teachers.run import run_cache_job

    if progress_every < 0:
        raise ConfigError(f"--progress-every={progress_every}: use 0 (a line per answer) or "
                          "a number of seconds")
    flags = {"cache.template": template, "cache.dir": str(cache) if cache is not None else None,
             "splits": [s for s in splits.split(",") if s] if splits is not None else None,
             "shard": shard, "variants": variants, "limit": limit, "cache.engine": engine,
             "cache.ray.address": ray_address, "cache.ray.actors": ray_actors}
    cfg = job_config(config, teacher, data, flags, overrides or [])
    summary = run_cache_job(cfg, progress=partial(job_progress, every_s=progress_every))
    print_report(summary.report, summary.status)


def open_store(cache: Path):
    """An existing cache (a missing one is a :class:`CacheError`, not a new empty cache)."""
    from workbench.cache.store import CacheStore

    return CacheStore(cache, create=False)


@app.command("status")
def cache_status(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")] = Path("runs/cache"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts by status and error kind, tokens and cost, per job; then what is in flight:
    keys that sending runs hold (live or lapsed), spill files not yet stored, spend."""
    with open_store(cache) as store:
        jobs = store.jobs()
        out = {"cache": str(cache), "total": store.status(),
               "jobs": [{**j, "status": store.status(j["job"])} for j in jobs],
               "in_flight": store.in_flight()}
    if as_json:
        print(json.dumps(out, indent=2))
        return
    total = out["total"]
    console.print(f"[bold]cache {escape(str(cache))}[/]: {total['ok']}/{total['keys']} ok, "
                  f"{len(out['jobs'])} job(s)", highlight=False)
    for j in out["jobs"]:  # a few short lines per job: whole at 80 columns and in a log
        st = j["status"]
        errs = ", ".join(f"{k}={v}" for k, v in st["errors"].items()) or "none"
        console.print(f"job {j['job']}  {escape(j['template'])} x {escape(j['teacher'])}",
                      highlight=False)
        console.print(f"  data {escape(j['data_name'])} ({j['data_fingerprint']}); "
                      f"ok {st['ok']}/{st['keys']}, errors {escape(errs)}, pending "
                      f"{st['pending']}", highlight=False)
        console.print(f"  tokens {st['tokens_in']}+{st['tokens_out']}, cost "
                      f"${st['cost_usd']:.4f}, mean latency {st['mean_latency_s']:.3f} s",
                      highlight=False)
    _print_in_flight(out["in_flight"])


def _print_in_flight(fl: dict) -> None:
    import time

    for lease in fl["leases"]:
        until = time.strftime("%H:%M:%S", time.localtime(lease["expires_at"]))
        state = (f"sending now, leases until {until}" if lease["live"] else
                 "lapsed (its run is gone; the next run frees them and sends those keys)")
        console.print(f"leases: {lease['keys']} key(s) held by {escape(lease['owner'])}, "
                      f"reserving ${lease['reserve_usd']:.4f}: {state}", highlight=False)
    if fl["spills"]:
        n = sum(s["answers"] for s in fl["spills"])
        console.print(f"spill files: {len(fl['spills'])} holding {n} answer(s) already paid "
                      "for, not yet stored; the next `workbench cache run` on this cache "
                      "imports them:", highlight=False)
        for s in fl["spills"]:
            refused = (f", {s['refused']} line(s) it will refuse: not signed by this cache or "
                       "not a valid answer" if s["refused"] else "")
            console.print(f"  {escape(s['path'])} ({s['answers']}{refused})", highlight=False)
    paid = {t: v for t, v in fl["spend_usd"].items() if v}
    if paid:
        console.print("spend: " + ", ".join(f"{escape(t)} ${v:.4f}" for t, v in sorted(paid.items())),
                      highlight=False)


@app.command("retry")
def cache_retry(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    teacher: Annotated[Path, typer.Option(help="Teacher YAML; must be the model the job used.")],
    errors: Annotated[str, typer.Option(help="Comma-separated error kinds (default: all).")] = "",
    job: Annotated[str, typer.Option(help="Job id (default: every job in the cache).")] = "",
    overrides: Annotated[list[str] | None, typer.Argument(help="teacher.K=V")] = None,
) -> None:
    """Re-send the requests whose current answer is an error (from the stored requests)."""
    from teachers import make_teacher
    from teachers.job import retry_errors
    from workbench.config import TeacherConfig

    bad = [o for o in overrides or [] if not o.startswith("teacher.") or "=" not in o]
    if bad:
        raise ConfigError(f"overrides {bad} must look like teacher.KEY=V")
    tcfg = load_config(TeacherConfig, teacher, overrides or [], section="teacher")
    kinds = [k for k in errors.split(",") if k]
    backend = make_teacher(tcfg)
    with open_store(cache) as store:
        try:
            reports = retry_errors(store, backend, tcfg, kinds=kinds, job=job or None)
        finally:
            backend.close()
        if not reports:
            console.print("no error rows to retry")
        for r in reports:
            print_report(r, store.status(r.job))


@app.command("export")
def cache_export(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=".parquet file or a directory (hf).")],
    fmt: Annotated[str, typer.Option(
        "--format", help="parquet (one file) or hf (a folder datasets.load_dataset reads: "
                         "data/<split>.parquet and a dataset card README.md).")] = "parquet",
    job: Annotated[str, typer.Option(help="Only this job id.")] = "",
) -> None:
    """Write the cache (one row per job and sample) as Parquet, or as a Hugging Face dataset
    folder with its dataset card."""
    from workbench.cache.export import export

    if fmt not in ("parquet", "hf"):
        raise ConfigError(f"--format={fmt!r}: use parquet or hf")
    with open_store(cache) as store:
        n = export(store, out, fmt, job or None)
    console.print(f"wrote {n} rows to {escape(str(out))}")


@app.command("merge")
def cache_merge(
    dest: Annotated[Path, typer.Argument(help="Cache directory to merge into (created if absent).")],
    sources: Annotated[list[Path], typer.Argument(help="Cache directories to merge from.")],
) -> None:
    """Combine caches (e.g. shards from several machines) by key; idempotent. Where two
    caches answered a key differently, the first merged answer is kept and the conflict is
    reported; the spend counts every answer any source paid for."""
    from workbench.cache.store import (
        CONFLICT_EXAMPLES,
        DB_FILE,
        CacheStore,
        check_cache_dir,
        check_database,
    )

    for src in sources:  # every source readable before the destination is created
        check_cache_dir(src, must_exist=True)
        check_database(src / DB_FILE)
    conflicts: list[str] = []
    n_conflicts = 0
    with CacheStore(dest) as store:
        for src in sources:
            added = store.merge_from(src)
            line = f"merged {escape(str(src))}: {added['attempts_added']} attempts added"
            if added["same_answers"]:
                line += f", {added['same_answers']} key(s) answered alike (paid twice)"
            if added["conflicts"]:
                line += f", {added['conflicts']} key(s) answered differently (kept the first)"
            console.print(line, highlight=False)
            n_conflicts += added["conflicts"]
            conflicts += added["conflict_keys"]
        st = store.status()
        spend = store.in_flight()["spend_usd"]
    paid = ", ".join(f"{escape(t)} ${v:.4f}" for t, v in sorted(spend.items()) if v)
    summary = f"{escape(str(dest))}: {st['ok']}/{st['keys']} keys ok"
    if n_conflicts:
        shown = ", ".join(conflicts[:CONFLICT_EXAMPLES])
        summary += (f"; {n_conflicts} conflicting ok answer(s) (e.g. {shown}): the answer "
                    "merged first is kept (to keep another source's, merge that source "
                    "first into a new cache)")
    if paid:
        summary += f"; spend over all sources: {paid}"
    console.print(summary, highlight=False)
