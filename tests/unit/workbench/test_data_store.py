import numpy as np
import pytest

from workbench.config import DataConfig
from workbench.data import DataError, MSADataset, load_dataset, read_samples


def test_import_roundtrip_is_lossless(make_mmsa, tmp_path):
    cfg = DataConfig(path=str(make_mmsa()))
    ds = load_dataset(cfg)
    out = ds.save(tmp_path / "ds")
    back = MSADataset.load(out)
    assert back.fingerprint == ds.fingerprint
    assert back.splits == ["train", "valid", "test"] and back.num_rows() == 12
    orig = read_samples(cfg)
    for a, b in zip(orig, back.samples(), strict=True):
        assert (a.id, a.text, a.split, a.label, a.label_class) == (b.id, b.text, b.split, b.label, b.label_class)
        assert np.array_equal(a.audio, b.audio) and a.audio_length == b.audio_length
        assert np.array_equal(a.vision, b.vision)
    # reading the imported directory through load_dataset gives the same dataset
    again = load_dataset(DataConfig(path=str(out)))
    assert again.fingerprint == ds.fingerprint


def test_imported_dataset_is_memory_mapped(make_mmsa, tmp_path):
    import pyarrow as pa

    out = load_dataset(DataConfig(path=str(make_mmsa(sizes=(3000, 10, 10))))).save(tmp_path / "ds")
    before = pa.total_allocated_bytes()
    ds = MSADataset.load(out)
    assert ds.num_rows("train") == 3000
    # 3000 x 5 x 7 float32 features sit in the mapped file, not in Arrow's memory pool
    assert pa.total_allocated_bytes() - before < 100_000


def test_fingerprint_changes_with_content(make_mmsa):
    a = load_dataset(DataConfig(path=str(make_mmsa("a.pkl"))))

    def tweak(d):
        d["test"]["audio"][0, 0, 0] += 1.0

    b = load_dataset(DataConfig(path=str(make_mmsa("b.pkl", mutate=tweak))))
    assert a.fingerprint != b.fingerprint


def test_unknown_split_and_config_mismatch(make_mmsa, tmp_path):
    ds = load_dataset(DataConfig(path=str(make_mmsa())))
    with pytest.raises(DataError, match=r"split 'dev' is not in dataset 'tiny' \(it has \['train', 'valid', 'test'\]"):
        ds.table("dev")
    out = ds.save(tmp_path / "ds")
    with pytest.raises(DataError, match="imported with metric_set='mosi'.*data.metric_set='sims'"):
        load_dataset(DataConfig(path=str(out), metric_set="sims"))
    with pytest.raises(DataError, match="not a workbench dataset"):
        MSADataset.load(tmp_path)


def test_modalities_restrict_info(make_mmsa):
    ds = load_dataset(DataConfig(path=str(make_mmsa()), modalities=["text", "vision"]))
    assert ds.info.modalities == ["text", "vision"]
    assert ds.sample("train", 0).audio is None
