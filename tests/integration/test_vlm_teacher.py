"""A teacher that sees frames: a tiny LLaVA built from configs (random weights, no
download) served by ``hf_local``, on a dataset of real JPEG frames."""

import pytest
import torch

from teachers.hf_vision import HFVisionTeacher, load_images
from tests.support.frames_data import frames_dataset, write_jpeg
from tests.support.teacher_env import run_job
from tests.support.tiny_vlm import TOKENS_PER_IMAGE, WORDS, build_tiny_vlm
from workbench.cache.store import CacheStore
from workbench.config import ConfigError, TeacherConfig
from workbench.data import load_dataset

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


def vlm_teacher(path, **kw) -> TeacherConfig:
    return TeacherConfig(**{"backend": "hf_local", "model": str(path), "device": "cpu",
                            "batch_size": 4, **kw})


@pytest.fixture
def seen(monkeypatch):
    """Per batch: the pixel values the vision tower got, and the prefill's input ids."""
    calls = []
    load = HFVisionTeacher.load

    def hooked(self):
        load(self)

        def vision(module, args, kwargs):
            pixels = args[0] if args else kwargs["pixel_values"]
            calls.append({"pixel_values": pixels.detach().clone()})

        def prefill(module, args, kwargs):
            ids = kwargs.get("input_ids")
            if ids is not None and ids.shape[1] > 1 and calls and "input_ids" not in calls[-1]:
                calls[-1]["input_ids"] = ids.clone()
                calls[-1]["image_token_id"] = module.config.image_token_id

        self.model.get_submodule("model.vision_tower").register_forward_pre_hook(vision, with_kwargs=True)
        self.model.register_forward_pre_hook(prefill, with_kwargs=True)

    monkeypatch.setattr(HFVisionTeacher, "load", hooked)
    return calls


def test_frames_reach_the_model_and_soft_labels_land(vlm_dir, tmp_path, seen, one_thread):
    data = frames_dataset(tmp_path / "d")
    samples = load_dataset(data).samples()
    frames = {s.id: s.media.frames for s in samples}
    job = run_job(vlm_teacher(vlm_dir), data, tmp_path / "c")
    assert job.report.sent == 6 and job.report.ok == 6, job.report.finished

    # Every frame reached the model as the pixel values its image processor makes of the
    # JPEG, and every image stands for TOKENS_PER_IMAGE image tokens in the input ids.
    from transformers import AutoProcessor

    ip = AutoProcessor.from_pretrained(vlm_dir).image_processor
    expected = [ip(load_images([f]), return_tensors="pt")["pixel_values"][0]
                for fs in frames.values() for f in fs]
    got = [row for c in seen for row in c["pixel_values"]]
    assert len(got) == len(expected) == 10
    for e in expected:
        assert sum(torch.allclose(g, e, atol=1e-5) for g in got) >= 1
    assert len(seen) == 2  # one batch of 1-frame clips, one of 2-frame clips (batch_size 4)
    for c in seen:
        n_img_tokens = (c["input_ids"] == c["image_token_id"]).sum(dim=1)
        per_row = c["pixel_values"].shape[0] // c["input_ids"].shape[0]
        assert n_img_tokens.tolist() == [per_row * TOKENS_PER_IMAGE] * c["input_ids"].shape[0]

    with CacheStore(tmp_path / "c") as store:
        outs = store.current(job.job_id)
        requests = {k: store.request(k) for k in job.keys}
    assert len(outs) == 6 and all(o.ok for o in outs.values())
    for o in outs.values():
        assert o.soft_label.labels == ["negative", "neutral", "positive"]
        assert sum(o.soft_label.probs) == pytest.approx(1.0)
        assert o.top_logprobs and len(o.top_logprobs[0]["top"]) == 20
        assert o.tokens_in > TOKENS_PER_IMAGE  # the image tokens count as input
    for r in requests.values():  # the stored request names its frames by content hash
        parts = r["messages"][1]["content"]
        images = [p for p in parts if p["type"] == "image_url"]
        assert images and all(p["image_url"]["url"].startswith("sha256:") for p in images)


def test_descriptions_and_keys_that_follow_the_pixels(vlm_dir, tmp_path, seen, one_thread):
    data = frames_dataset(tmp_path / "d", frame_counts=(2, 2, 1, 2, 2, 0))  # u5: text only
    tcfg = vlm_teacher(vlm_dir, max_tokens=6)
    job = run_job(tcfg, data, tmp_path / "c", template="context_aware")
    assert job.report.ok == job.report.sent == 6
    with CacheStore(tmp_path / "c") as store:
        descs = [o.description for o in store.current(job.job_id).values()]
    assert all(d and set(d.split()) <= set(WORDS) for d in descs), descs

    again = run_job(tcfg, data, tmp_path / "c", template="context_aware")
    assert again.no_calls  # same pixels: every key cached
    seen.clear()
    write_jpeg(tmp_path / "d" / "frames" / "u3_0.jpg", (0, 0, 0), mark=5)  # new pixels, same path
    changed = run_job(tcfg, data, tmp_path / "c", template="context_aware")
    assert changed.report.sent == 1 and changed.report.ok == 1
    assert len(seen) == 1 and seen[0]["pixel_values"].shape[0] == 2


def test_vlm_needs_the_chat_api(vlm_dir, tmp_path):
    from teachers import make_teacher

    t = make_teacher(vlm_teacher(vlm_dir, api="completions"))
    assert isinstance(t, HFVisionTeacher)
    with pytest.raises(ConfigError, match="teacher.api='completions'.*set teacher.api=chat"):
        t.load()


def test_vllm_prompt_puts_the_frames_in_multi_modal_data(vlm_dir, tmp_path):
    """The vllm_engine prompt for a vision model, built without an engine: the chat
    template's image placeholders (one per frame; vLLM expands them) and the decoded frames."""
    from transformers import AutoProcessor

    from prompts import load_template, render
    from teachers.base import TeacherRequest
    from teachers.vllm_engine import VLLMTeacher

    data = frames_dataset(tmp_path / "d")
    ds = load_dataset(data)
    sample = next(s for s in ds.samples() if len(s.media.frames) == 2)
    r = render(load_template("sentiment_polarity"), sample, ds.info)
    t = VLLMTeacher(TeacherConfig(backend="vllm_engine", model=str(vlm_dir)))
    t.processor = AutoProcessor.from_pretrained(vlm_dir)
    prompt = t.mm_prompt(TeacherRequest(key="k", messages=r.messages, prompt=r.prompt, media=r.media))
    assert prompt["prompt"].count("<image>") == 2 and sample.text in prompt["prompt"]
    images = prompt["multi_modal_data"]["image"]
    assert [im.tobytes() for im in images] == [im.tobytes() for im in load_images(sample.media.frames)]
