import os
import pickle

import numpy as np
import pytest

from workbench.config import DataConfig
from workbench.data import DataError, load_dataset, read_samples
from workbench.data.mmsa import safe_load_pickle


def cfg(path, **kw):
    return DataConfig(path=str(path), **kw)


def test_unaligned_pickle_reads_all_fields(make_mmsa):
    path = make_mmsa()
    samples = read_samples(cfg(path))
    assert len(samples) == 12
    assert {s.split for s in samples} == {"train", "valid", "test"}
    s = samples[0]
    assert s.id == "tr0$_$0" and s.text.startswith("utterance number 0")
    assert s.audio.shape == (5, 4) and s.vision.shape == (5, 3)
    assert 1 <= s.audio_length <= 5 and isinstance(s.label, float) and s.label_class in (0, 1)


def test_aligned_pickle_infers_lengths_from_padding(make_mmsa):
    un = read_samples(cfg(make_mmsa("u.pkl")))
    al = read_samples(cfg(make_mmsa("a.pkl", aligned=True)))
    # same arrays, so lengths read off the zero padding equal the stored lengths
    assert [s.audio_length for s in al] == [s.audio_length for s in un]


def test_modalities_select_features(make_mmsa):
    samples = read_samples(cfg(make_mmsa(), modalities=["text", "audio"]))
    assert samples[0].audio is not None and samples[0].vision is None


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/workbench_pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.pkl"
    with path.open("wb") as f:
        pickle.dump({"train": {"id": Boom()}}, f)
    with pytest.raises(DataError, match="refused to load posix.system|refused to load os.system"):
        safe_load_pickle(path)
    assert not os.path.exists("/tmp/workbench_pwned")


def test_restricted_unpickler_admits_numpy_and_containers(tmp_path):
    from collections import OrderedDict

    obj = {"a": [np.arange(3), (1, 2.5, "x")], "b": OrderedDict(c=np.float32(1.5)), "s": {1, 2}}
    for proto in (2, 4, 5):
        path = tmp_path / f"ok{proto}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=proto))
        back = safe_load_pickle(path)
        assert np.array_equal(back["a"][0], np.arange(3)) and back["b"]["c"] == 1.5


def test_bad_structure_errors(make_mmsa, tmp_path):
    p = make_mmsa(mutate=lambda d: d.__setitem__("dev2", d["valid"]))
    with pytest.raises(DataError, match="unknown split key"):
        read_samples(cfg(p))
    def drop_labels(d):
        for part in d.values():
            del part["regression_labels"], part["classification_labels"]

    p = make_mmsa("nolab.pkl", mutate=drop_labels)
    with pytest.raises(DataError, match="no regression_labels"):
        read_samples(cfg(p))
    p = make_mmsa("short.pkl", mutate=lambda d: d["train"].__setitem__("audio", d["train"]["audio"][:2]))
    with pytest.raises(DataError, match=r"\[train\]: audio has 2 rows but there are 6 ids"):
        read_samples(cfg(p))
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable pickle"):
        read_samples(cfg(junk))


def test_nonfinite_audio_is_an_error_unless_zeroed(make_mmsa):
    def poison(d):
        d["valid"]["audio"][1, 0, 0] = -np.inf

    p = make_mmsa(mutate=poison)
    with pytest.raises(DataError, match=r"nonfinite: audio.*va0\$_\$1"):
        read_samples(cfg(p))
    samples = read_samples(cfg(p, nonfinite="zero"))
    assert all(np.isfinite(s.audio).all() for s in samples)


def test_load_dataset_keeps_fingerprint(make_mmsa):
    p = make_mmsa()
    a = load_dataset(cfg(p))
    b = load_dataset(cfg(p))
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert a.info.feature_kind == {"audio": "sequence", "vision": "sequence"}
