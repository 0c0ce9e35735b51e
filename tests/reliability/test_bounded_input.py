"""Bounded input: a file that declares more than it holds ends as one clean error (or, for a
media clip, as that clip's error row), never a traceback or a process asking for gigabytes.

Real files throughout: WAVs written with ``wave`` whose header's sample rate is patched, and
``.npz`` / ``.npy`` files with hand-written ``.npy`` headers declaring arrays of gigabytes,
either truncated or honestly compressed from zeros (a decompression bomb). The memory cases
run the real ``workbench`` command (or the real loading code) in a subprocess whose address
space is limited to what its imports took plus ``HEADROOM``: without the bounds, they stop
on ``MemoryError`` instead of swapping.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format
from typer.testing import CliRunner

from tests.conftest import mmsa_split
from tests.support.media import tone
from workbench.cli import app
from workbench.data.media import MAX_AUDIO_S, ClipError, decode_audio, wav_bytes

HEADROOM = 1536 << 20
"""Address space a limited subprocess may add to what its imports took (1.5 GiB)."""
MIB = 1 << 20
BOMB_MIB = 2100
"""Size of the declared arrays (2100 MiB = 2.2 GB), above what HEADROOM allows."""

LIMITED = """
import resource, sys
{imports}
def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
limit = vm_size() + {headroom}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
{body}
"""


def run_limited(body: str, imports: str = "") -> tuple[int, str]:
    """Run ``body`` in a fresh interpreter limited to its imports' address space plus
    ``HEADROOM``; (exit code, stdout + stderr with whitespace collapsed)."""
    imports = "import av, datasets, opensmile, pyarrow\nimport workbench.cli, workbench.data.ingest\n" + imports
    code = LIMITED.format(imports=imports, headroom=HEADROOM, body=textwrap.dedent(body))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "COLUMNS": "2000"})
    return r.returncode, " ".join((r.stdout + r.stderr).split())


def run_cli_limited(*args: str | Path) -> tuple[int, str]:
    """``workbench ARGS`` through its real entry point, memory-limited."""
    argv = ["workbench", *map(str, args)]
    return run_limited(f"sys.argv = {argv!r}\nfrom workbench.cli import main\nmain()")


def assert_clean(out: str) -> None:
    assert "Traceback" not in out and "MemoryError" not in out, out
    assert out.startswith("error: ") or " error: " in out, out


# ------------------------------------------------------------------ files


def wav_claiming(path: Path, rate: int, samples: int = 200_000) -> Path:
    """A real 16-bit mono WAV of ``samples`` samples whose header says ``rate`` Hz."""
    pcm = (np.sin(np.arange(samples) / 10) * 10_000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm.tobytes())
    raw = bytearray(buf.getvalue())
    assert raw[12:16] == b"fmt "
    raw[24:32] = struct.pack("<II", rate, rate * 2)  # sample rate, byte rate
    path.write_bytes(bytes(raw))
    return path


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def write_zip(path: Path, members: list[tuple[str, int, int, int, bytes]]) -> Path:
    """A zip of (name, method, crc, uncompressed size, stored bytes) members, written by hand
    so that a member can hold a deflate stream made without inflating gigabytes here."""
    local, central = bytearray(), bytearray()
    for name, method, crc, usize, data in members:
        n = name.encode()
        offset = len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 33, crc, len(data),
                             usize, len(n), 0) + n + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 33, crc,
                               len(data), usize, len(n), 0, 0, 0, 0, 0, offset) + n
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                      len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def npy_member(name: str, array: np.ndarray) -> tuple[str, int, int, int, bytes]:
    buf = io.BytesIO()
    np.save(buf, array)
    raw = buf.getvalue()
    return f"{name}.npy", 8, zlib.crc32(raw), len(raw), deflate(raw)


def truncated_member(name: str, shape: tuple[int, ...], holds: int) -> tuple[str, int, int, int, bytes]:
    """A stored member whose header declares ``shape`` float32 and holds ``holds`` bytes."""
    raw = npy_header(shape) + np.random.default_rng(0).bytes(holds)
    return f"{name}.npy", 0, zlib.crc32(raw), len(raw), raw


def zeros_bomb_member(name: str, shape: tuple[int, ...]) -> tuple[str, int, int, int, bytes]:
    """A deflated member holding a real ``shape`` float32 array of zeros (whole MiBs):
    the zeros compress 1000 to 1, each MiB to the same full-flushed deflate block."""
    header = npy_header(shape)
    mib = math.prod(shape) * 4 // MIB
    assert mib * MIB == math.prod(shape) * 4
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    zero = bytes(MIB)
    block = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)  # the same block each MiB
    crc = zlib.crc32(header)
    for _ in range(mib):
        crc = zlib.crc32(zero, crc)
    data = head + block * mib + c.flush()
    return f"{name}.npy", 8, crc, len(header) + mib * MIB, data


IDS = [f"s{i}" for i in range(12)]
BOMB_SHAPE = (12, BOMB_MIB * MIB // 48)
"""12 rows of float32 adding up to BOMB_MIB MiB."""


def text_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "split"])
        for i, sid in enumerate(IDS):
            w.writerow([sid, f"utterance {i}", i % 3 - 1, ("train", "valid", "test")[i % 3]])
    return path


# ------------------------------------------------------------------ audio


def test_a_wav_claiming_1_hz_is_its_clips_error_row_and_the_other_clip_is_ingested(tmp_path):
    (tmp_path / "good.wav").write_bytes(wav_bytes(tone(180.0, 1.5) * np.hanning(24_000)))
    bomb = wav_claiming(tmp_path / "bomb.wav", rate=1)  # 400 KB of samples "lasting" 2.3 days
    assert bomb.stat().st_size < 500_000
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "audio", "text", "split", "label"])
        w.writerow(["good", "good.wav", "a good clip", "train", 1.0])
        w.writerow(["bomb", "bomb.wav", "a forged clip", "train", 0.0])
    out = tmp_path / "out"
    code, text = run_cli_limited("data", "media", tmp_path / "manifest.csv",
                                 "audio_file_column=audio", "media.max_error_rate=0.5",
                                 "--out", out)
    assert code == 0 and "Traceback" not in text and "MemoryError" not in text, text
    rows = [json.loads(line) for line in (out / "media_errors.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["bomb"]
    reason = rows[0]["reason"]
    assert "bomb.wav" in reason and "sample rate of 1 Hz" in reason and "1000-768000 Hz" in reason
    assert "ffmpeg" in reason  # what to do
    from workbench.data.store import MSADataset

    (good,) = MSADataset.load(out).samples()
    assert good.id == "good" and good.audio is not None and Path(good.media.audio_file).is_file()


@pytest.mark.parametrize("rate", [999, 1_000_000])
def test_a_sample_rate_outside_1k_to_768k_is_refused_and_the_bounds_are_taken(tmp_path, rate):
    with pytest.raises(ClipError, match=rf"sample rate of {rate} Hz, outside 1000-768000 Hz"):
        decode_audio(str(wav_claiming(tmp_path / "odd.wav", rate, samples=20_000)), None, None)
    signal, seg = decode_audio(str(wav_claiming(tmp_path / "low.wav", 1_000, samples=2_000)),
                               None, None)
    assert seg == (0.0, 2.0) and abs(signal.size - 32_000) <= 16  # 2 s at 16 kHz


def test_audio_longer_than_the_clip_limit_is_refused_before_decoding(tmp_path):
    seconds = int(MAX_AUDIO_S) + 100
    path = wav_claiming(tmp_path / "long.wav", 1_000, samples=seconds * 1_000)  # 7.4 MB
    with pytest.raises(ClipError, match=rf"lasts {seconds}s, more than the 3600s one clip may "
                                        r"have; cut it into clips with start / end columns"):
        decode_audio(str(path), None, None)
    signal, seg = decode_audio(str(path), 10.0, 12.0)  # a segment of it is a clip
    assert seg == (10.0, 12.0) and abs(signal.size - 32_000) <= 16


# ------------------------------------------------------------------ .npz / .npy


def import_with_audio(tmp_path: Path, audio_member: tuple[str, int, int, int, bytes]) -> str:
    """``workbench data import`` (under the memory limit) of a text manifest whose feature
    file's ``audio`` array is ``audio_member``: assert one clean error naming the array's
    declared 2.2 GB; its output."""
    features = write_zip(tmp_path / "f.npz", [npy_member("id", np.array(IDS)), audio_member])
    assert features.stat().st_size < 3 * MIB
    code, out = run_cli_limited("data", "import", text_manifest(tmp_path), f"features={features}",
                                "modalities=[text,audio]", "--out", tmp_path / "ds")
    assert code == 2, out
    assert_clean(out)
    assert f"{features}: array 'audio' declares shape {BOMB_SHAPE} of float32 (2.2 GB)" in out
    return out


def test_an_npz_array_declaring_2gb_in_a_2mb_file_is_one_clean_error(tmp_path):
    out = import_with_audio(tmp_path, truncated_member("audio", BOMB_SHAPE, 2 * MIB))
    assert "holds only 2.1 MB" in out and "numpy.savez" in out and "data.features" in out
    assert not (tmp_path / "ds").exists()


def test_an_npz_decompression_bomb_is_one_clean_error(tmp_path):
    out = import_with_audio(tmp_path, zeros_bomb_member("audio", BOMB_SHAPE))
    assert "times its stored size" in out and "numpy.savez" in out


def test_a_stored_clip_feature_file_declaring_2gb_stops_the_rerun_cleanly(tmp_path):
    from workbench.config import DataConfig, MediaConfig, MediaJobConfig
    from workbench.data.ingest import ingest_media

    (tmp_path / "a.wav").write_bytes(wav_bytes(tone(180.0, 1.5) * np.hanning(24_000)))
    (tmp_path / "manifest.csv").write_text("id,audio,text,split,label\nc1,a.wav,fine,train,1\n")
    out = tmp_path / "out"
    ingest_media(MediaJobConfig(data=DataConfig(path=str(tmp_path / "manifest.csv"),
                                                audio_file_column="audio"),
                                media=MediaConfig(processes=1), out=str(out)))
    (npz,) = (out / "media" / "clips").glob("*.npz")
    write_zip(npz, [npy_member("functionals", np.zeros(88, np.float32)),
                    truncated_member("lld", (BOMB_MIB * MIB // 100, 25), 1 * MIB)])
    code, text = run_cli_limited("data", "media", tmp_path / "manifest.csv",
                                 "audio_file_column=audio", "--out", out)
    assert code == 2, text
    assert_clean(text)
    assert f"{npz}: array 'lld' declares shape" in text and "(2.2 GB)" in text
    assert f"delete {npz.name} and {npz.with_suffix('.json').name}" in text
    assert "cannot be read" not in text  # one message, not wrapped in another


def test_a_stored_frame_embedding_declaring_2gb_is_one_clean_error(tmp_path):
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    from workbench.data.embed import encoder_id

    clips = tmp_path / "media" / "clips"
    clips.mkdir(parents=True)
    emb = clips / f"k1.emb-{encoder_id(str(encoder))}.npy"
    emb.write_bytes(npy_header(BOMB_SHAPE) + bytes(MIB))
    code, out = run_limited(f"""
        from pathlib import Path
        from workbench.config.media import MediaConfig
        from workbench.data.embed import embed_clips
        from workbench.errors import WorkbenchError
        try:
            embed_clips([{{"id": "c1", "key": "k1", "frames": ["f.jpg"]}}],
                        MediaConfig(image_encoder={str(encoder)!r}), Path({str(tmp_path / "media")!r}))
        except WorkbenchError as e:
            print("error:", e)
            sys.exit(2)
        """, imports="import torch")
    assert code == 2, out
    assert_clean(out)
    assert f"{emb}: the array declares shape {BOMB_SHAPE} of float32 (2.2 GB)" in out
    assert "holds only 1.0 MB" in out and f"delete {emb} and rerun" in out
    assert "cannot be read" not in out


# ------------------------------------------------------------------ text that is not text

runner = CliRunner()


def fails(*args: str | Path) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert "Traceback" not in r.output
    assert r.output.startswith("error: ") or "\nerror: " in r.output, r.output
    return " ".join(r.output.split())


@pytest.mark.parametrize(("line", "column"), [
    ('{"id": "b", "text": "bad \\ud800 x", "label": -1, "split": "train"}', "'text'"),
    ('{"id": "b", "text": "fine", "label": -1, "split": "train", "notes": ["ok", "\\udfff"]}',
     "'notes[1]'"),
])
def test_a_lone_surrogate_in_a_jsonl_manifest_names_the_line_sample_and_column(tmp_path, line, column):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "text": "good", "label": 1, "split": "train"}\n'
                    f"{line}\n"
                    '{"id": "c", "text": "ok", "label": 0, "split": "test"}\n')
    out = fails("data", "import", path, "modalities=[text]", "--out", tmp_path / "ds")
    assert f"{path}:2: sample 'b': column {column} holds '\\ud" in out
    assert "fix the encoding of that row" in out
    assert not (tmp_path / "ds").exists()


def test_a_lone_surrogate_from_an_mmsa_pickle_names_the_sample(tmp_path):
    data = {s: mmsa_split(4, seed=i, prefix=s[:2]) for i, s in enumerate(("train", "valid", "test"))}
    texts = list(data["valid"]["raw_text"])
    texts[2] = "cut inside an emoji \ud83d"
    data["valid"]["raw_text"] = np.array(texts)
    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    out = fails("data", "import", path, "--out", tmp_path / "ds")
    assert f"{path}: sample 'va0$_$2': text holds '\\ud83d'" in out
    assert "fix the encoding of that row in the source" in out
