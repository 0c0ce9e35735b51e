import json

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
