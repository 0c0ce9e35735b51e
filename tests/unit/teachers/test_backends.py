"""Backend plumbing that needs no server or model: the registry, rate limits, errors."""

import asyncio
from types import SimpleNamespace as NS

import pytest

from teachers import BACKENDS, make_teacher
from teachers.base import TeacherUnavailable
from teachers.openai_compat import RateLimiter, _completion_positions
from teachers.vllm_engine import positions_from_vllm
from workbench.config import TeacherConfig


def test_registry_is_an_explicit_dict():
    assert set(BACKENDS) == {"openai_compat", "vllm_engine", "hf_local"}
    t = make_teacher(TeacherConfig(backend="openai_compat", base_url="http://x/v1", model="m", revision="r1"))
    assert t.model_id() == "m@r1"


def test_vllm_unavailable_says_why():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    t = make_teacher(TeacherConfig(backend="vllm_engine", model="some/model"))
    with pytest.raises(TeacherUnavailable, match="not importable here.*bench/check_vllm_cpu.sh"):
        t.load()


def test_rate_limiter_rpm_and_tpm():
    now = [0.0]
    lim = RateLimiter(rpm=2, tpm=100, clock=lambda: now[0])
    lim.events.extend([(0.0, 10), (1.0, 10)])
    assert lim._delay(10) == pytest.approx(60.0)  # third request within the minute waits
    now[0] = 61.0
    assert lim._delay(10) == 0.0
    lim2 = RateLimiter(rpm=0, tpm=100, clock=lambda: now[0])
    lim2.events.extend([(30.0, 60), (50.0, 30)])
    assert lim2._delay(20) == pytest.approx(60 - (61 - 30))  # wait until the 60-token call expires
    asyncio.run(RateLimiter(0, 0).acquire(10))  # no limits: returns at once


def test_completion_logprob_formats():
    choice = NS(logprobs=NS(tokens=[" pos"], token_logprobs=[-0.5], top_logprobs=[{" pos": -0.5, " neg": -1.5}]))
    assert _completion_positions(choice) == [{"token": " pos", "logprob": -0.5,
                                              "top": [[" pos", -0.5], [" neg", -1.5]]}]
    assert _completion_positions(NS(logprobs=None)) is None
    assert positions_from_vllm([1], None, 5) is None


def test_positions_conversion():
    step = {5: NS(logprob=-0.1, decoded_token=" positive"), 7: NS(logprob=-2.5, decoded_token=" negative")}
    pos = positions_from_vllm([5], [step], k=20)
    assert pos == [{"token": " positive", "logprob": -0.1,
                    "top": [[" positive", -0.1], [" negative", -2.5]]}]
