"""`workbench cache run`'s progress where stderr is not a terminal: plain lines written while
the job runs (the real caching job with the tests' fake teacher), at the interval asked."""

from __future__ import annotations

import io
import re

from rich.console import Console

from prompts import load_template
from teachers.job import CachingJob
from teachers.sending import JobReport
from tests.support.distill import FakeTeacher, tiny_data, yaml_items
from workbench.cache.store import CacheStore
from workbench.cli.cache import JobBar, JobLines, job_progress
from workbench.config import CacheConfig, DataConfig, TeacherConfig, load_config
from workbench.data import load_dataset

LINE = re.compile(r"^(\d+)/(\d+) \(\d+%\) ok (\d+) err (\d+), [\d.]+/s, ETA "
                  r"(\d+:\d\d:\d\d|unknown), \$\d+\.\d{4}, \d+:\d\d:\d\d elapsed$")


class Watching(FakeTeacher):
    """The fake teacher, noting what the progress stream held before each answer."""

    def __init__(self, labels: dict[str, float], stream: io.StringIO) -> None:
        super().__init__(labels, fail_every=5)
        self.stream = stream
        self.seen: list[str] = []

    def generate(self, requests, on_result) -> None:
        def noted(req, raw):
            self.seen.append(self.stream.getvalue())
            return on_result(req, raw)

        super().generate(requests, noted)


def test_progress_lines_appear_while_the_job_runs(tmp_path):
    ds = load_dataset(load_config(DataConfig, None, [
        f"{k}={v}" for k, v in yaml_items(tiny_data(tmp_path / "data", n=12))]))
    stream = io.StringIO()
    console = Console(file=stream, width=200)
    teacher = Watching({s.text: float(s.label or 0.0) for s in ds.iter_samples()}, stream)
    ccfg = CacheConfig(dir=str(tmp_path / "cache"), template="sentiment_score",
                       max_error_rate=1.0)
    with CacheStore(tmp_path / "cache") as store:
        job = CachingJob(TeacherConfig(), ccfg, load_template("sentiment_score"), ds, store,
                         teacher.model_id())
        planned = job.plan(None)
        total = len({p.key for p in planned})
        progress = job_progress(total, "sentiment_score x fake", every_s=0, console=console)
        assert isinstance(progress, JobLines)  # a StringIO is not a terminal
        with progress as on_answer:
            job.run(teacher, planned, progress=on_answer)
    assert total == 12 and len(teacher.seen) == total
    before_last = teacher.seen[-1].splitlines()
    assert before_last[0] == f"asking sentiment_score x fake about {total} keys"
    parsed = [LINE.match(line).groups() for line in before_last[1:]]
    assert [int(done) for done, *_ in parsed] == list(range(1, total))
    assert {int(n) for _, n, *_ in parsed} == {total}
    done, _, ok, errors, _ = parsed[-1]
    assert (int(ok), int(errors)) == (9, 2)  # every 5th request fails
    last = stream.getvalue().splitlines()[-1]
    assert LINE.match(last).group(1) == str(total)


def test_lines_come_at_the_interval_and_once_at_the_end():
    now = [0.0]
    stream = io.StringIO()
    lines = JobLines(8, Console(file=stream, width=200), every_s=5.0, clock=lambda: now[0])
    report = JobReport(job="j", selected=8, unique_keys=8, already_ok=0)
    with lines:
        for t in range(1, 8):  # answers at 1 s .. 7 s
            now[0] = float(t)
            report.finished["ok"] += 1
            lines(report, None)
    got = [LINE.match(x).groups() for x in stream.getvalue().splitlines()]
    # at 5 s (5 answers, 1/s, 3 to go), then at the end for the 2 answers since
    assert [(g[0], g[4]) for g in got] == [("5", "0:00:03"), ("7", "0:00:01")]


def test_a_terminal_gets_the_bar():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    assert isinstance(job_progress(3, "x", console=console), JobBar)


def test_a_line_fits_80_columns_whole():
    stream = io.StringIO()
    now = [0.0]
    lines = JobLines(12000, Console(file=stream, width=80), every_s=0.0, clock=lambda: now[0])
    report = JobReport(job="j", selected=12000, unique_keys=12000, already_ok=0)
    report.finished["ok"], report.finished["error"] = 11990, 10
    report.cost_usd = 12.3456
    now[0] = 9720.0
    lines(report, None)
    out = stream.getvalue()
    assert max(len(x) for x in out.splitlines()) <= 80 and "…" not in out
    assert "12000/12000 (100%) ok 11990 err 10" in out and "elapsed" in out
