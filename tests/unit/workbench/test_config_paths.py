"""One path rule: a relative input path in a YAML file is read relative to that file
(a recipe's ``data:`` include and a data file's ``path:`` alike); a path that exists only
relative to the working directory is kept as written; ``data=FILE`` works as a command-line
override."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from workbench.config import CacheJobConfig, DataConfig, DistillConfig, TeacherConfig, load_config
from workbench.config.fields import ConfigError


@pytest.fixture
def project(tmp_path, monkeypatch):
    """configs/data/d.yaml naming ../../data/m.csv; a recipe naming ../data/d.yaml."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.csv").write_text("id,text,label,split\n")
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "distill").mkdir()
    (tmp_path / "configs" / "data" / "d.yaml").write_text(
        "name: d\npath: ../../data/m.csv\nfeatures: ../../data/f.npz\n")
    (tmp_path / "configs" / "distill" / "r.yaml").write_text(
        "data: ../data/d.yaml\ntrain: {epochs: 1}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path


def test_data_paths_are_relative_to_the_file_that_names_them(project):
    want = os.path.normpath(project / "data" / "m.csv")
    assert load_config(DataConfig, project / "configs/data/d.yaml").path == want
    recipe = load_config(DistillConfig, project / "configs/distill/r.yaml")
    assert recipe.data.path == want
    # a path that exists nowhere is kept as written (the error names what was written)
    assert recipe.data.features == "../../data/f.npz"
    # an inline data section of a recipe: relative to the recipe
    (project / "configs/distill/inline.yaml").write_text("data: {path: ../../data/m.csv}\n")
    assert load_config(DistillConfig, project / "configs/distill/inline.yaml").data.path == want


def test_a_section_file_works_as_an_override(project):
    cfg = load_config(DistillConfig, None, [f"data={project / 'configs/data/d.yaml'}",
                                            "data.name=renamed", "train.epochs=2"])
    assert cfg.data.path == os.path.normpath(project / "data" / "m.csv")
    assert cfg.data.name == "renamed" and cfg.train.epochs == 2
    os.chdir(project)
    job = load_config(CacheJobConfig, None, ["data=configs/data/d.yaml"])
    assert Path(job.data.path).resolve() == (project / "data" / "m.csv").resolve()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(DistillConfig, None, ["data=configs/data/absent.yaml"])


def test_a_path_that_exists_only_from_the_working_directory_is_kept(project):
    os.chdir(project)
    (project / "configs/data/old.yaml").write_text("path: data/m.csv\n")
    assert load_config(DataConfig, project / "configs/data/old.yaml").path == "data/m.csv"
    # overrides stay relative to the working directory
    assert load_config(DataConfig, None, ["path=data/m.csv"]).path == "data/m.csv"


def test_teacher_thread_setting():
    assert TeacherConfig().num_threads == 0
    assert load_config(TeacherConfig, None, ["num_threads=2"]).num_threads == 2
    with pytest.raises(ConfigError, match="teacher.num_threads"):
        TeacherConfig(num_threads=-1)
