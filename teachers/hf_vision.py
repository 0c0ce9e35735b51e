"""``hf_local`` for image-text-to-text models: frames through ``AutoProcessor``, batched.

A local model directory whose config is an image-text-to-text architecture (LLaVA,
Qwen2-VL, Idefics3, Gemma 3 with its vision tower, ...) is served here instead of by the
text-only path of :mod:`teachers.hf_local` (``teachers.BACKENDS`` dispatches on
:func:`is_vision_model`). The chat messages' image parts become the processor's image
entries, the model's chat template renders the conversation with its own image
placeholders, and the processor turns the frames (JPEG files named by content hash) into
pixel values. Soft labels are read from the generated positions' log-probabilities, as
on the text path.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prompts import TemplateError, media_file
from teachers.base import OnResult, RawOutput, TeacherRequest
from teachers.hf_local import LocalTransformersTeacher, torch_device_dtype
from workbench.config import ConfigError, TeacherConfig
from workbench.models import resolve_teacher_model

log = logging.getLogger(__name__)


def is_vision_model(cfg: TeacherConfig) -> bool:
    """True when ``cfg.model`` is a local directory holding an image-text-to-text model."""
    cfg_json = Path(resolve_teacher_model(cfg.model)) / "config.json"
    if not cfg_json.is_file():
        return False
    config = json.loads(cfg_json.read_text())
    if "vision_config" not in config:  # text-only: decided without importing transformers
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return config.get("model_type", "") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def hf_conversation(messages: list[dict[str, Any]], media: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Our chat messages as a transformers multimodal conversation, and the image files
    in the order their ``{"type": "image"}`` parts appear."""
    conv, images = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            conv.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
            continue
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                images.append(media_file(media, part["image_url"]["url"]))
                parts.append({"type": "image"})
            else:
                raise ValueError(f"hf_local cannot send a {kind!r} part to a vision-language model "
                                 "(teacher.send_audio is for openai_compat)")
        conv.append({"role": m["role"], "content": parts})
    return conv, images


def load_images(paths: list[str]) -> list[Any]:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


class HFVisionTeacher(LocalTransformersTeacher):
    """Batched generation of an image-text-to-text model through ``model.generate``."""

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        self.processor = None

    def load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = self._model_path(directory=True)
        if self.cfg.api != "chat":
            raise ConfigError(
                f"teacher.api={self.cfg.api!r} is invalid for the vision-language model "
                f"{self.cfg.model!r}: its frames go through the chat template; set teacher.api=chat")
        self.device, dtype = torch_device_dtype(self.cfg)
        t0 = time.perf_counter()
        self.processor = AutoProcessor.from_pretrained(str(path))
        self.tok = getattr(self.processor, "tokenizer", None)
        if self.tok is None or not getattr(self.processor, "chat_template", None):
            raise ConfigError(f"teacher.model={self.cfg.model!r}: its processor has no tokenizer or no "
                              "chat template (save the model with its AutoProcessor)")
        self._pad_left()
        self.model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype).to(self.device).eval()
        self._set_eos_ids()
        log.info("loaded vision-language model %s on %s in %.1fs", path, self.device,
                 time.perf_counter() - t0)

    def _prepare(self, req: TeacherRequest) -> tuple[str, list[str]]:
        conv, images = hf_conversation(req.messages, req.media)
        text = self.processor.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        return text, images

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        assert self.model is not None, "call load() first"
        prepared: dict[str, tuple[str, list[str]]] = {}
        failed: dict[str, RawOutput] = {}
        reqs = list(requests)
        for r in reqs:
            try:
                prepared[r.key] = self._prepare(r)
            except (TemplateError, ValueError) as e:
                failed[r.key] = RawOutput(error_kind="backend_error", error=f"{type(e).__name__}: {e}")
        for r in reqs:
            if r.key in failed and on_result(r, failed[r.key]) is False:
                return
        # One image count per batch (processors want a rectangular image list), similar
        # lengths together (less padding).
        order = sorted((r for r in reqs if r.key in prepared),
                       key=lambda r: (len(prepared[r.key][1]), len(prepared[r.key][0])))
        self._send_batches(self._batches(order, prepared),
                           lambda batch: self._generate_batch([prepared[r.key] for r in batch], batch),
                           on_result, errors=(RuntimeError, ValueError, OSError))  # and unreadable frames

    def _batches(self, order: list[TeacherRequest], prepared) -> Iterable[list[TeacherRequest]]:
        batch: list[TeacherRequest] = []
        for r in order:
            if batch and (len(batch) == self.cfg.batch_size
                          or len(prepared[r.key][1]) != len(prepared[batch[0].key][1])):
                yield batch
                batch = []
            batch.append(r)
        if batch:
            yield batch

    def _generate_batch(self, inputs: list[tuple[str, list[str]]],
                        batch: list[TeacherRequest]) -> list[RawOutput]:
        import torch

        texts = [t for t, _ in inputs]
        images = [load_images(paths) for _, paths in inputs]
        kw: dict[str, Any] = {"images": images} if images[0] else {}
        enc = self.processor(text=texts, return_tensors="pt", padding=True, **kw)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if "pixel_values" in enc and enc["pixel_values"].is_floating_point():
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        max_new = max(r.max_tokens for r in batch)
        want = any(r.want_logprobs for r in batch)
        gen_kw = self._generate_kwargs(batch, max_new, want)
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kw)
        n_in = enc["attention_mask"].sum(dim=1).tolist()
        gen = out.sequences[:, enc["input_ids"].shape[1]:]
        logprobs = [lg.float().log_softmax(-1) for lg in out.logits] if want else None
        results = []
        for b, req in enumerate(batch):
            ids = gen[b].tolist()[: req.max_tokens]
            n_out = next((i for i, t in enumerate(ids) if t in self.eos_ids), len(ids))
            ids = ids[:n_out]
            positions = (self._positions(ids, [lp[b] for lp in logprobs])
                         if want and req.want_logprobs else None)
            text = self.tok.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
            results.append(RawOutput(text=text, positions=positions, tokens_in=int(n_in[b]),
                                     tokens_out=len(ids),
                                     finish_reason="stop" if n_out < len(gen[b]) else "length"))
        return results

    def _positions(self, ids: list[int], logprobs: list[Any]) -> list[dict[str, Any]]:
        """Per generated token: its log-probability and the top-k alternatives."""
        import torch

        k = max(1, self.cfg.top_logprobs)
        out = []
        for t, lp in zip(ids, logprobs, strict=False):
            top = torch.topk(lp, min(k, lp.shape[-1]))
            out.append({"token": self.tok.decode([t]), "logprob": float(lp[t]),
                        "top": [[self.tok.decode([j]), float(v)]
                                for v, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)]})
        return out

    def close(self) -> None:
        self.model = None
        self.processor = None
