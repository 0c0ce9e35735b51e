import math

import pytest

from teachers.softlabel import NoLabelError, answer_position, norm_token, soft_label

LABELS = ["1", "2", "3"]
VALUES = [-1.0, 0.0, 1.0]


def pos(token, top):
    return {"token": token, "logprob": dict(top).get(token, -1.0), "top": top}


def ln(p):
    return math.log(p)


def test_variants_merge_and_renormalise():
    top = [["2", ln(0.4)], [" 2", ln(0.1)], ["▁3", ln(0.2)], ["1", ln(0.1)], ["The", ln(0.2)]]
    sl = soft_label([pos("2", top)], LABELS, VALUES)
    assert sl.probs == pytest.approx([0.1 / 0.8, 0.5 / 0.8, 0.2 / 0.8])
    assert sl.off_label_mass == pytest.approx(0.2)
    assert sl.expected == pytest.approx((-0.1 + 0.2) / 0.8)
    e = sl.expected
    assert sl.variance == pytest.approx(sum(p * (v - e) ** 2 for p, v in zip(sl.probs, VALUES, strict=True)))
    assert sl.entropy == pytest.approx(-sum(p * math.log(p) for p in sl.probs))
    assert sl.argmax == 1


def test_case_and_space_variants_of_words_and_prefixes():
    labels = ["negative", "neutral", "positive"]
    top = [[" Positive", ln(0.3)], ["positive", ln(0.2)], [" neg", ln(0.1)], ["ne", ln(0.2)],
           ["neutral", ln(0.1)]]
    sl = soft_label([pos(" Positive", top)], labels, [-1, 0, 1])
    # "neg" is an unambiguous prefix of "negative"; "ne" is ambiguous and counts off-label
    assert sl.probs == pytest.approx([0.1 / 0.7, 0.1 / 0.7, 0.5 / 0.7])
    assert sl.off_label_mass == pytest.approx(0.3)


def test_answer_position_skips_blanks_and_prefers_label_tokens():
    blank = pos(" ", [[" ", ln(0.9)], ["2", ln(0.05)]])
    ans = pos("3", [["3", ln(0.7)], ["2", ln(0.2)]])
    assert answer_position([blank, ans], LABELS) == 1
    sl = soft_label([blank, ans], LABELS, VALUES)
    assert sl.argmax == 2 and sl.off_label_mass == pytest.approx(0.1)
    words = [pos("Rating", [["Rating", ln(0.9)]]), pos(":", [[":", ln(0.9)]]), ans]
    assert answer_position(words, LABELS) == 2


def test_no_label_is_an_error_not_a_zero():
    with pytest.raises(NoLabelError, match="no label"):
        soft_label([pos("The", [["The", ln(0.9)], ["A", ln(0.05)]])], LABELS, VALUES)
    with pytest.raises(NoLabelError, match="blank"):
        soft_label([pos("\n", [["\n", ln(0.9)]])], LABELS, VALUES)
    with pytest.raises(NoLabelError):
        soft_label([], LABELS, VALUES)


def test_norm_token():
    assert norm_token("▁Positive") == "positive" and norm_token("Ġ3") == "3" and norm_token(" \n") == ""
