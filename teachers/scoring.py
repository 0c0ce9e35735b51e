"""Score-only requests and the shared-prefix KV cache, for in-process causal LMs.

**Score-only.** A request whose answer is read only as a soft label (``req.labels`` set,
log-probabilities wanted, greedy decoding) needs the log-probabilities of one position:
the answer position, the first generated token. One forward pass over the prompt with
``logits_to_keep=1`` gives them; no ``generate``, no vocabulary logits for the prompt's
other positions, no decoding beyond the chosen token. It is exact: today's path reads the
soft label at the first generated position whose chosen token is a label
(:func:`teachers.softlabel.answer_position`), so whenever the greedy first token is a
label the two paths read the same position. A row whose first token is not a label is
answered by the full path instead (:func:`needs_full_decode`), so the answers are the same
and the cache keys do not change.

**Shared prefix.** Every prompt of a caching job starts with the same template text (the
system line and few-shot examples: 75 of the 97 tokens of a ``sentiment_polarity`` prompt
for Gemma 3 270M). :func:`shared_prefix` finds the longest prefix of the job's token ids
that most rows share (the rows that part from it early run without it); :class:`PrefixKV`
computes its KV cache once per job and hands each batch a copy repeated to the batch size. A batch then runs only its suffixes, left-padded *between*
the prefix and the suffix (the attention mask is ones over the prefix, zeros over the
padding, ones over the suffix), with position ids continuing after the prefix — the ids an
unpadded prompt would have, as ``generate`` computes them from the attention mask. Token
ids are split, never text, so prefix + suffix is exactly the full prompt's tokenisation.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

from teachers.base import TeacherRequest
from teachers.softlabel import is_label_token
from workbench.config import TeacherConfig

MIN_PREFIX = 8
"""Shorter common prefixes are not worth a cache (and its per-batch copy)."""


def score_only(req: TeacherRequest, cfg: TeacherConfig) -> bool:
    """True when ``req`` can be answered from the answer position's log-probabilities alone."""
    return bool(cfg.score_only and req.labels and req.want_logprobs and cfg.temperature == 0)


def needs_full_decode(positions: list[dict[str, Any]] | None, labels: list[str]) -> bool:
    """True when a score-only answer is not the full path's answer: the first chosen token is
    not a label (or there is none), so the full path would read a later position."""
    return not positions or not is_label_token(positions[0]["token"], labels)


def shared_prefix(rows: list[list[int]], *, keep: int = 1,
                  min_share: float = 0.5) -> tuple[int, list[int]]:
    """The token prefix worth one KV cache, and the indices of the rows that start with it.

    Of the prefixes at least ``min_share`` of the rows share, the one that saves the most
    tokens (its length times the rows that have it), each row keeping ``keep`` tokens of its
    own (a forward pass needs at least one new token). A few rows that part early (a
    few-shot example's own sample, shown the spare example in its place) then run without
    the prefix, instead of cutting every row's prefix down to the system line. ``(0, [])``
    for fewer than two rows or a prefix under :data:`MIN_PREFIX`.
    """
    need = max(2, math.ceil(min_share * len(rows)))
    group = list(range(len(rows)))
    best, best_group, depth = 0, [], 0
    while len(group) >= need:
        live = [i for i in group if len(rows[i]) - keep > depth]
        if len(live) < need:
            break
        token, count = Counter(rows[i][depth] for i in live).most_common(1)[0]
        if count < need:
            break
        group = [i for i in live if rows[i][depth] == token]
        depth += 1
        if depth >= MIN_PREFIX and depth * len(group) > best * len(best_group):
            best, best_group = depth, group
    return best, best_group


def left_pad(rows: list[list[int]], pad_id: int, torch) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of ``rows`` left-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def position_ids(mask, torch):
    """Position ids from a (possibly mid-padded) attention mask, as ``generate`` derives them:
    each real token's index among the real tokens; padding gets 0."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


def cache_kwarg(model) -> str:
    """The forward's name for the KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class PrefixKV:
    """The KV cache of one token prefix, computed once, copied per batch."""

    def __init__(self, model, prefix: list[int], device: str, torch) -> None:
        self.prefix = list(prefix)
        self.kwarg = cache_kwarg(model)
        ids = torch.tensor([self.prefix], dtype=torch.long, device=device)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                        logits_to_keep=1)
        self.cache = getattr(out, self.kwarg)
        window = getattr(model.config, "sliding_window", None)
        layer_types = getattr(model.config, "layer_types", None) or []
        self.window = window if window and (not layer_types or "sliding_attention" in layer_types) else None

    def __len__(self) -> int:
        return len(self.prefix)

    def fits(self, suffix_len: int, new_tokens: int) -> bool:
        """Whether a batch of ``suffix_len`` padded suffix tokens plus ``new_tokens`` generated
        ones stays inside the model's sliding window (beyond it, a sliding layer's cache drops
        prefix keys the padded layout still counts on; such batches run without the prefix)."""
        return self.window is None or len(self) + suffix_len + new_tokens < self.window

    def for_batch(self, n: int):
        """A fresh copy of the prefix cache, repeated to batch size ``n`` (extended in place by
        the forward pass that uses it)."""
        cache = copy.deepcopy(self.cache)
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache


def batch_inputs(rows: list[list[int]], prefix: PrefixKV | None, pad_id: int, device: str,
                 torch) -> dict[str, Any]:
    """Model inputs for full token rows: with ``prefix``, the rows' suffixes after it (left-
    padded, the mask spanning prefix + suffix, positions continuing after the prefix) and
    the prefix cache; without, the left-padded rows."""
    p = len(prefix) if prefix is not None else 0
    ids, mask = left_pad([r[p:] for r in rows], pad_id, torch)
    if prefix is not None:
        mask = torch.cat([torch.ones((len(rows), p), dtype=torch.long), mask], dim=1)
    pos = position_ids(mask, torch)[:, p:]
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
              "position_ids": pos.to(device)}
    if prefix is not None:
        inputs[prefix.kwarg] = prefix.for_batch(len(rows))
    return inputs


def full_ids(inputs: dict[str, Any], prefix: PrefixKV | None, torch):
    """The whole padded token matrix of a batch (prefix included), as ``generate`` sees it."""
    ids = inputs["input_ids"]
    if prefix is None:
        return ids
    head = torch.tensor(prefix.prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
    return torch.cat([head, ids], dim=1)


def last_logits(model, inputs: dict[str, Any], torch):
    """``(logits, cache)``: the logits at the last position of every row from one forward
    pass (``logits_to_keep=1``), and the KV cache it leaves (to decode on from)."""
    with torch.inference_mode():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], getattr(out, cache_kwarg(model))


def chosen_tokens(logits, ids, repetition_penalty: float, torch):
    """The greedy next token of every row, as ``generate`` picks it: the argmax after the
    repetition penalty over the row's whole input (padding included, as generate has it)."""
    scores = logits.float()
    if repetition_penalty != 1.0:
        from transformers import RepetitionPenaltyLogitsProcessor

        scores = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids, scores.clone())
    return scores.argmax(dim=-1)


def position_entry(logprobs, chosen: int, k: int, decode, torch) -> dict[str, Any]:
    """One position in the backends' format: the chosen token, its log-probability, top-k."""
    top = torch.topk(logprobs, k)
    return {"token": decode([chosen]), "logprob": float(logprobs[chosen]),
            "top": [[decode([j]), float(v)]
                    for v, j in zip(top.values.tolist(), top.indices.tolist(), strict=True)]}
