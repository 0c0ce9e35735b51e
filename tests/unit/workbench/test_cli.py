import json

import pytest
from typer.testing import CliRunner

from workbench.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_import_stats_validate_on_mmsa_pickle(make_mmsa, tmp_path):
    pkl = make_mmsa()
    r = run("data", "validate", str(pkl))
    assert r.exit_code == 0 and "ok: 12 samples" in r.output
    out = tmp_path / "ds"
    r = run("data", "import", str(pkl), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert (out / "workbench_dataset.json").is_file() and (out / "data_config.yaml").is_file()
    assert (out / "versions.json").is_file()
    r = run("data", "stats", str(out), "--json")
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    assert stats["splits"]["train"]["n"] == 6
    assert stats["splits"]["train"]["available"] == {"text": 6, "audio": 6, "vision": 6}
    assert stats["feature_kind"] == {"audio": "sequence", "vision": "sequence"}
    r = run("data", "stats", str(out))
    assert r.exit_code == 0 and "train" in r.output
    r = run("data", "import", str(pkl), "--out", str(out))
    assert r.exit_code == 2 and "not empty" in r.output


def test_overrides_and_errors(make_mmsa, tmp_path):
    pkl = make_mmsa()
    r = run("data", "stats", str(pkl), "modalities=[text]", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["modalities"] == ["text"]
    r = run("data", "stats", str(pkl), "modalites=[text]")
    assert r.exit_code == 2 and "did you mean 'modalities'" in r.output
    r = run("data", "validate", str(tmp_path / "missing.pkl"))
    assert r.exit_code == 2 and "does not exist" in r.output
    r = run("data", "validate", str(pkl), "label_range=[0,1]")
    assert r.exit_code == 2 and "label_range" in r.output and "sample(s)" in r.output


def test_synth_then_stats(tmp_path):
    r = run("data", "synth", "--out", str(tmp_path / "s"), "--n", "60")
    assert r.exit_code == 0, r.output
    r = run("data", "stats", str(tmp_path / "s" / "data.yaml"), "--json")
    assert r.exit_code == 0, r.output
    assert sum(e["n"] for e in json.loads(r.stdout)["splits"].values()) == 60


def test_doctor_reports_backends():
    r = run("doctor")
    assert r.exit_code == 0, r.output
    for name in ("torch", "transformers", "vllm", "llama-cpp-python", "bitsandbytes", "minilm"):
        assert name in r.output


def test_absent_stage_commands_are_not_stubs():
    r = run("--help")
    assert "data" in r.output and "doctor" in r.output


# ------------------------------------------------------------------ errors, logging


def test_one_clean_error_message_and_its_exit_code(tmp_path):
    r = run("cache", "status", str(tmp_path / "nope"))
    assert r.exit_code == 2 and r.output.startswith("error: no cache at")
    assert "Traceback" not in r.output
    r = run("cache", "run", "--data", "x.yaml")
    assert r.exit_code == 2 and "cache run needs --teacher, or a recipe: --config" in r.output
    r = run("data", "stats", str(tmp_path / "d.pkl"), "modalities=[smell]")  # brackets kept
    assert r.exit_code == 2 and "['text', 'audio', 'vision']" in r.output
    assert "Traceback" not in r.output


def test_python_dash_m_runs_the_command():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "workbench.cli", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "cache" in r.stdout and "demo" in r.stdout


def test_other_libraries_are_quiet_unless_verbose(tmp_path):
    import logging
    import warnings

    def ignored(module: str) -> bool:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("default")  # what pytest would do: show everything
            from workbench.cli.logs import quiet_libraries

            quiet_libraries(False)
            warnings.warn_explicit("old", FutureWarning, "x.py", 1, module=module)
        return not seen

    try:
        r = run("data", "synth", "--out", str(tmp_path / "s"), "--n", "20")
        assert r.exit_code == 0, r.output
        for name in ("accelerate", "transformers", "peft", "datasets", "httpx"):
            assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
        assert ignored("transformers.modeling_utils") and not ignored("students.trainer")
        r = run("-v", "data", "synth", "--out", str(tmp_path / "s2"), "--n", "20")
        assert r.exit_code == 0, r.output
        assert logging.getLogger("accelerate").getEffectiveLevel() == logging.INFO
        assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    finally:
        from workbench.cli.logs import quiet_libraries

        quiet_libraries(True)  # leave the process as pytest configured it


# ------------------------------------------------------------------ cache run


def _fake_env(tmp_path, base_url: str):
    """A configs/ tree: data/tiny.yaml, teachers/fake.yaml, cache/tiny_fake.yaml (a recipe
    naming the other two as sections by relative path)."""
    import yaml

    from workbench.data.synth import SynthSpec, write

    manifest = write(tmp_path / "synth", SynthSpec(n=30, seed=3))
    configs = tmp_path / "configs"
    for sub in ("data", "teachers", "cache"):
        (configs / sub).mkdir(parents=True)
    (configs / "data" / "tiny.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "path": str(manifest), "features": str(tmp_path / "synth/features.npz")}))
    (configs / "teachers" / "fake.yaml").write_text(yaml.safe_dump(
        {"backend": "openai_compat", "model": "fake", "base_url": base_url,
         "api": "completions", "max_concurrency": 4, "max_retries": 0, "timeout_s": 5}))
    recipe = configs / "cache" / "tiny_fake.yaml"
    recipe.write_text(yaml.safe_dump(
        {"data": "../data/tiny.yaml", "teacher": "../teachers/fake.yaml",
         "cache": {"dir": str(tmp_path / "cache"), "template": "sentiment_polarity"},
         "splits": ["train"]}))
    return recipe


def _job_splits(cache) -> dict[str, set[str]]:
    from workbench.cache.store import CacheStore

    with CacheStore(cache) as store:
        return {j["job"]: {split for split, _ in store.sample_keys(j["job"]).values()}
                for j in store.jobs()}


def test_cache_run_from_a_recipe_with_flags_and_overrides(tmp_path):
    import yaml

    from tests.support.fake_openai import FakeOpenAI
    from workbench.config import CacheJobConfig, load_config

    with FakeOpenAI() as server:
        recipe = _fake_env(tmp_path, server.base_url)
        r = run("cache", "run", "--config", str(recipe))
        assert r.exit_code == 0, r.output
        assert "0 already cached" in r.output and "errors none, pending 0" in r.output
        (job, splits), = _job_splits(tmp_path / "cache").items()
        assert splits == {"train"}
        saved = tmp_path / "cache" / "jobs" / job / "config.yaml"
        cfg = load_config(CacheJobConfig, saved)  # the resolved job, loadable as a recipe
        assert cfg.teacher.model == "fake" and cfg.data.name == "tiny" and cfg.splits == ["train"]
        assert "versions.json" in {p.name for p in saved.parent.iterdir()}
        r = run("cache", "status", str(tmp_path / "cache"))
        assert r.exit_code == 0 and f"job {job}  sentiment_polarity x fake" in r.output
        assert "errors none, pending 0" in r.output
        r = run("cache", "run", "--config", str(recipe))  # a rerun asks nothing
        assert r.exit_code == 0 and "(no teacher calls)" in r.output
        calls = sum(server.attempts.values())
        # a flag overrides the recipe; a dotted override overrides both
        r = run("cache", "run", "--config", str(recipe), "--splits", "valid,test", "limit=3")
        assert r.exit_code == 0, r.output
        assert "job " in r.output and ": 3 samples" in r.output
        assert _job_splits(tmp_path / "cache")[job] >= {"valid"}
        assert sum(server.attempts.values()) > calls
        # the flags alone (no recipe) run a job; teacher.* / data.* overrides reach their sections
        data = recipe.parent.parent / "data" / "tiny.yaml"
        teacher = recipe.parent.parent / "teachers" / "fake.yaml"
        r = run("cache", "run", "--teacher", str(teacher), "--data", str(data), "--cache",
                str(tmp_path / "c2"), "--template", "sentiment_polarity", "--splits", "test",
                "teacher.revision=r2", "data.name=renamed")
        assert r.exit_code == 0, r.output
        (job2, _), = _job_splits(tmp_path / "c2").items()
        saved = yaml.safe_load((tmp_path / "c2" / "jobs" / job2 / "config.yaml").read_text())
        assert saved["teacher"]["revision"] == "r2" and saved["data"]["name"] == "renamed"
        r = run("cache", "run", "--config", str(recipe), "limt=3")
        assert r.exit_code == 2 and "did you mean 'limit'" in r.output


def test_cache_run_writes_progress_lines_to_a_log(tmp_path):
    """stderr is not a terminal under the runner: lines, not a bar (every answer with 0)."""
    from tests.support.fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        recipe = _fake_env(tmp_path, server.base_url)
        r = run("cache", "run", "--config", str(recipe), "--progress-every", "0")
        assert r.exit_code == 0, r.output
        total = int(r.output.split(" about ")[1].split()[0])
        lines = [x for x in r.output.splitlines() if f"/{total} (" in x]
        assert [x.split("/")[0] for x in lines] == [str(i) for i in range(1, total + 1)]
        assert "/s, ETA" in lines[0] and "elapsed" in lines[0]
        r = run("cache", "run", "--config", str(recipe), "--progress-every", "-1")
        assert r.exit_code == 2 and "--progress-every=-1.0: use 0" in r.output


def test_a_failed_job_exits_1_with_one_message(tmp_path):
    from tests.support.fake_openai import FakeOpenAI

    with FakeOpenAI(lambda p: ["500"]) as server:
        recipe = _fake_env(tmp_path, server.base_url)
        r = run("cache", "run", "--config", str(recipe), "cache.max_error_rate=0.2")
    assert r.exit_code == 1, r.output
    assert "error: stopped after" in r.output and "Traceback" not in r.output


def test_run_cache_job_plans_writes_its_config_and_resumes(tmp_path):
    from teachers.run import run_cache_job
    from tests.support.fake_openai import FakeOpenAI
    from tests.support.teacher_env import api_teacher, tiny_data
    from workbench.cache.store import CacheStore
    from workbench.config import CacheConfig, CacheJobConfig, load_config

    data = tiny_data(tmp_path, n=40)
    with FakeOpenAI() as server:
        cfg = CacheJobConfig(data=data, teacher=api_teacher(server.base_url),
                             cache=CacheConfig(dir=str(tmp_path / "c"), template="sentiment_polarity"),
                             splits=["train", "valid"], shard="1/2", variants=2, limit=12)
        first = run_cache_job(cfg)
        calls = sum(server.attempts.values())
        again = run_cache_job(cfg)
    assert len(first.keys) == 12 and first.todo == len(set(first.keys)) == first.report.sent
    assert first.report.ok == first.todo and not first.no_calls and first.plan_s > 0
    # the limit planned, registered and sent the first 12: nothing else is left "pending"
    assert first.status["ok"] == first.todo == first.status["keys"]
    assert first.status["pending"] == 0
    assert first.teacher == "fake-model" and first.template == "sentiment_polarity"
    assert load_config(CacheJobConfig, first.config_path) == cfg
    assert again.no_calls and again.todo == 0 and again.job_id == first.job_id
    assert sum(server.attempts.values()) == calls
    with CacheStore(tmp_path / "c") as store:
        ids = list(store.sample_keys(first.job_id))
    assert all("#" in i for i in ids)  # variants: one request id per (sample, variant)


# ------------------------------------------------------------------ 80 columns


def test_metric_tables_fit_80_columns_whole():
    import io

    from rich.console import Console

    from workbench.cli.evaluate import metric_tables
    from workbench.metrics import METRIC_NAMES

    for metric_set, names in METRIC_NAMES.items():
        cell = {m: (-0.1234, 0.0456) if m == "corr" else (0.5, 0.1234) for m in names}
        rows = {"complete": cell, "no audio+vision": cell, "mean ± std (3 checkpoints)": cell}
        buf = io.StringIO()
        out = Console(file=buf, width=80)
        tables = metric_tables(rows, metric_set, "condition", width=80)
        for t in tables:
            out.print(t)
        text = buf.getvalue()
        assert "…" not in text, text
        assert max(len(line) for line in text.splitlines()) <= 80
        for m in names:
            assert f" {m} " in f" {text} ".replace("\n", " "), m
        assert "50.0 ± 12.3" in text and ("corr" not in names or "-0.123 ± 0.046" in text)
        assert len(tables) <= 3


@pytest.mark.integration
def test_eval_output_is_whole_at_80_columns(tmp_path_factory, one_thread):
    from tests.support.checkpoints import tiny_checkpoints
    from workbench.metrics import METRIC_NAMES

    ck = tiny_checkpoints(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval80")
    r = runner.invoke(app, ["eval", str(ck["a"]), "--out", str(out), "--threads", "1",
                            "--device", "cpu", "--missing-rates", "0,0.5", "--seeds", "1,2",
                            "--latency-samples", "3"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.output, r.output
    words = set(r.output.split())
    for m in METRIC_NAMES["mosi"]:
        assert m in words, (m, r.output)
    assert "test metrics" in r.output and "missing-rate sweep" in r.output


def test_eval_help_shows_the_sweep_syntax_as_written():
    r = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "start:stop:step" in r.output and "\U0001f171" not in r.output
    from workbench.cli.common import err_console

    with err_console.capture() as cap:
        err_console.print("a:b:step")
    assert cap.get().strip() == "a:b:step"  # messages keep their colons too


def test_one_seed_sweep_prints_no_spread(tmp_path_factory, one_thread):
    from tests.support.checkpoints import tiny_checkpoints

    ck = tiny_checkpoints(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval1seed")
    r = runner.invoke(app, ["eval", str(ck["b"]), "--out", str(out), "--threads", "1",
                            "--device", "cpu", "--missing-rates", "0,0.5", "--seeds", "7",
                            "--no-cost", "--missing-modality", "none"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    sweep = r.output.split("missing-rate sweep (seed 7)")[1]
    assert "±" not in sweep
    md = (out / "results.md").read_text()
    assert md.split("## Leaderboard")[1].split("\n")[2].startswith("| condition |")
    rows = [ln for ln in md.splitlines() if ln.startswith(("| 0 |", "| 0.5 |", "| average |"))]
    assert len(rows) == 3 and not any("±" in ln for ln in rows)


def test_cache_status_shows_leases_spills_and_spend(tmp_path):
    """What is not a stored row yet: a live run's leases, a killed run's lapsed ones, a
    disk-full run's spill file (answers paid for), and the spend per teacher."""
    import subprocess
    import sys

    from workbench.cache import CacheStore
    from workbench.cache.ledger import new_owner
    from workbench.cache.records import TeacherOutput

    cache = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with CacheStore(cache) as store:
        live = new_owner()
        for k in ("k1", "k2"):
            assert store.lease(k, live, teacher="gpt@1", reserve_usd=0.01, ttl_s=600) == "taken"
        gone = f"{live.split(':')[0]}:{dead}:abcd1234"  # a process that has exited
        assert store.lease("k3", gone, teacher="gpt@1", reserve_usd=0.02, ttl_s=600) == "taken"
        store.put(TeacherOutput(key="k0", status="ok", cost_usd=0.5), teacher="gpt@1")
        store.spill([TeacherOutput(key="k4", status="ok", cost_usd=0.25)], "gpt@1")
    r = run("cache", "status", str(cache))
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert f"leases: 2 key(s) held by {live}, reserving $0.0200: sending now" in out
    assert f"leases: 1 key(s) held by {gone}, reserving $0.0200: lapsed" in out
    assert "spill files: 1 holding 1 answer(s) already paid for, not yet stored" in out
    assert "spend: gpt@1 $0.5000" in out
    fl = json.loads(run("cache", "status", str(cache), "--json").stdout)["in_flight"]
    assert {lease["owner"]: (lease["keys"], lease["live"]) for lease in fl["leases"]} == {
        live: (2, True), gone: (1, False)}
    assert fl["spills"][0]["answers"] == 1 and fl["spend_usd"] == {"gpt@1": 0.5}
