"""``hf_local``: a transformers causal LM on CPU or GPU, batched, with log-probabilities.

Loads a model directory, or a ``.gguf`` file (de-quantised by transformers through the
``gguf`` package). The default ``gemma3-270m`` is the GGUF shipped in the ``models``
extra, converted once to a safetensors directory (see ``workbench.models``).

torch is imported inside the methods that use it: the backend dict imports this module
(through :mod:`teachers.hf_vision`) to decide which transformers teacher a config names,
before anything is loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from teachers.base import OnResult, RawOutput, TeacherRequest
from teachers.scoring import (
    PrefixKV,
    batch_inputs,
    cache_kwarg,
    chosen_tokens,
    full_ids,
    last_logits,
    needs_full_decode,
    plan_batches,
    position_entry,
    prompt_report,
    score_only,
    shared_prefix,
    sliding_window,
)
from workbench.config import ConfigError, TeacherConfig
from workbench.models import ModelNotFound, resolve_teacher_model

log = logging.getLogger(__name__)


def local_model_id(cfg: TeacherConfig) -> str:
    """``model@revision``; a local model without a revision gets a fingerprint of its files."""
    if cfg.revision:
        return f"{cfg.model}@{cfg.revision}"
    from workbench.cache.records import stable_hash

    path = Path(resolve_teacher_model(cfg.model))
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    sig = [(p.name, p.stat().st_size) for p in files]
    cfg_json = path / "config.json"
    if cfg_json.is_file():
        sig.append(("config", cfg_json.read_text()))
    return f"{cfg.model}@{stable_hash(sig, 12)}"


def torch_device_dtype(cfg: TeacherConfig):
    """``teacher.device`` and ``teacher.dtype`` as torch sees them (``auto``: CUDA in
    bfloat16 where there is one, else CPU in float32)."""
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"auto": torch.float32 if device == "cpu" else torch.bfloat16,
             "float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[cfg.dtype]
    return device, dtype


class LocalTransformersTeacher:
    """What the transformers teachers (this text path and :mod:`teachers.hf_vision`) share:
    the config and the model loaded later, the cache model id, the model path check, the
    tokenizer and end-of-sequence setup, and ``model.generate``'s options."""

    name = "hf_local"

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.model = None
        self.tok = None
        self._model_id: str | None = None

    def model_id(self) -> str:
        if self._model_id is None:
            self._model_id = local_model_id(self.cfg)
        return self._model_id

    def _model_path(self, *, directory: bool = False) -> Path:
        """The local model (``directory``: it must be a model directory); never downloaded."""
        path = Path(resolve_teacher_model(self.cfg.model))
        if directory and not path.is_dir():
            raise ModelNotFound(f"teacher.model={self.cfg.model!r}: {path} is not a model directory")
        if not path.exists():
            raise ModelNotFound(
                f"teacher.model={self.cfg.model!r}: {path} does not exist (models are never "
                "downloaded at run time; give a local directory or .gguf file)")
        return path

    def _pad_left(self) -> None:
        """Left padding (batched generation), with EOS as the pad token where there is none."""
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token

    def _set_eos_ids(self) -> None:
        """The tokens that end an answer: the generation config's and the tokenizer's EOS."""
        gen_eos = self.model.generation_config.eos_token_id
        gen_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        self.eos_ids = {t for t in [*gen_eos, self.tok.eos_token_id] if t is not None}

    def _send_batches(self, batches: Iterable[list[TeacherRequest]],
                      answer: Callable[[list[TeacherRequest]], list[RawOutput]], on_result: OnResult,
                      errors: tuple[type[Exception], ...] = (RuntimeError, ValueError)) -> None:
        """Each batch through ``answer``; one of ``errors`` (OOM, bad shapes) is recorded per
        request; the batch's time split evenly over its requests; stops where ``on_result``
        returns False."""
        for batch in batches:
            t0 = time.perf_counter()
            try:
                outs = answer(batch)
            except errors as e:
                outs = [RawOutput(error_kind="backend_error", error=f"{type(e).__name__}: {e}")
                        for _ in batch]
            per = (time.perf_counter() - t0) / len(batch)
            for r, o in zip(batch, outs, strict=True):
                o.latency_s = per
                if on_result(r, o) is False:
                    return

    def _generate_kwargs(self, batch: list[TeacherRequest], max_new: int, want: bool) -> dict:
        """``model.generate``'s options for a batch (seeds torch when sampling)."""
        import torch

        sample = self.cfg.temperature > 0
        stop = sorted({s for r in batch for s in r.stop})
        gen_kw = dict(max_new_tokens=max_new, do_sample=sample, pad_token_id=self.tok.pad_token_id,
                      return_dict_in_generate=True, output_logits=want,
                      repetition_penalty=self.cfg.repetition_penalty)
        if stop:
            gen_kw.update(stop_strings=stop, tokenizer=self.tok)
        if sample:
            gen_kw["temperature"] = self.cfg.temperature
            torch.manual_seed(self.cfg.seed)
        else:  # greedy: unset the model's sampling defaults instead of warning about them
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        return gen_kw


class HFLocalTeacher(LocalTransformersTeacher):
    """Batched greedy (or sampled) generation through ``model.generate``; soft-label-only
    requests by one forward pass, and the job's shared prompt prefix computed once
    (``teachers.scoring``)."""

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = self._model_path()
        device, dtype = torch_device_dtype(self.cfg)
        kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        root = str(path.parent) if path.suffix == ".gguf" else str(path)
        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(root, **kw)
        self._pad_left()
        self.model = AutoModelForCausalLM.from_pretrained(root, dtype=dtype, **kw).to(device).eval()
        self.device = device
        self._set_eos_ids()
        if self.cfg.api == "chat" and not self.tok.chat_template:
            raise ConfigError(
                f"teacher.model={self.cfg.model!r} has no chat template (a base model?): "
                "set teacher.api=completions to send the plain prompt")
        log.info("loaded %s on %s in %.1fs", path, device, time.perf_counter() - t0)

    def _prompt_text(self, req: TeacherRequest) -> str:
        if self.cfg.api == "completions":
            return req.prompt
        if any(isinstance(m["content"], list) for m in req.messages):
            raise ValueError(f"{self.cfg.model} is a text-only model: frames need an "
                             "image-text-to-text model directory (hf_local serves those too)")
        return self.tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Iterable[TeacherRequest], on_result: OnResult) -> None:
        assert self.model is not None, "call load() first"
        reqs = list(requests)
        if not reqs:
            return
        texts = [self._prompt_text(r) for r in reqs]
        enc = self.tok(texts, add_special_tokens=self.cfg.api == "completions")["input_ids"]
        rows = [list(ids) for ids in enc]
        new = [r.max_tokens for r in reqs]
        # The prefix (almost) every prompt of the job shares: its KV cache is computed once,
        # for the batches that stay inside the sliding window (said before anything is sent).
        n, members = shared_prefix(rows) if self.cfg.prefix_cache else (0, [])
        plan = plan_batches(rows, new, self.cfg.batch_size, prefix=n, members=members,
                            window=sliding_window(self.model.config), batch_tokens=self.cfg.batch_tokens)
        for level, msg in prompt_report(plan, [len(r) for r in rows], new,
                                        getattr(self.model.config, "max_position_embeddings", None),
                                        prefix_cache=self.cfg.prefix_cache):
            log.log(level, "%s", msg)
        prefix = PrefixKV(self.model, rows[members[0]][:n], self.device) if plan.used else None
        batches = [[reqs[i] for i in b] for b in plan.batches]
        planned = {id(batch): ([rows[i] for i in b], over)
                   for batch, b, over in zip(batches, plan.batches, plan.over_prefix, strict=True)}

        def answer(batch: list[TeacherRequest]) -> list[RawOutput]:
            batch_rows, over = planned[id(batch)]
            return self._answer_batch(batch, batch_rows, prefix if over else None)

        self._send_batches(batches, answer, on_result)

    def _answer_batch(self, batch: list[TeacherRequest], rows: list[list[int]],
                      prefix: PrefixKV | None) -> list[RawOutput]:
        """Score-only rows by one forward pass (decoding on from its cache only for rows whose
        first token is not a label), the rest through ``generate``; both over the shared
        ``prefix`` when the job's plan gives the batch one (``teachers.scoring.plan_batches``)."""
        outs: list[RawOutput | None] = [None] * len(batch)
        scored = [i for i, r in enumerate(batch) if score_only(r, self.cfg)]
        if scored:
            got = self._score_batch([rows[i] for i in scored], [batch[i] for i in scored], prefix)
            for i, o in zip(scored, got, strict=True):
                outs[i] = o
        full = [i for i, o in enumerate(outs) if o is None]
        if full:
            gen = self._generate_batch([rows[i] for i in full], [batch[i] for i in full], prefix)
            for i, o in zip(full, gen, strict=True):
                outs[i] = o
        return outs

    def _score_batch(self, rows: list[list[int]], batch: list[TeacherRequest],
                     prefix: PrefixKV | None) -> list[RawOutput]:
        """The answer position's log-probabilities from one forward pass; the chosen token is
        the one greedy ``generate`` would pick (repetition penalty included). A row whose
        chosen token is not a label is decoded on from the pass's cache, as ``generate``
        would have gone on (its later positions may hold the label)."""
        import torch

        inputs = batch_inputs(rows, prefix, self.tok.pad_token_id, self.device)
        logits, cache = last_logits(self.model, inputs)
        ids = full_ids(inputs, prefix)
        chosen = chosen_tokens(logits, ids, self.cfg.repetition_penalty).tolist()
        logprobs = logits.float().log_softmax(-1)
        k = max(1, self.cfg.top_logprobs)
        heads = [(t, position_entry(logprobs[b], t, k, self.tok.decode)) for b, t in enumerate(chosen)]
        results: list[RawOutput] = []
        go_on = []
        for b, (row, req) in enumerate(zip(rows, batch, strict=True)):
            t, pos = heads[b]
            text = self.tok.decode([t], skip_special_tokens=True)
            done = t in self.eos_ids or req.max_tokens <= 1 or any(s in text for s in req.stop)
            if not done and needs_full_decode([pos], req.labels):
                go_on.append(b)
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            results.append(RawOutput(
                text=text[:cut] if cut >= 0 else text, positions=[pos] if t not in self.eos_ids else [],
                tokens_in=len(row), tokens_out=0 if t in self.eos_ids else 1,
                finish_reason="score_only"))
        if go_on:
            sel = torch.tensor(go_on, dtype=torch.long, device=self.device)
            cache.batch_select_indices(sel)
            first = torch.tensor([[chosen[b]] for b in go_on], dtype=torch.long, device=self.device)
            mask = inputs["attention_mask"][sel]
            enc = {"input_ids": torch.cat([ids[sel], first], dim=1),
                   "attention_mask": torch.cat([mask, torch.ones_like(first)], dim=1),
                   cache_kwarg(self.model): cache}
            more = self._generate(enc, [batch[b] for b in go_on], heads=[heads[b] for b in go_on])
            for b, o in zip(go_on, more, strict=True):
                results[b] = o
        return results

    def _generate_batch(self, rows: list[list[int]], batch: list[TeacherRequest],
                        prefix: PrefixKV | None) -> list[RawOutput]:
        inputs = batch_inputs(rows, prefix, self.tok.pad_token_id, self.device)
        enc = {"input_ids": full_ids(inputs, prefix), "attention_mask": inputs["attention_mask"]}
        if prefix is not None:
            enc[prefix.kwarg] = inputs[prefix.kwarg]
        return self._generate(enc, batch)

    def _generate(self, enc: dict, batch: list[TeacherRequest],
                  heads: list[tuple[int, dict]] | None = None) -> list[RawOutput]:
        """``model.generate`` over ``enc``; ``heads``: the first token of every row and its
        position, already chosen by a score pass (``enc`` ends with it and carries its cache)."""
        import torch

        ahead = 1 if heads else 0
        max_new = max(r.max_tokens for r in batch) - ahead
        want = any(r.want_logprobs for r in batch)
        gen_kw = self._generate_kwargs(batch, max_new, want)
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kw)
        n_in = (enc["attention_mask"].sum(dim=1) - ahead).tolist()
        gen = out.sequences[:, enc["input_ids"].shape[1]:]
        k = max(1, self.cfg.top_logprobs)
        logprobs = [lg.float().log_softmax(-1) for lg in out.logits] if want else None
        results = []
        for b, req in enumerate(batch):
            generated = ([heads[b][0]] if heads else []) + gen[b].tolist()
            ids = generated[: req.max_tokens]
            n_out = next((i for i, t in enumerate(ids) if t in self.eos_ids), len(ids))
            ids = ids[:n_out]
            positions = None
            if want and req.want_logprobs:
                positions = [heads[b][1] if heads and i == 0 else
                             position_entry(logprobs[i - ahead][b], t, k, self.tok.decode)
                             for i, t in enumerate(ids)]
            text = self.tok.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            if cut >= 0:  # the batch ran on for its longest member; cut at the stop string
                text = text[:cut]
            results.append(RawOutput(
                text=text, positions=positions,
                tokens_in=int(n_in[b]), tokens_out=len(ids),
                finish_reason="stop" if n_out < len(generated) else "length"))
        return results

    def close(self) -> None:
        self.model = None
