from pathlib import Path

import pytest
import yaml

from workbench.config import (
    ConfigError,
    DataConfig,
    DistillConfig,
    TeacherConfig,
    TrainConfig,
    apply_overrides,
    config_class_for,
    dump_config,
    from_dict,
    load_config,
    to_dict,
)


def test_defaults_roundtrip_through_yaml(tmp_path):
    cfg = DistillConfig()
    path = dump_config(cfg, tmp_path)
    again = load_config(DistillConfig, path)
    assert to_dict(again) == to_dict(cfg)
    assert (tmp_path / "versions.json").is_file()
    assert "torch" in (tmp_path / "versions.json").read_text()


def test_unknown_key_suggests_nearest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"train": {"learning_rate": 1e-3, "lr": 1e-3}}))
    with pytest.raises(ConfigError) as e:
        load_config(DistillConfig, p)
    msg = str(e.value)
    assert "train.learning_rate" in msg and str(p) in msg
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        load_config(DistillConfig, None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="did you mean 'modalities'"):
        from_dict(DataConfig, {"modalites": ["text"]})


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(DistillConfig, None, [
        "train.lr=3e-4", "train.epochs=2", "data.modalities=[text,audio]",
        "student.lora.target_modules=[query,key,value]", "data.label_range=[-1,1]",
        "data.metric_set=sims", "student.prompted=true",
    ])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.epochs == 2
    assert cfg.data.modalities == ["text", "audio"]
    assert cfg.student.lora.target_modules == ["query", "key", "value"]
    assert cfg.data.label_range == (-1.0, 1.0)
    assert cfg.student.prompted is True


@pytest.mark.parametrize("override,needle", [
    ("train.epochs=0", "train.epochs=0 is invalid"),
    ("train.epochs=2.5", "must be an integer"),
    ("train.lr=fast", "must be a number"),
    ("data.modalities=[text,smell]", "data.modalities"),
    ("data.task=ranking", "use one of ['regression', 'classification']"),
    ("data.metric_set=moosi", "did you mean 'mosi'"),
    ("train.select_metric=test_mae", "validation split only"),
    ("data.label_range=[3,-3]", "low < high"),
    ("train.epochs", "section.key=value"),
])
def test_bad_values_name_field_value_and_fix(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(DistillConfig, None, [override])
    assert needle in str(e.value)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="data.class_names"):
        DataConfig(task="classification", metric_set="classification", class_names=["a"])
    with pytest.raises(ConfigError, match="data.metric_set"):
        DataConfig(task="regression", metric_set="classification")
    with pytest.raises(ConfigError, match="teacher.base_url"):
        TeacherConfig(backend="openai_compat")
    with pytest.raises(ConfigError, match="not the key"):
        TeacherConfig(api_key_env="sk-live-123")
    with pytest.raises(ConfigError, match="student.quantize"):
        load_config(DistillConfig, None, ["student.quantize=4bit", "student.text_mode=full"])


def test_sections_can_include_other_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.yaml").write_text("path: x.csv\nmodalities: [text]\n")
    (tmp_path / "run.yaml").write_text("data: data/d.yaml\ntrain: {epochs: 3}\n")
    cfg = load_config(DistillConfig, tmp_path / "run.yaml", ["data.modalities=[text,audio]"])
    assert cfg.data.path == "x.csv"  # data paths stay relative to the working directory
    assert cfg.data.modalities == ["text", "audio"] and cfg.train.epochs == 3


def test_overrides_create_sections_and_reject_non_sections():
    assert apply_overrides({}, ["a.b=1"]) == {"a": {"b": 1}}
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"a": 1}, ["a.b=1"])


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DataConfig, tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(DataConfig, p)


def test_config_class_for_folder():
    assert config_class_for("configs/data/mosi.yaml") is DataConfig
    assert config_class_for("configs/distill/x.yaml") is DistillConfig
    assert config_class_for("configs/accelerate/cpu.yaml") is None
    assert TrainConfig().select_metric.startswith("valid_")
    assert isinstance(Path("x"), Path)
