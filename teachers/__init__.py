"""Teachers: a small protocol, an explicit dict of backends, soft labels, the caching job.

The job's library entry is :func:`teachers.run.run_cache_job` (a
:class:`~workbench.config.CacheJobConfig` in, a :class:`~teachers.run.JobSummary` out);
:mod:`teachers.job` holds its parts (keys, planning, retries) and
:mod:`teachers.sending` the sending (leases, budget, error rate, full disk);
:mod:`teachers.hf_vision` serves image-text-to-text models for ``hf_local``;
:mod:`teachers.llamacpp_server` starts a local llama.cpp server for ``openai_compat``.
"""

from __future__ import annotations

from collections.abc import Callable

from teachers.base import RawOutput, Teacher, TeacherRequest, TeacherUnavailable
from workbench.config import TeacherConfig


def _openai_compat(cfg: TeacherConfig) -> Teacher:
    from teachers.openai_compat import OpenAICompatTeacher

    return OpenAICompatTeacher(cfg)


def _vllm_engine(cfg: TeacherConfig) -> Teacher:
    from teachers.vllm_engine import VLLMTeacher

    return VLLMTeacher(cfg)


def _hf_local(cfg: TeacherConfig) -> Teacher:
    from teachers.hf_vision import HFVisionTeacher, is_vision_model

    if is_vision_model(cfg):  # an image-text-to-text model directory: frames go in
        return HFVisionTeacher(cfg)
    from teachers.hf_local import HFLocalTeacher

    return HFLocalTeacher(cfg)


BACKENDS: dict[str, Callable[[TeacherConfig], Teacher]] = {
    "openai_compat": _openai_compat,
    "vllm_engine": _vllm_engine,
    "hf_local": _hf_local,
}


def make_teacher(cfg: TeacherConfig) -> Teacher:
    """The backend ``cfg.backend`` names (not yet loaded)."""
    return BACKENDS[cfg.backend](cfg)


__all__ = ["BACKENDS", "RawOutput", "Teacher", "TeacherRequest", "TeacherUnavailable", "make_teacher"]
