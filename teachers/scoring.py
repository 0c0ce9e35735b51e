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

**Where the prefix is not used.** :func:`plan_batches` decides it for every batch before
anything is sent: rows that part from the prefix early, and every batch whose prefix +
longest suffix + new tokens reaches the model's sliding window (Gemma 3: 512 tokens).
Past the window, the padding between prefix and suffix takes places in the sliding
layers' window, so a padded row's answer would differ from its unpadded one; such batches
run their prompts whole (their full length, not their suffix: the job's slow rows).
:func:`prompt_report` says so, with counts, before the job starts.

torch is imported inside the functions that use it: the API backends (``openai_compat``,
``vllm_engine``) import this module for :func:`score_only` and must not load torch.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from teachers.base import TeacherRequest
from teachers.softlabel import is_label_token
from workbench.config import TeacherConfig

log = logging.getLogger(__name__)

MIN_PREFIX = 8
"""Shorter common prefixes are not worth a cache (and its per-batch copy)."""

HEAD_ROWS = 64
"""Rows per vocabulary projection: consecutive batches that run the same way are answered
together, up to this many rows (a batch larger than it alone), their answer positions
projected onto the vocabulary in one product (:class:`SplitHead`). The projection reads the
whole vocabulary matrix whatever the row count (Gemma 3 270M: 262,144 x 640, 671 MB in
fp32; on one CPU thread ~50 ms for 1 row, ~120 ms for 16, ~250 ms for 64): projected batch
by batch it was a fifth of a score-only job's time."""

MIN_PROJECTION_ROWS = 16
"""The vocabulary projection of 3-15 rows is computed as 16 (padding rows, or copies of a
row in a decoding step): CPU BLAS (MKL here) runs a (rows x hidden) x (hidden x vocabulary)
product of under 16 rows row by row, so for Gemma 3 270M 12 rows took 229 ms and 16 rows
123 ms on one thread (1-2 rows: ~50 ms). On a GPU the extra rows cost nothing."""


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


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of ``rows`` left-padded to the longest."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def position_ids(mask):
    """Position ids from a (possibly mid-padded) attention mask, as ``generate`` derives them:
    each real token's index among the real tokens; padding gets 0."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


def cache_kwarg(model) -> str:
    """The forward's name for the KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sliding_window(config) -> int | None:
    """The model's sliding attention window in tokens; ``None`` when no layer slides."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    return window if window and (not layer_types or "sliding_attention" in layer_types) else None


def fits_window(prefix_len: int, suffix_len: int, new_tokens: int, window: int | None) -> bool:
    """Whether a batch of ``suffix_len`` padded suffix tokens after a ``prefix_len`` prefix,
    plus ``new_tokens`` generated ones, stays inside a sliding ``window`` (module docstring)."""
    return window is None or prefix_len + suffix_len + new_tokens < window


@dataclass
class BatchPlan:
    """A job's batches, in the order they are sent, and which of them run over the shared
    prefix (:func:`plan_batches`)."""

    batches: list[list[int]]
    """Row indices of each batch."""
    shared: list[bool]
    """Whether each batch holds rows that start with the shared prefix."""
    over_prefix: list[bool]
    """Whether each batch runs over the shared prefix (else its prompts run whole)."""
    prefix: int
    """Tokens of the shared prefix (0: none)."""
    window: int | None
    """The model's sliding window (``None``: none)."""
    tokens: list[tuple[int, int]] = field(default_factory=list)
    """Each batch's ``(real, padded)`` tokens as its forward pass computes them: the
    suffixes after the prefix where it runs over it, else the whole prompts."""

    @property
    def sharing(self) -> int:
        """Rows that start with the prefix."""
        return sum(len(b) for b, sh in zip(self.batches, self.shared, strict=True) if sh)

    @property
    def used(self) -> int:
        """Rows that run over the prefix."""
        return sum(len(b) for b, over in zip(self.batches, self.over_prefix, strict=True) if over)

    def at_window(self) -> list[int]:
        """The rows that start with the prefix but run whole: their batch reaches the window."""
        return [i for b, sh, over in zip(self.batches, self.shared, self.over_prefix, strict=True)
                if sh and not over for i in b]

    def groups(self, rows: int = HEAD_ROWS) -> list[list[int]]:
        """Consecutive batches answered together (indices into :attr:`batches`): those that
        run the same way (over the prefix or whole), up to ``rows`` rows in all; a batch of
        more rows alone. Their score-only rows share one vocabulary projection and one
        decoding step for the rows that go on (:data:`HEAD_ROWS`)."""
        out: list[list[int]] = []
        size = 0
        for i, batch in enumerate(self.batches):
            if out and self.over_prefix[out[-1][-1]] == self.over_prefix[i] and size + len(batch) <= rows:
                out[-1].append(i)
                size += len(batch)
            else:
                out.append([i])
                size = len(batch)
        return out

    def padding(self, over_prefix: bool | None = None) -> tuple[int, int]:
        """``(real, padded)`` tokens over the batches (``over_prefix``: only those that run
        over the prefix, or only those that run whole)."""
        sel = [t for t, over in zip(self.tokens, self.over_prefix, strict=True)
               if over_prefix is None or over == over_prefix]
        return sum(r for r, _ in sel), sum(p for _, p in sel)


def token_batches(lengths: list[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Consecutive runs of ``lengths`` (sorted ascending: the length buckets) as batches:
    ``batch_tokens=0``: ``batch_size`` rows each; else as many rows as keep rows x the
    batch's longest within ``batch_tokens`` padded tokens, at most ``batch_size`` (a row
    longer than the budget alone makes a batch of its own). Positions, not row ids."""
    if batch_tokens < 0:
        raise ValueError(f"batch_tokens={batch_tokens}: use 0 (batch_size rows) or a positive budget")
    if not batch_tokens:
        return [list(range(s, min(s + batch_size, len(lengths)))) for s in range(0, len(lengths), batch_size)]
    out: list[list[int]] = []
    cur: list[int] = []
    for i, n in enumerate(lengths):
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * max(n, lengths[cur[-1]]) > batch_tokens):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def plan_batches(rows: list[list[int]], new_tokens: list[int], batch_size: int, *,
                 prefix: int = 0, members: list[int] | None = None,
                 window: int | None = None, batch_tokens: int = 0) -> BatchPlan:
    """The batches of ``rows`` (token ids; ``new_tokens``: each row's cap on generated
    tokens): the rows sharing the ``prefix`` (``members``, from :func:`shared_prefix`), then
    the others, each group sorted by the tokens its forward pass computes (the suffix after
    the prefix, else the whole prompt) and cut by :func:`token_batches` (``batch_size``
    rows, or as many as fit ``batch_tokens`` padded tokens). A batch of sharing rows runs
    over the prefix when it :func:`fits_window`; one that does not runs its prompts whole."""
    share = set(members or [])
    batches: list[list[int]] = []
    sharing: list[bool] = []
    over: list[bool] = []
    tokens: list[tuple[int, int]] = []
    for shared in (True, False):
        cut = prefix if shared else 0
        group = sorted((i for i in range(len(rows)) if (i in share) == shared), key=lambda i: len(rows[i]))
        lengths = [len(rows[i]) - cut for i in group]
        for run in token_batches(lengths, batch_size, batch_tokens):
            batch = [group[j] for j in run]
            fits = shared and prefix > 0 and fits_window(
                prefix, max(lengths[j] for j in run), max(new_tokens[i] for i in batch), window)
            done = 0 if fits else cut  # a batch past the window runs its prompts whole
            batches.append(batch)
            sharing.append(shared)
            over.append(fits)
            tokens.append((sum(lengths[j] + done for j in run), len(run) * (max(lengths[j] for j in run) + done)))
    return BatchPlan(batches, sharing, over, prefix, window, tokens)


def _at(ordered: list[int], q: float) -> int:
    """The smallest of the ``ordered`` values at least ``q`` of them are at most."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def prompt_report(plan: BatchPlan, lengths: list[int], new_tokens: list[int],
                  max_length: int | None, *, prefix_cache: bool = True) -> list[tuple[int, str]]:
    """``(log level, message)`` lines that say, before a job is sent, how its prompts stand
    against the model's limits (the sliding window where the prefix is not used, the max
    length) and which rows run over the shared prefix and which run whole, and why. A
    warning where rows are slower than they could be or past the max length."""
    n = len(lengths)
    if not n:
        return []
    s = sorted(lengths)
    reach = sum(length + k >= plan.window for length, k in zip(lengths, new_tokens, strict=True)) \
        if plan.window else 0
    past = sum(length + k > max_length for length, k in zip(lengths, new_tokens, strict=True)) \
        if max_length else 0
    limits = [f"{reach} reach the model's {plan.window}-token sliding window" if plan.window
              else "the model has no sliding window",
              f"{past} pass its max length ({max_length})" if max_length else "its max length is unknown"]
    out = [(logging.INFO, f"prompts: {n}, {s[0]}-{s[-1]} tokens (p50 {_at(s, 0.5)}, p95 "
                          f"{_at(s, 0.95)}) + up to {max(new_tokens)} new; " + ", ".join(limits))]
    if plan.tokens:
        real, padded = plan.padding()
        out.append((logging.INFO, f"batches: {len(plan.batches)}, {real} real of {padded} padded "
                                  f"tokens computed ({real / max(1, padded):.0%})"))
    if past:
        out.append((logging.WARNING,
                    f"{past} of {n} prompts (with their new tokens) pass the model's max length "
                    f"({max_length} positions): it was not trained past it, so their answers are "
                    "unreliable; shorten them (data.context_turns, data.few_shot, the template)"))
    if not prefix_cache:
        return out
    if not plan.prefix:
        out.append((logging.INFO, "no shared prompt prefix (none of at least "
                                  f"{MIN_PREFIX} tokens that half the prompts share): every "
                                  "prompt runs whole"))
        return out
    parted = n - plan.sharing
    at_window = plan.at_window()
    head = (f"shared prompt prefix: {plan.prefix} tokens, computed once for {plan.used} of {n} prompts"
            if plan.used else
            f"shared prompt prefix: {plan.prefix} tokens, not computed: none of the {n} prompts uses it")
    whole = n - plan.used
    if not whole:
        return [*out, (logging.INFO, head)]
    why = []
    if parted:
        why.append(f"{parted} part from it before its end (e.g. a few-shot example's own "
                   "sample, shown another example in its place)")
    if at_window:
        mid = _at(sorted(lengths[i] for i in at_window), 0.5)
        itself = sum(lengths[i] + new_tokens[i] >= plan.window for i in at_window)
        dragged = (f" ({itself} reach it themselves, {len(at_window) - itself} share a batch "
                   "with one that does: a smaller teacher.batch_size keeps more on the prefix)"
                   if itself < len(at_window) else "")
        why.append(f"{len(at_window)} are in batches that reach the model's {plan.window}-token "
                   f"sliding window{dragged} (prefix + the batch's longest suffix + its new "
                   f"tokens >= {plan.window}; past the window the padding between prefix and "
                   f"suffix would change the sliding layers' answers), so each computes its whole "
                   f"prompt (p50 {mid} tokens, not the {mid - plan.prefix} after the prefix); "
                   "shorter prompts (data.context_turns, data.few_shot) keep them on the prefix")
    level = logging.WARNING if at_window else logging.INFO
    return [*out, (level, f"{head}; {whole} run whole: " + "; ".join(why))]


class SplitHead:
    """A causal LM as its decoder (token ids -> last hidden state and KV cache) and its
    vocabulary projection (hidden states -> logits, with the final logit soft-capping some
    models apply), so that the answer positions of several forward passes are projected in
    one product (:data:`HEAD_ROWS`). Built by :func:`split_head`, which checks the two halves
    give the model's own logits."""

    def __init__(self, model) -> None:
        self.model = model
        self.body = model.get_decoder()
        self.proj = model.get_output_embeddings()
        config = getattr(model.config, "text_config", None) or model.config
        self.cap = getattr(config, "final_logit_softcapping", None)
        self.kwarg = cache_kwarg(self.body)
        self.model_kwarg = cache_kwarg(model)

    def hidden(self, inputs: dict[str, Any]):
        """``(last hidden state of every row, KV cache)`` of one forward pass through the
        decoder (``inputs`` as :func:`batch_inputs` makes them for the whole model)."""
        import torch

        kw = {(self.kwarg if k == self.model_kwarg else k): v for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.body(**kw, use_cache=True)
        return out.last_hidden_state[:, -1, :], getattr(out, self.kwarg)

    def logits(self, hidden):
        """The vocabulary logits of ``hidden`` (N, hidden size), as the model computes them.
        Fewer than :data:`MIN_PROJECTION_ROWS` rows (but more than 2) are padded up to it."""
        import torch

        n = hidden.shape[0]
        if 2 < n < MIN_PROJECTION_ROWS:
            hidden = torch.cat([hidden, hidden.new_zeros(MIN_PROJECTION_ROWS - n, hidden.shape[1])])
        with torch.inference_mode():
            logits = self.proj(hidden)[:n]
            if self.cap is not None:
                logits = torch.tanh(logits / self.cap) * self.cap
        return logits


_SPLIT_CHECKED: dict[str, bool] = {}
"""Whether a model class with a given config splits (:func:`split_head`): a job that loads
the same model again is not checked again."""


def split_head(model, probe: list[int], device: str, atol: float = 1e-5) -> SplitHead | None:
    """A :class:`SplitHead` of ``model`` when its two halves give the model's own last-position
    logits on ``probe`` (token ids) within ``atol``; ``None`` for a model they do not (a
    bespoke head, no ``get_decoder``): its batches then project their own answer positions.
    The answer is kept per model class and config (the check is of the code, not the weights)."""
    key = f"{type(model).__module__}.{type(model).__qualname__}:{model.config.to_json_string()}"
    if key not in _SPLIT_CHECKED:
        _SPLIT_CHECKED[key] = _check_split(model, probe, device, atol)
        if not _SPLIT_CHECKED[key]:
            log.info("%s: its decoder and vocabulary projection do not give its own logits "
                     "apart; each batch projects its own answer positions", type(model).__name__)
    return SplitHead(model) if _SPLIT_CHECKED[key] else None


def _check_split(model, probe: list[int], device: str, atol: float) -> bool:
    import torch

    try:
        head = SplitHead(model)
        ids = torch.tensor([probe], dtype=torch.long, device=device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        hidden, _ = head.hidden(inputs)
        mine = head.logits(hidden)
        with torch.inference_mode():
            theirs = model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return False
    return mine.shape == theirs.shape and torch.allclose(mine.float(), theirs.float(), atol=atol, rtol=0)


def dynamic_layers(cache) -> bool:
    """Whether every layer of ``cache`` is a plain dynamic full or sliding-window layer (one
    ``keys`` and one ``values`` tensor, replaced and never written into): the layers whose
    tensors :func:`fresh_cache` and :func:`merge_caches` may reshape themselves."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers)


def merge_caches(parts: list[tuple[Any, int]], at: int, window: int | None):
    """One KV cache for the rows of several forward passes' caches (``(cache, width)``: a
    transformers ``DynamicCache`` of ``width`` positions each): every part padded to the
    widest by zero positions inserted at ``at`` (after the shared prefix, else at the left:
    where its own padding is; the rows' attention masks are padded alike, so nothing attends
    to them; where they go does not change an answer, as the keys carry their positions
    already and the next position counts the mask's ones), then stacked. ``None`` where that
    would change an answer or cannot be done: layers other than :func:`dynamic_layers`, or a
    sliding layer that has dropped positions (past ``window``)."""
    import torch
    from transformers.cache_utils import DynamicSlidingWindowLayer

    width = max(w for _, w in parts)
    if window is not None and width >= window:
        return None
    first = parts[0][0]
    n_layers = len(first.layers)
    for cache, w in parts:
        if (len(cache.layers) != n_layers or not dynamic_layers(cache)
                or any(layer.keys.shape[-2] != w for layer in cache.layers)):
            return None
    merged = copy.copy(first)
    merged.layers = []
    for i, layer in enumerate(first.layers):
        keys, values = [], []
        for cache, w in parts:
            k, v = cache.layers[i].keys, cache.layers[i].values
            if w < width:
                gap = list(k.shape)
                gap[-2] = width - w
                z = k.new_zeros(gap)
                k = torch.cat([k[..., :at, :], z, k[..., at:, :]], dim=-2)
                v = torch.cat([v[..., :at, :], z, v[..., at:, :]], dim=-2)
            keys.append(k)
            values.append(v)
        new = copy.copy(layer)
        new.keys, new.values = torch.cat(keys), torch.cat(values)
        if isinstance(new, DynamicSlidingWindowLayer):
            new.cumulative_length = width
        merged.layers.append(new)
    return merged


def pad_at(t, width: int, at: int, value: int):
    """``t`` (rows x positions) widened to ``width`` by ``value`` columns inserted at ``at``."""
    import torch

    if t.shape[1] == width:
        return t
    gap = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t[:, :at], gap, t[:, at:]], dim=1)


class PrefixKV:
    """The KV cache of one token prefix, computed once, copied per batch."""

    def __init__(self, model, prefix: list[int], device: str, head: SplitHead | None = None) -> None:
        import torch

        self.prefix = list(prefix)
        self.kwarg = cache_kwarg(model)
        ids = torch.tensor([self.prefix], dtype=torch.long, device=device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if head is not None:  # no vocabulary projection: nothing reads the prefix's logits
            _, self.cache = head.hidden(inputs)
        else:
            with torch.inference_mode():
                out = model(**inputs, use_cache=True, logits_to_keep=1)
            self.cache = getattr(out, self.kwarg)
        self.window = sliding_window(model.config)

    def __len__(self) -> int:
        return len(self.prefix)

    def fits(self, suffix_len: int, new_tokens: int) -> bool:
        """Whether a batch of ``suffix_len`` padded suffix tokens plus ``new_tokens`` generated
        ones stays inside the model's sliding window (:func:`fits_window`)."""
        return fits_window(len(self), suffix_len, new_tokens, self.window)

    def for_batch(self, n: int):
        """A fresh copy of the prefix cache, repeated to batch size ``n`` (extended in place by
        the forward pass that uses it)."""
        return fresh_cache(self.cache, n)


def fresh_cache(cache, n: int):
    """A copy of a transformers ``Cache`` for a batch of ``n`` rows that a forward pass may
    extend without touching ``cache``: the cache and its layers are copied, their tensors
    shared (the dynamic layers only ever replace their tensors: ``torch.cat``, slicing,
    ``repeat_interleave``; they never write into them) and widened to ``n`` rows: a view
    (``expand``, no copy: the pass's ``torch.cat`` writes the rows out once) for the dynamic
    full and sliding-window layers of a one-row prefix, else ``batch_repeat_interleave``.
    Copying the 69-token prefix of Gemma 3 270M to 16 rows took ~22 ms a batch."""
    fresh = copy.copy(cache)
    fresh.layers = [copy.copy(layer) for layer in cache.layers]
    if n > 1:
        if not (dynamic_layers(fresh) and all(layer.keys.shape[0] == 1 for layer in fresh.layers)):
            fresh.batch_repeat_interleave(n)
            return fresh
        for layer in fresh.layers:
            layer.keys = layer.keys.expand(n, *layer.keys.shape[1:])
            layer.values = layer.values.expand(n, *layer.values.shape[1:])
    return fresh


def batch_inputs(rows: list[list[int]], prefix: PrefixKV | None, pad_id: int,
                 device: str) -> dict[str, Any]:
    """Model inputs for full token rows: with ``prefix``, the rows' suffixes after it (left-
    padded, the mask spanning prefix + suffix, positions continuing after the prefix) and
    the prefix cache; without, the left-padded rows."""
    import torch

    p = len(prefix) if prefix is not None else 0
    ids, mask = left_pad([r[p:] for r in rows], pad_id)
    if prefix is not None:
        mask = torch.cat([torch.ones((len(rows), p), dtype=torch.long), mask], dim=1)
    pos = position_ids(mask)[:, p:]
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device),
              "position_ids": pos.to(device)}
    if prefix is not None:
        inputs[prefix.kwarg] = prefix.for_batch(len(rows))
    return inputs


def full_ids(inputs: dict[str, Any], prefix: PrefixKV | None):
    """The whole padded token matrix of a batch (prefix included), as ``generate`` sees it."""
    import torch

    ids = inputs["input_ids"]
    if prefix is None:
        return ids
    head = torch.tensor(prefix.prefix, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
    return torch.cat([head, ids], dim=1)


def last_logits(model, inputs: dict[str, Any]):
    """``(logits, cache)``: the logits at the last position of every row from one forward
    pass (``logits_to_keep=1``), and the KV cache it leaves (to decode on from)."""
    import torch

    with torch.inference_mode():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :], getattr(out, cache_kwarg(model))


def chosen_tokens(logits, ids, repetition_penalty: float):
    """The greedy next token of every row, as ``generate`` picks it: the argmax after the
    repetition penalty over the row's whole input (padding included, as generate has it)."""
    import torch

    scores = logits.float()
    if repetition_penalty != 1.0:
        # transformers' RepetitionPenaltyLogitsProcessor's arithmetic on the row's own tokens
        # only (it builds a vocabulary-wide mask and penalises every score, then keeps those)
        picked = scores.gather(1, ids)
        picked = torch.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
        scores = scores.clone().scatter_(1, ids, picked)
    return scores.argmax(dim=-1)


def position_entry(logprobs, chosen: int, k: int, decode, top=None) -> dict[str, Any]:
    """One position in the backends' format: the chosen token, its log-probability, top-k
    (``top``: ``(values, indices)`` lists already taken, for rows topped in one call)."""
    import torch

    if top is None:
        t = torch.topk(logprobs, k)
        top = (t.values.tolist(), t.indices.tolist())
    return {"token": decode([chosen]), "logprob": float(logprobs[chosen]),
            "top": [[decode([j]), float(v)] for v, j in zip(*top, strict=True)]}
