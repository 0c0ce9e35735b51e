"""Score-only forward passes and the shared-prefix KV cache on tiny random causal LMs built
from a transformers config (one with sliding-window layers, as Gemma 3 has)."""

import copy

import pytest

from teachers.base import TeacherRequest
from teachers.scoring import (
    PrefixKV,
    batch_inputs,
    chosen_tokens,
    fresh_cache,
    full_ids,
    last_logits,
    merge_caches,
    needs_full_decode,
    pad_at,
    plan_batches,
    prompt_report,
    score_only,
    shared_prefix,
    split_head,
    token_batches,
)
from workbench.config import TeacherConfig

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["gemma3", "llama"])
def model(request):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if request.param == "gemma3":
        cfg = Gemma3TextConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=64,
                               layer_types=["sliding_attention", "sliding_attention", "sliding_attention",
                                            "full_attention"], pad_token_id=0)
        m = Gemma3ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
        m = LlamaForCausalLM(cfg)
    return m.eval()


def _rows(n=5, prefix=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, 97, (prefix,), generator=g).tolist()
    return [head + torch.randint(3, 97, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_shared_prefix():
    rows = _rows(prefix=20)
    n, members = shared_prefix(rows)
    assert n >= 20 and all(r[:n] == rows[0][:n] for r in rows)
    assert members == list(range(len(rows)))
    assert all(len(r) > n for r in rows)  # every row keeps a token of its own
    assert shared_prefix(rows[:1]) == (0, [])
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5]]) == (0, [])  # under MIN_PREFIX
    assert shared_prefix([list(range(3, 20)), list(range(3, 20))]) == (16, [0, 1])


def test_a_few_rows_that_part_early_do_not_cut_the_prefix():
    """Few-shot prompts: the example's own sample sees another example after the system
    line; the 20-token prefix stays for the other rows, the odd ones run without it."""
    rows = _rows(n=10, prefix=30)
    odd = [rows[3][:10] + [99] + rows[3][10:], rows[7][:10] + [98] + rows[7][10:]]
    rows[3], rows[7] = odd
    n, members = shared_prefix(rows)
    assert n >= 30 and members == [0, 1, 2, 4, 5, 6, 8, 9]
    assert all(rows[i][:n] == rows[0][:n] for i in members)
    # a prefix only a minority shares is not taken
    assert shared_prefix(rows, min_share=0.9)[0] == 10


def test_prefix_scoring_equals_full_forward(model):
    rows = _rows()
    plain, _ = last_logits(model, batch_inputs(rows, None, 0, "cpu"))
    # each row alone, unpadded: the reference the padded batch must match
    alone = torch.cat([model(input_ids=torch.tensor([r])).logits[:, -1] for r in rows]).detach()
    prefix = PrefixKV(model, rows[0][:shared_prefix(rows)[0]], "cpu")
    inputs = batch_inputs(rows, prefix, 0, "cpu")
    cached, _ = last_logits(model, inputs)
    assert torch.allclose(plain, alone, atol=1e-5)
    assert torch.allclose(cached, alone, atol=1e-5)
    assert full_ids(inputs, prefix)[:, :len(prefix)].eq(torch.tensor(rows[0][:len(prefix)])).all()
    # the prefix cache is not consumed by a batch: a second batch gets a fresh copy
    again, _ = last_logits(model, batch_inputs(rows[:2], prefix, 0, "cpu"))
    assert torch.allclose(again, alone[:2], atol=1e-5)


def test_prefix_generation_equals_plain_generation(model):
    rows = _rows(n=4, seed=3)
    prefix = PrefixKV(model, rows[0][:shared_prefix(rows)[0]], "cpu")
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
              output_logits=True, temperature=None, top_p=None, top_k=None, repetition_penalty=1.3)
    plain_in = batch_inputs(rows, None, 0, "cpu")
    plain = model.generate(input_ids=plain_in["input_ids"], attention_mask=plain_in["attention_mask"], **kw)
    cin = batch_inputs(rows, prefix, 0, "cpu")
    cached = model.generate(input_ids=full_ids(cin, prefix), attention_mask=cin["attention_mask"],
                            **{prefix.kwarg: cin[prefix.kwarg]}, **kw)
    n = plain_in["input_ids"].shape[1]
    m = cin["input_ids"].shape[1] + len(prefix)
    assert plain.sequences[:, n:].tolist() == cached.sequences[:, m:].tolist()
    for a, b in zip(plain.logits, cached.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    # the score-only pick of the first token is generate's (repetition penalty included)
    first = chosen_tokens(last_logits(model, cin)[0], full_ids(cin, prefix), 1.3)
    assert first.tolist() == cached.sequences[:, m].tolist()


def test_split_head_projects_several_passes_as_the_model_does(model):
    """Decoder and vocabulary projection apart: two passes' answer positions, projected in
    one product, are the model's own logits of each pass; the prefix cache made without a
    projection serves like the one made with it."""
    rows = _rows(n=6, seed=5)
    head = split_head(model, rows[0], "cpu")
    assert head is not None
    n = shared_prefix(rows)[0]
    prefix, plain_prefix = PrefixKV(model, rows[0][:n], "cpu", head), PrefixKV(model, rows[0][:n], "cpu")
    passes = [rows[:2], rows[2:]]
    hidden = [head.hidden(batch_inputs(p, prefix, 0, "cpu"))[0] for p in passes]
    together = head.logits(torch.cat(hidden))
    own = torch.cat([last_logits(model, batch_inputs(p, plain_prefix, 0, "cpu"))[0] for p in passes])
    assert torch.allclose(together, own, atol=1e-5)


def test_split_head_refuses_a_model_whose_halves_differ(model, monkeypatch):
    """A projection that is not what the model's forward applies (here: a soft-cap the
    forward does not have) is caught by the check, and the batches keep their own."""
    import teachers.scoring as scoring

    monkeypatch.setattr(scoring.SplitHead, "__init__", _capped_init(scoring.SplitHead.__init__))
    monkeypatch.setattr(scoring, "_SPLIT_CHECKED", {})
    assert split_head(model, _rows()[0], "cpu") is None


def _capped_init(init):
    def wrapped(self, model):
        init(self, model)
        self.cap = 0.01  # the forward of this test's models never caps
    return wrapped


@pytest.mark.parametrize("over_prefix", [True, False])
def test_merged_caches_decode_on_as_each_pass_alone(model, over_prefix):
    """Rows of two score passes of different widths go on decoding in one ``generate`` from
    their caches padded to one width (zero positions where their padding is, masked): the
    same tokens and logits as each pass going on from its own cache."""
    rows = _rows(n=6, seed=7)
    rows = sorted(rows, key=len)
    prefix = PrefixKV(model, rows[0][:shared_prefix(rows)[0]], "cpu") if over_prefix else None
    at = len(prefix) if prefix is not None else 0
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
              output_logits=True, temperature=None, top_p=None, top_k=None, repetition_penalty=1.0)
    parts = []
    for p in (rows[:3], rows[3:]):
        inputs = batch_inputs(p, prefix, 0, "cpu")
        logits, cache = last_logits(model, inputs)
        ids = full_ids(inputs, prefix)
        first = logits.argmax(-1, keepdim=True)
        parts.append((ids, inputs["attention_mask"], cache, first))
    alone = []
    for ids, mask, cache, first in parts:
        c = copy.deepcopy(cache)
        out = model.generate(input_ids=torch.cat([ids, first], 1),
                             attention_mask=torch.cat([mask, torch.ones_like(first)], 1),
                             **{_kwarg(model): c}, **kw)
        alone.append((out.sequences[:, ids.shape[1] + 1:], out.logits))
    width = max(ids.shape[1] for ids, *_ in parts)
    assert len({ids.shape[1] for ids, *_ in parts}) == 2  # the passes differ in width
    merged = merge_caches([(cache, ids.shape[1]) for ids, _, cache, _ in parts], at, None)
    assert merged is not None
    ids = torch.cat([pad_at(i, width, at, 0) for i, *_ in parts])
    mask = torch.cat([pad_at(m, width, at, 0) for _, m, *_ in parts])
    first = torch.cat([f for *_, f in parts])
    out = model.generate(input_ids=torch.cat([ids, first], 1),
                         attention_mask=torch.cat([mask, torch.ones_like(first)], 1),
                         **{_kwarg(model): merged}, **kw)
    assert out.sequences[:, width + 1:].tolist() == torch.cat([a for a, _ in alone]).tolist()
    for step, lg in enumerate(out.logits):
        assert torch.allclose(lg, torch.cat([a[step] for _, a in alone]), atol=1e-4)
    # past the window (or a layer that dropped positions) there is no merge
    assert merge_caches([(cache, ids.shape[1]) for ids, _, cache, _ in parts], at, width) is None


def _kwarg(model):
    from teachers.scoring import cache_kwarg

    return cache_kwarg(model)


def test_groups_join_batches_that_run_alike_up_to_the_head_rows():
    """Consecutive batches over the prefix go out together up to the row cap; a batch that
    runs whole starts a group of its own kind; a batch over the cap is alone."""
    head = list(range(3, 43))
    suffix = [2, 3, 4, 5, 8, 10, 12, 20, 21, 22, 25, 30]
    rows = [head + [50 + i] + [90] * (k - 1) for i, k in enumerate(suffix)] + [head[:10] + [91] * 40]
    new = [2] * len(rows)
    n, members = shared_prefix(rows)
    plan = plan_batches(rows, new, 4, prefix=n, members=members, window=64)
    assert plan.over_prefix == [True, True, False, False]
    assert plan.groups(64) == [[0, 1], [2, 3]]
    assert plan.groups(4) == [[0], [1], [2], [3]]
    assert plan.groups(6) == [[0], [1], [2, 3]]
    assert plan.groups(2) == [[0], [1], [2], [3]]


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_chosen_tokens_penalise_as_transformers_does(penalty):
    """The penalty on the row's own tokens only (repeats, padding and negative scores
    included) picks what transformers' RepetitionPenaltyLogitsProcessor picks."""
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 3
    ids = torch.randint(0, 50, (64, 12), generator=g)
    ids[:, :3] = 0  # left padding
    # the rows' own tokens are often the argmax before the penalty: it decides there
    logits[torch.arange(64), ids[:, -1]] += 10 * (torch.arange(64) % 2)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    assert chosen_tokens(logits, ids, penalty).tolist() == theirs.argmax(-1).tolist()
    assert not torch.equal(chosen_tokens(logits, ids, penalty), logits.argmax(-1))


def test_prefix_beyond_the_sliding_window_is_refused(model):
    prefix = PrefixKV(model, list(range(3, 43)), "cpu")
    if prefix.window is None:
        assert prefix.fits(10_000, 64)
    else:
        assert prefix.fits(10, 4) and not prefix.fits(20, 4)


def test_score_only_needs_greedy_logprobs_and_labels():
    req = TeacherRequest(key="k", messages=[], prompt="p", want_logprobs=True, labels=["negative", "positive"])
    assert score_only(req, TeacherConfig(backend="hf_local"))
    assert not score_only(req, TeacherConfig(backend="hf_local", score_only=False))
    assert not score_only(req, TeacherConfig(backend="hf_local", temperature=0.7))
    assert not score_only(TeacherRequest(key="k", messages=[], prompt="p", want_logprobs=True),
                          TeacherConfig(backend="hf_local"))
    labels = ["negative", "neutral", "positive"]
    assert not needs_full_decode([{"token": "▁positive", "logprob": -0.1, "top": []}], labels)
    assert not needs_full_decode([{"token": " neg", "logprob": -0.1, "top": []}], labels)
    assert needs_full_decode([{"token": " ", "logprob": -0.1, "top": []}], labels)
    assert needs_full_decode([], labels) and needs_full_decode(None, labels)


# ------------------------------------------------------- the plan, said before sending


def test_plan_keeps_the_prefix_inside_the_window_and_says_why_not_elsewhere():
    """40 shared tokens, a 64-token window, 2 new tokens: batches whose longest suffix
    reaches 22 tokens run whole; one row parts from the prefix early. The report counts
    both, as a warning, and the prefix line counts the rows that really use it."""
    import logging

    head = list(range(3, 43))
    suffix = [2, 3, 4, 5, 8, 10, 12, 20, 21, 22, 25, 30]
    rows = [head + [50 + i] + [90] * (k - 1) for i, k in enumerate(suffix)] + [head[:10] + [91] * 40]
    new = [2] * len(rows)
    n, members = shared_prefix(rows)
    assert n == 40 and members == list(range(12))
    plan = plan_batches(rows, new, 4, prefix=n, members=members, window=64)
    assert plan.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12]]
    # the second batch's longest prompt is 40 + 20 + 2 = 62 < 64; the third's 72
    assert plan.over_prefix == [True, True, False, False]
    assert (plan.sharing, plan.used, plan.at_window()) == (12, 8, [8, 9, 10, 11])
    lines = prompt_report(plan, [len(r) for r in rows], new, 100)
    levels = [lvl for lvl, _ in lines]
    text = "\n".join(m for _, m in lines)
    assert levels == [logging.INFO, logging.INFO, logging.WARNING]
    assert "prompts: 13, 42-70 tokens" in text and "+ up to 2 new" in text
    # 3 prompts reach the window themselves; their batch takes a fourth along
    assert "3 reach the model's 64-token sliding window, 0 pass its max length (100)" in text
    assert "shared prompt prefix: 40 tokens, computed once for 8 of 13 prompts; 5 run whole" in text
    assert "1 part from it before its end" in text
    assert ("4 are in batches that reach the model's 64-token sliding window (3 reach it "
            "themselves, 1 share a batch with one that does: a smaller teacher.batch_size") in text
    assert "p50 62 tokens, not the 22 after the prefix" in text
    # past the max length: a warning of its own
    lines = prompt_report(plan, [len(r) for r in rows], new, 60)
    assert any(lvl == logging.WARNING and "5 of 13 prompts" in m and "max length (60" in m for lvl, m in lines)
    # without a window every sharing batch keeps the prefix; the line says so, as info
    plan = plan_batches(rows, new, 4, prefix=n, members=members, window=None)
    assert plan.used == 12
    lines = prompt_report(plan, [len(r) for r in rows], new, None)
    assert lines[-1] == (logging.INFO, "shared prompt prefix: 40 tokens, computed once for 12 of 13 "
                                       "prompts; 1 run whole: 1 part from it before its end (e.g. a "
                                       "few-shot example's own sample, shown another example in its place)")
    assert "the model has no sliding window" in lines[0][1]
    # every batch past the window: the prefix is not computed, and the line says that
    plan = plan_batches(rows[8:12], new[8:12], 4, prefix=n, members=[0, 1, 2, 3], window=64)
    lines = prompt_report(plan, [len(r) for r in rows[8:12]], new[8:12], None)
    assert plan.used == 0 and lines[-1][0] == logging.WARNING
    assert "40 tokens, not computed: none of the 4 prompts uses it; 4 run whole" in lines[-1][1]
    # no prefix (or prefix_cache off): one line fewer, no warning
    plan = plan_batches(rows, new, 4)
    assert plan.used == 0 and all(not o for o in plan.over_prefix)
    assert "every prompt runs whole" in prompt_report(plan, [len(r) for r in rows], new, None)[-1][1]
    assert len(prompt_report(plan, [len(r) for r in rows], new, None, prefix_cache=False)) == 2


def test_token_budget_batches_fill_to_the_budget_and_cut_at_length_jumps():
    """Sorted lengths 2..30: with a 64-token budget the short rows share large batches and
    the long ones small ones, each batch's rows x longest within the budget (a row over it
    alone); with batch_tokens=0 the batches are batch_size rows, as before."""
    lengths = [2, 2, 3, 3, 3, 4, 4, 5, 8, 9, 10, 16, 30, 70]
    assert token_batches(lengths, 4, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13]]
    got = token_batches(lengths, 100, 64)
    assert [i for b in got for i in b] == list(range(len(lengths)))
    assert got == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11], [12], [13]]
    for b in got:
        assert len(b) * max(lengths[i] for i in b) <= 64 or len(b) == 1
    # the row cap still holds
    assert max(len(b) for b in token_batches(lengths, 3, 64)) == 3
    with pytest.raises(ValueError, match="batch_tokens=-1"):
        token_batches(lengths, 4, -1)


def test_plan_counts_real_and_padded_suffix_tokens():
    """Over the prefix a batch computes its suffixes, padded to its longest; a batch that
    reaches the window computes whole prompts. The token budget cuts the padding of a
    spread of suffix lengths that fixed-size batches pad to their longest."""
    head = list(range(3, 43))
    suffix = [1, 1, 2, 2, 2, 3, 3, 12, 14, 15]
    rows = [head + [50 + i] * k for i, k in enumerate(suffix)]
    new = [2] * len(rows)
    fixed = plan_batches(rows, new, 5, prefix=40, members=list(range(10)), window=None)
    assert fixed.batches == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert fixed.tokens == [(8, 10), (47, 75)] and fixed.padding() == (55, 85)
    budget = plan_batches(rows, new, 10, prefix=40, members=list(range(10)), window=None, batch_tokens=30)
    assert budget.batches == [[0, 1, 2, 3, 4, 5, 6], [7, 8], [9]]
    assert budget.padding() == (55, 21 + 28 + 15) and budget.padding(True) == budget.padding()
    # past the window (40 + 15 + 2 >= 57) the last batch runs whole: 55 tokens, not 15
    windowed = plan_batches(rows, new, 10, prefix=40, members=list(range(10)), window=57, batch_tokens=30)
    assert windowed.over_prefix == [True, True, False]
    assert windowed.tokens[-1] == (55, 55) and windowed.padding(False) == (55, 55)
    lines = prompt_report(windowed, [len(r) for r in rows], new, None)
    assert "batches: 3, 95 real of 104 padded tokens computed (91%)" in lines[1][1]


def test_fresh_cache_leaves_the_prefix_cache_as_it_was(model):
    """A batch's copy of the prefix cache is extended by its forward pass; the prefix's own
    tensors keep their shape and values, so the next batch starts from the prefix again."""
    rows = _rows(n=3, prefix=20)
    prefix = PrefixKV(model, rows[0][:20], "cpu")
    before = [(layer.keys.clone(), layer.values.clone()) for layer in prefix.cache.layers]
    copy = fresh_cache(prefix.cache, 3)
    assert all(c.keys.shape[0] == 3 for c in copy.layers)
    last_logits(model, batch_inputs(rows, prefix, 0, "cpu"))
    for layer, (k, v) in zip(prefix.cache.layers, before, strict=True):
        assert layer.keys.shape == k.shape and torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def _tiny_gemma_dir(tmp_path):
    """A tiny random Gemma 3 (sliding window 64) with a word-level tokenizer, saved as a
    model directory hf_local loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GenerationConfig,
        PreTrainedTokenizerFast,
    )

    words = ["<pad>", "<unk>", "<s>", "</s>", "negative", "neutral", "positive", *[f"w{i}" for i in range(90)]]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=64,
                           layer_types=["sliding_attention", "full_attention"], pad_token_id=0,
                           bos_token_id=2, eos_token_id=3, max_position_embeddings=512)
    model = Gemma3ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(bos_token_id=2, eos_token_id=3, pad_token_id=0)
    model.save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    return tmp_path / "gemma"


def test_hf_local_says_which_prompts_skip_the_prefix_before_sending(tmp_path, caplog):
    """A job whose long prompts reach the sliding window: before the first answer, the log
    counts them and the prefix line counts only the prompts that use it; the answers are
    the plain path's."""
    import logging

    from teachers.hf_local import HFLocalTeacher

    path = _tiny_gemma_dir(tmp_path)
    head = " ".join(f"w{i}" for i in range(40))
    lengths = [2, 3, 4, 6, 10, 12, 18, 20, 21, 22, 25, 30]
    labels = ["negative", "neutral", "positive"]
    reqs = [TeacherRequest(key=f"k{i}", messages=[], prompt=head + " " + " ".join(f"w{50 + (i + j) % 40}" for j in range(k)),
                           max_tokens=2, want_logprobs=True, labels=labels) for i, k in enumerate(lengths)]

    def run(**kw):
        teacher = HFLocalTeacher(TeacherConfig(backend="hf_local", model=str(path), api="completions",
                                               device="cpu", batch_size=4, top_logprobs=3, **kw))
        teacher.load()
        got, said = {}, []

        def on_result(req, raw):
            if not got:  # what the log said before the first answer
                said.extend(r for r in caplog.records if r.name == "teachers.hf_local")
            got[req.key] = raw
            return True

        caplog.clear()
        with caplog.at_level(logging.INFO, logger="teachers.hf_local"):
            teacher.generate(reqs, on_result)
        return got, said

    plain, _ = run(prefix_cache=False)
    cached, said = run()
    text = "\n".join(r.getMessage() for r in said)
    # suffixes 2..6 and 10..20 fit (prefix 40 + 20 + 2 < 64 in the second batch); the last
    # batch (21..30) reaches the window and runs whole
    assert "prompts: 12, 42-70 tokens" in text and "3 reach the model's 64-token sliding window" in text
    assert "shared prompt prefix: 40 tokens, computed once for 8 of 12 prompts; 4 run whole" in text
    assert any(r.levelno == logging.WARNING and "sliding window" in r.getMessage() for r in said)
    assert set(cached) == set(plain)
    for k in plain:
        a, b = plain[k].positions[0], cached[k].positions[0]
        assert a["token"] == b["token"] and abs(a["logprob"] - b["logprob"]) < 1e-4


def test_hf_local_grouped_batches_answer_as_one_prompt_at_a_time(tmp_path, monkeypatch):
    """Batches answered as a group (one vocabulary projection; the rows whose first token is
    no label decoded on together from caches merged to one width) give every position of
    every answer as each prompt alone does, and as the group does where the model's
    decoder and projection are not split."""
    import teachers.hf_local as hf_local

    path = _tiny_gemma_dir(tmp_path)
    head = " ".join(f"w{i}" for i in range(30))
    lengths = [1, 2, 3, 4, 5, 7, 9, 12]
    labels = ["negative", "neutral", "positive"]
    reqs = [TeacherRequest(key=f"k{i}", messages=[], labels=labels, want_logprobs=True, max_tokens=2 + i % 2,
                           prompt=head + " " + " ".join(f"w{50 + (3 * i + j) % 40}" for j in range(k)))
            for i, k in enumerate(lengths)]
    merges = []
    real_merge = hf_local.merge_caches

    def counted(*a, **kw):
        merges.append(real_merge(*a, **kw))
        return merges[-1]

    def run(**kw):
        teacher = hf_local.HFLocalTeacher(TeacherConfig(backend="hf_local", model=str(path), api="completions",
                                                        device="cpu", top_logprobs=3, **kw))
        teacher.load()
        got = {}
        teacher.generate(reqs, lambda r, raw: got.__setitem__(r.key, raw) or True)
        return got

    alone = run(batch_size=1, prefix_cache=False)
    monkeypatch.setattr(hf_local, "merge_caches", counted)
    grouped = run(batch_size=3)
    assert any(m is not None for m in merges)  # rows of several batches decoded on together
    monkeypatch.setattr(hf_local, "split_head", lambda *a, **kw: None)
    unsplit = run(batch_size=3)
    went_on = 0
    for k, a in alone.items():
        for b in (grouped[k], unsplit[k]):
            assert a.text == b.text and a.tokens_out == b.tokens_out and len(a.positions) == len(b.positions), k
            for pa, pb in zip(a.positions, b.positions, strict=True):
                assert pa["token"] == pb["token"] and abs(pa["logprob"] - pb["logprob"]) < 1e-4, k
        went_on += grouped[k].finish_reason != "score_only"
    assert went_on >= 2
