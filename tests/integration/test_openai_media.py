"""What ``openai_compat`` sends for clips with frames and audio: image parts and
``input_audio`` parts carrying base64 of the files' exact bytes (or, for a format chat
APIs do not take, of the audio decoded to 16 kHz mono wav), checked on a real loopback
server's received bodies."""

import base64
import io
import wave
from pathlib import Path

import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.frames_data import frames_dataset
from tests.support.teacher_env import api_teacher, run_job
from workbench.cache.store import CacheStore
from workbench.config import ConfigError, TeacherConfig
from workbench.data import load_dataset

pytestmark = pytest.mark.integration


def user_parts(body):
    return body["messages"][-1]["content"]


def test_image_and_audio_parts_carry_the_files(tmp_path):
    data = frames_dataset(tmp_path / "d", audio=True)
    samples = load_dataset(data).samples()
    with FakeOpenAI() as srv:
        job = run_job(api_teacher(srv.base_url, api="chat", send_audio=True), data, tmp_path / "c")
        bodies = list(srv.bodies)
    assert job.report.ok == job.report.sent == 6
    assert len(bodies) == 6
    for s in samples:
        [body] = [b for b in bodies if f'"{s.text}"' in user_parts(b)[0]["text"]]
        parts = user_parts(body)
        images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        audio = [p["input_audio"] for p in parts if p["type"] == "input_audio"]
        assert images == ["data:image/jpeg;base64," + base64.b64encode(Path(f).read_bytes()).decode()
                          for f in s.media.frames]
        assert len(audio) == 1 and audio[0]["format"] == "wav"
        got = base64.b64decode(audio[0]["data"])
        if s.media.audio_file.endswith(".wav"):
            assert got == Path(s.media.audio_file).read_bytes()
        else:  # the FLAC (44.1 kHz stereo, 0.5 s) arrives decoded as 16 kHz mono wav
            with wave.open(io.BytesIO(got)) as w:
                assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16000, 2)
                assert abs(w.getnframes() - 8000) < 400
    with CacheStore(tmp_path / "c") as store:
        outs = store.current(job.job_id)
    assert all(o.ok and sum(o.soft_label.probs) == pytest.approx(1) for o in outs.values())


def test_audio_is_opt_in_and_in_the_key(tmp_path):
    data = frames_dataset(tmp_path / "d", audio=True)
    with FakeOpenAI() as srv:
        plain = run_job(api_teacher(srv.base_url, api="chat"), data, tmp_path / "c")
        assert not any(p["type"] == "input_audio" for b in srv.bodies for p in user_parts(b))
        assert all(any(p["type"] == "image_url" for p in user_parts(b)) for b in srv.bodies)
        heard = run_job(api_teacher(srv.base_url, api="chat", send_audio=True), data, tmp_path / "c")
    assert set(plain.keys).isdisjoint(heard.keys)  # the audio's hash is in every key
    assert heard.report.sent == 6


def test_send_audio_needs_a_chat_api():
    with pytest.raises(ConfigError, match="teacher.send_audio=True is invalid.*openai_compat with api chat"):
        TeacherConfig(backend="hf_local", send_audio=True)
    with pytest.raises(ConfigError, match="teacher.send_audio"):
        TeacherConfig(backend="openai_compat", base_url="http://x/v1", api="completions", send_audio=True)
