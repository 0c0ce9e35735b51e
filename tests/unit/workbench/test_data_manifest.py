import csv
import json

import numpy as np
import pytest

from workbench.config import DataConfig
from workbench.data import DataError, fingerprint, read_samples


def write_csv(path, rows, fields=("id", "text", "label", "split")):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return path


ROWS = [
    {"id": "a", "text": "great movie", "label": 2.0, "split": "train"},
    {"id": "b", "text": "awful plot", "label": -2.4, "split": "train"},
    {"id": "c", "text": "it was fine", "label": 0.0, "split": "dev"},
    {"id": "d", "text": "loved it", "label": 3.0, "split": "test"},
]


def test_csv_and_jsonl_give_the_same_samples(tmp_path):
    csv_path = write_csv(tmp_path / "m.csv", ROWS)
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    kw = dict(split_names={"dev": "valid"}, modalities=["text"])
    a = read_samples(DataConfig(path=str(csv_path), **kw))
    b = read_samples(DataConfig(path=str(jl), **kw))
    assert [s.id for s in a] == ["a", "b", "c", "d"]
    assert [s.split for s in a] == ["train", "train", "valid", "test"]
    assert fingerprint(a) == fingerprint(b)


def test_features_npz_keyed_by_id_with_partial_coverage(tmp_path):
    path = write_csv(tmp_path / "m.csv", ROWS)
    np.savez(tmp_path / "f.npz", id=np.array(["d", "c", "b", "a"]),
             audio=np.arange(8, dtype=np.float32).reshape(4, 2),
             vision=np.ones((2, 3, 5), np.float32), vision_ids=np.array(["a", "d"]),
             vision_lengths=np.array([2, 3]))
    samples = read_samples(DataConfig(path=str(path), features=str(tmp_path / "f.npz"),
                                      split_names={"dev": "valid"}))
    by = {s.id: s for s in samples}
    assert by["a"].audio.tolist() == [6.0, 7.0]  # row of "a" in the npz, not row 0
    assert by["a"].vision.shape == (3, 5) and by["a"].vision_length == 2
    assert by["b"].vision is None and not by["b"].has("vision") and by["b"].has("audio")


def test_id_format_builds_ids_from_columns(tmp_path):
    rows = [{"vid": "v1", "clip": 3, "text": "x", "label": 1, "split": "train"}]
    path = write_csv(tmp_path / "m.csv", rows, fields=("vid", "clip", "text", "label", "split"))
    (s,) = read_samples(DataConfig(path=str(path), id_format="{vid}_{clip}", modalities=["text"]))
    assert s.id == "v1_3" and s.meta["source_line"] == 2
    with pytest.raises(DataError, match=r"m.csv:2: data.id_format='\{video\}' needs column\(s\) \['video'\]"):
        read_samples(DataConfig(path=str(path), id_format="{video}", modalities=["text"]))


def test_media_paths_resolved_and_checked(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a0.jpg").write_bytes(b"\xff\xd8jpeg")
    rows = [{"id": "a", "text": "hi", "label": 1, "split": "train", "frames": "frames/a0.jpg"},
            {"id": "b", "text": "ho", "label": 1, "split": "train", "frames": "frames/b0.jpg;frames/b1.jpg"}]
    path = write_csv(tmp_path / "m.csv", rows, fields=("id", "text", "label", "split", "frames"))
    cfg = DataConfig(path=str(path), frames_column="frames", modalities=["text", "vision"])
    with pytest.raises(DataError, match=r"missing_media.*b0.jpg.*\[1 sample\(s\): b\]"):
        read_samples(cfg)
    cfg.check_media = False
    samples = read_samples(cfg)
    assert samples[0].media.frames == [str(tmp_path / "frames" / "a0.jpg")]
    assert samples[0].has("vision") and len(samples[1].media.frames) == 2


def test_manifest_errors_name_file_and_line(tmp_path):
    path = write_csv(tmp_path / "m.csv", [{**ROWS[0], "label": "high"}])
    with pytest.raises(DataError, match=r"m.csv:2: label='high' is not a number") as e:
        read_samples(DataConfig(path=str(path)))
    assert "data.class_column=label" in str(e.value)
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"id": "a", "text": "x", "label": 1, "split": "train"}\n{oops\n')
    with pytest.raises(DataError, match=r"m.jsonl:2: not valid JSON"):
        read_samples(DataConfig(path=str(jl)))
    no_split = write_csv(tmp_path / "n.csv", [{"id": "a", "text": "x", "label": 1}],
                         fields=("id", "text", "label"))
    with pytest.raises(DataError, match=r"n.csv:2: no column 'split'"):
        read_samples(DataConfig(path=str(no_split)))
    np.savez(tmp_path / "f.npz", id=np.array(["a"]), sound=np.ones((1, 2), np.float32))
    with pytest.raises(DataError, match=r"no array 'audio' for audio .*data.feature_keys.audio"):
        read_samples(DataConfig(path=str(write_csv(tmp_path / "ok.csv", ROWS[:1])),
                                features=str(tmp_path / "f.npz")))
    with pytest.raises(DataError, match="does not exist"):
        read_samples(DataConfig(path=str(tmp_path / "absent.csv")))
