"""Score-only forward passes and the shared-prefix KV cache on tiny random causal LMs built
from a transformers config (one with sliding-window layers, as Gemma 3 has)."""

import pytest

from teachers.base import TeacherRequest
from teachers.scoring import (
    PrefixKV,
    batch_inputs,
    chosen_tokens,
    full_ids,
    last_logits,
    needs_full_decode,
    score_only,
    shared_prefix,
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
    plain, _ = last_logits(model, batch_inputs(rows, None, 0, "cpu", torch), torch)
    # each row alone, unpadded: the reference the padded batch must match
    alone = torch.cat([model(input_ids=torch.tensor([r])).logits[:, -1] for r in rows]).detach()
    prefix = PrefixKV(model, rows[0][:shared_prefix(rows)[0]], "cpu", torch)
    inputs = batch_inputs(rows, prefix, 0, "cpu", torch)
    cached, _ = last_logits(model, inputs, torch)
    assert torch.allclose(plain, alone, atol=1e-5)
    assert torch.allclose(cached, alone, atol=1e-5)
    assert full_ids(inputs, prefix, torch)[:, :len(prefix)].eq(torch.tensor(rows[0][:len(prefix)])).all()
    # the prefix cache is not consumed by a batch: a second batch gets a fresh copy
    again, _ = last_logits(model, batch_inputs(rows[:2], prefix, 0, "cpu", torch), torch)
    assert torch.allclose(again, alone[:2], atol=1e-5)


def test_prefix_generation_equals_plain_generation(model):
    rows = _rows(n=4, seed=3)
    prefix = PrefixKV(model, rows[0][:shared_prefix(rows)[0]], "cpu", torch)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
              output_logits=True, temperature=None, top_p=None, top_k=None, repetition_penalty=1.3)
    plain_in = batch_inputs(rows, None, 0, "cpu", torch)
    plain = model.generate(input_ids=plain_in["input_ids"], attention_mask=plain_in["attention_mask"], **kw)
    cin = batch_inputs(rows, prefix, 0, "cpu", torch)
    cached = model.generate(input_ids=full_ids(cin, prefix, torch), attention_mask=cin["attention_mask"],
                            **{prefix.kwarg: cin[prefix.kwarg]}, **kw)
    n = plain_in["input_ids"].shape[1]
    m = cin["input_ids"].shape[1] + len(prefix)
    assert plain.sequences[:, n:].tolist() == cached.sequences[:, m:].tolist()
    for a, b in zip(plain.logits, cached.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    # the score-only pick of the first token is generate's (repetition penalty included)
    first = chosen_tokens(last_logits(model, cin, torch)[0], full_ids(cin, prefix, torch), 1.3, torch)
    assert first.tolist() == cached.sequences[:, m].tolist()


def test_prefix_beyond_the_sliding_window_is_refused(model):
    prefix = PrefixKV(model, list(range(3, 43)), "cpu", torch)
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
