"""Real local teachers: Gemma 3 270M through transformers (hf_local) and through the
llama.cpp OpenAI-compatible server on loopback (openai_compat)."""

import importlib.util
import json
import os

import pytest
from typer.testing import CliRunner

from teachers.llamacpp_server import llama_server
from tests.support.teacher_env import api_teacher, run_job, tiny_data
from workbench.cache.store import CacheStore
from workbench.config import TeacherConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gemma_gguf():
    from workbench.models import gemma_gguf_path

    try:
        return gemma_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def llama_server_url(gemma_gguf):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (make test builds it: pip install -e '.[llamacpp]')")
    with llama_server(gemma_gguf) as url:
        yield url


def test_llamacpp_server_soft_labels_and_descriptions(llama_server_url, tmp_path):
    data = tiny_data(tmp_path, n=30)
    tcfg = api_teacher(llama_server_url, model="gemma3-270m", max_concurrency=2, timeout_s=60)
    job = run_job(tcfg, data, tmp_path / "c", splits=["valid"])
    report = job.report
    assert report.sent > 0 and report.ok >= report.sent - 1
    with CacheStore(tmp_path / "c") as store:
        outs = [o for o in store.current(job.job_id).values() if o.ok]
    for o in outs:
        assert sum(o.soft_label.probs) == pytest.approx(1.0)
        assert 0 <= o.soft_label.off_label_mass < 1
        assert o.top_logprobs and len(o.top_logprobs[0]["top"]) >= 5  # real top-k from the server
        assert o.tokens_in > 20
    tcfg_d = api_teacher(llama_server_url, model="gemma3-270m", max_concurrency=2, timeout_s=60,
                         max_tokens=12)
    job = run_job(tcfg_d, data, tmp_path / "c", template="context_aware", splits=["valid"])
    report = job.report
    with CacheStore(tmp_path / "c") as store:
        descs = [o.description for o in store.current(job.job_id).values() if o.ok]
    assert report.ok == report.sent and all(d.strip() for d in descs)


def test_hf_local_gemma_job_and_cli(tmp_path, monkeypatch):
    from workbench.cli import app
    from workbench.data.synth import SynthSpec, write

    manifest = write(tmp_path / "synth", SynthSpec(n=24, seed=2))
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"path": str(manifest), "features": str(tmp_path / "synth/features.npz")}))
    teacher = tmp_path / "t.yaml"
    teacher.write_text("backend: hf_local\nmodel: gemma3-270m\napi: completions\nbatch_size: 4\n"
                       "device: cpu\nrepetition_penalty: 1.2\n")
    cache = tmp_path / "cache"
    runner = CliRunner()
    args = ["cache", "run", "--teacher", str(teacher), "--data", str(data), "--template",
            "sentiment_polarity", "--cache", str(cache), "--splits", "valid"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "0 already cached" in r.output
    r = runner.invoke(app, args)  # a rerun makes no teacher calls
    assert r.exit_code == 0 and "nothing to do" in r.output
    r = runner.invoke(app, ["cache", "run", "--teacher", str(teacher), "--data", str(data), "--template",
                            "context_aware", "--cache", str(cache), "--splits", "valid", "teacher.max_tokens=10"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cache", "status", str(cache), "--json"])
    st = json.loads(r.stdout)
    assert {j["template"] for j in st["jobs"]} == {"sentiment_polarity", "context_aware"}
    for j in st["jobs"]:
        assert j["status"]["ok"] >= j["status"]["keys"] - j["status"]["pending"] - 1
    r = runner.invoke(app, ["cache", "export", str(cache), "--out", str(tmp_path / "x.parquet")])
    assert r.exit_code == 0 and (tmp_path / "x.parquet").stat().st_size > 0
    with CacheStore(cache) as store:
        outs = list(store.current().values())
    assert any(o.description for o in outs) and any(o.soft_label for o in outs)
    assert all(o.tokens_out <= 10 for o in outs if o.description)


def test_hf_local_refuses_chat_api_on_base_model():
    from teachers.hf_local import HFLocalTeacher

    t = HFLocalTeacher(TeacherConfig(backend="hf_local", model="gemma3-270m", api="chat"))
    with pytest.raises(ValueError, match="teacher.api=completions"):
        t.load()


def test_models_are_never_downloaded(tmp_path):
    from teachers.hf_local import HFLocalTeacher

    t = HFLocalTeacher(TeacherConfig(backend="hf_local", model=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        t.load()
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
