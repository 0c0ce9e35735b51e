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
from typing import NamedTuple

from teachers.base import OnResult, RawOutput, TeacherRequest
from teachers.scoring import (
    MIN_PROJECTION_ROWS,
    PrefixKV,
    SplitHead,
    batch_inputs,
    cache_kwarg,
    chosen_tokens,
    full_ids,
    last_logits,
    merge_caches,
    needs_full_decode,
    pad_at,
    plan_batches,
    position_entry,
    prompt_report,
    score_only,
    shared_prefix,
    sliding_window,
    split_head,
)
from workbench.config import ConfigError, TeacherConfig
from workbench.models import ModelNotFound, resolve_teacher_model

log = logging.getLogger(__name__)


class Pass(NamedTuple):
    """One forward pass of a group: its token rows, their requests, the shared prefix it runs
    over (``None``: its prompts run whole)."""

    rows: list[list[int]]
    batch: list[TeacherRequest]
    prefix: PrefixKV | None


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
        head = split_head(self.model, rows[0][:16], self.device) \
            if any(score_only(r, self.cfg) for r in reqs) else None
        prefix = PrefixKV(self.model, rows[members[0]][:n], self.device, head) if plan.used else None
        # Consecutive batches that run alike go out together: one vocabulary projection and
        # one decoding step for their score-only rows (teachers.scoring.HEAD_ROWS).
        units: list[list[TeacherRequest]] = []
        passes: dict[int, list[Pass]] = {}
        for group in plan.groups():
            unit = [reqs[i] for g in group for i in plan.batches[g]]
            units.append(unit)
            passes[id(unit)] = [Pass([rows[i] for i in plan.batches[g]], [reqs[i] for i in plan.batches[g]],
                                     prefix if plan.over_prefix[g] else None) for g in group]

        def answer(unit: list[TeacherRequest]) -> list[RawOutput]:
            return self._answer_group(passes[id(unit)], head)

        self._send_batches(units, answer, on_result)

    def _answer_group(self, passes: list[Pass], head: SplitHead | None) -> list[RawOutput]:
        """A group of forward passes (batches of the plan): score-only rows by one forward pass
        each (their answer positions projected together, decoding on only for rows whose first
        token is not a label), the rest through ``generate`` pass by pass; both over the shared
        prefix where the plan gives the pass one (``teachers.scoring.plan_batches``)."""
        outs: list[list[RawOutput | None]] = [[None] * len(p.batch) for p in passes]
        picked = [[i for i, r in enumerate(p.batch) if score_only(r, self.cfg)] for p in passes]
        scoring = [(j, Pass([p.rows[i] for i in idx], [p.batch[i] for i in idx], p.prefix))
                   for j, (p, idx) in enumerate(zip(passes, picked, strict=True)) if idx]
        if scoring:
            got = self._score_passes([sp for _, sp in scoring], head)
            for (j, _), answers in zip(scoring, got, strict=True):
                for i, o in zip(picked[j], answers, strict=True):
                    outs[j][i] = o
        for j, p in enumerate(passes):
            full = [i for i, o in enumerate(outs[j]) if o is None]
            if full:
                gen = self._generate_batch([p.rows[i] for i in full], [p.batch[i] for i in full], p.prefix)
                for i, o in zip(full, gen, strict=True):
                    outs[j][i] = o
        return [o for row in outs for o in row]

    def _score_passes(self, passes: list[Pass], head: SplitHead | None) -> list[list[RawOutput]]:
        """The answer position's log-probabilities of every row, one forward pass per batch
        and (with ``head``) one vocabulary projection for all; the chosen token is the one
        greedy ``generate`` would pick (repetition penalty over the row's own batch). Rows
        whose chosen token is not a label are decoded on from their passes' caches, as
        ``generate`` would have gone on (a later position may hold the label): in one
        ``generate`` call, the caches padded to one width (``teachers.scoring.merge_caches``),
        else pass by pass."""
        import torch

        fwd, outs = [], []  # per pass: (inputs, cache); its last hidden states or logits
        for p in passes:
            inputs = batch_inputs(p.rows, p.prefix, self.tok.pad_token_id, self.device)
            out, cache = head.hidden(inputs) if head is not None else last_logits(self.model, inputs)
            outs.append(out)
            fwd.append((inputs, cache))
        logits = list(head.logits(torch.cat(outs)).split([len(p.rows) for p in passes])) \
            if head is not None else outs
        ids = [full_ids(inputs, p.prefix) for (inputs, _), p in zip(fwd, passes, strict=True)]
        chosen = torch.cat([chosen_tokens(lg, i, self.cfg.repetition_penalty)
                            for lg, i in zip(logits, ids, strict=True)]).tolist()
        logprobs = torch.cat(logits).float().log_softmax(-1)
        k = max(1, self.cfg.top_logprobs)
        top = torch.topk(logprobs, k)
        tops = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        heads = [(t, position_entry(logprobs[r], t, k, self.tok.decode, tv))
                 for r, (t, tv) in enumerate(zip(chosen, tops, strict=True))]
        results: list[list[RawOutput]] = []
        go_on: list[tuple[int, int, int]] = []  # (pass, row in pass, row in the group)
        r = 0
        for j, p in enumerate(passes):
            results.append([])
            for b, (row, req) in enumerate(zip(p.rows, p.batch, strict=True)):
                t, pos = heads[r]
                text = self.tok.decode([t], skip_special_tokens=True)
                done = t in self.eos_ids or req.max_tokens <= 1 or any(s in text for s in req.stop)
                if not done and needs_full_decode([pos], req.labels):
                    go_on.append((j, b, r))
                cut = min((text.find(s) for s in req.stop if s in text), default=-1)
                results[j].append(RawOutput(
                    text=text[:cut] if cut >= 0 else text, positions=[pos] if t not in self.eos_ids else [],
                    tokens_in=len(row), tokens_out=0 if t in self.eos_ids else 1,
                    finish_reason="score_only"))
                r += 1
        if go_on:
            self._decode_on(passes, fwd, ids, go_on, chosen, heads, results)
        return results

    def _decode_on(self, passes: list[Pass], fwd: list, ids: list, go_on: list[tuple[int, int, int]],
                   chosen: list[int], heads: list, results: list[list[RawOutput]]) -> None:
        """``generate`` on from the score passes' caches for the ``go_on`` rows (their first
        token already chosen), in one call where the caches merge, else pass by pass."""
        import torch

        parts = []  # per pass with rows going on: (pass, its rows, enc pieces, cache, width)
        for j in sorted({j for j, _, _ in go_on}):
            rows = [(b, r) for jj, b, r in go_on if jj == j]
            sel = torch.tensor([b for b, _ in rows], dtype=torch.long, device=self.device)
            inputs, cache = fwd[j]
            cache.batch_select_indices(sel)
            parts.append((j, rows, ids[j][sel], inputs["attention_mask"][sel], cache, ids[j].shape[1]))
        reqs = [[passes[j].batch[b] for b, _ in rows] for j, rows, *_ in parts]
        at = len(passes[0].prefix) if passes[0].prefix is not None else 0
        width = max(w for *_, w in parts)
        max_new = max(r.max_tokens for rs in reqs for r in rs)
        window = sliding_window(self.model.config)
        merged = None
        if len(parts) > 1 and (window is None or width + max_new < window):
            merged = merge_caches([(cache, w) for *_, cache, w in parts], at, window)
        kwarg = cache_kwarg(self.model)
        if merged is not None:
            groups = [(
                [(parts[i][0], b, r) for i, p in enumerate(parts) for b, r in p[1]],
                torch.cat([pad_at(p[2], width, at, self.tok.pad_token_id) for p in parts]),
                torch.cat([pad_at(p[3], width, at, 0) for p in parts]),
                merged, [r for rs in reqs for r in rs])]
        else:
            groups = [([(j, b, r) for b, r in rows], pid, mask, cache, rs)
                      for (j, rows, pid, mask, cache, _), rs in zip(parts, reqs, strict=True)]
        for rows, pid, mask, cache, rs in groups:
            first = torch.tensor([[chosen[r]] for _, _, r in rows], dtype=torch.long, device=self.device)
            hs = [heads[r] for _, _, r in rows]
            n = len(rows)
            if 2 < n < MIN_PROJECTION_ROWS:  # copies of the last row: a 16-row projection is faster
                sel = torch.tensor([*range(n), *[n - 1] * (MIN_PROJECTION_ROWS - n)], device=self.device)
                cache.batch_select_indices(sel)
                pid, mask, first = pid[sel], mask[sel], first[sel]
                rs, hs = rs + [rs[-1]] * (MIN_PROJECTION_ROWS - n), hs + [hs[-1]] * (MIN_PROJECTION_ROWS - n)
            enc = {"input_ids": torch.cat([pid, first], dim=1),
                   "attention_mask": torch.cat([mask, torch.ones_like(first)], dim=1), kwarg: cache}
            more = self._generate(enc, rs, heads=hs)[:n]
            for (j, b, _), o in zip(rows, more, strict=True):
                results[j][b] = o

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
