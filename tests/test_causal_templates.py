"""The annotated number templates of issue 14 and their trivial references (chapter 50)."""

from __future__ import annotations

import math
import random

import pytest

from qwen_anatomy.causal import templates as t
from qwen_anatomy.causal.numtok import find_numbers
from qwen_anatomy.errors import UserInputError


def test_annotations_match_the_numbers_the_tokenizer_finds():
    """Every number the <NUM> wrapper replaces is annotated, in order, with its exact value."""
    for kind in ("train", *t.EVAL_SETS):
        for e in t.make_examples(kind, 150, 3):
            found = [float(m.group()) for m in find_numbers(e.text)]
            assert found == [x.value for x in e.numbers], e.text


def test_each_role_is_what_its_name_says():
    """Predictable numbers really follow from the text before them (exact arithmetic up to rounding)."""
    seen = set()
    for e in t.make_examples("train", 3000, 0):
        v = [x.value for x in e.numbers]
        roles = [x.role for x in e.numbers]
        seen.update(roles)
        for i, role in enumerate(roles):
            if role == "copy":
                assert v[i] == v[0]
            elif role == "sum":
                assert v[i] == pytest.approx(v[0] + v[1], abs=1e-9)
            elif role == "difference":
                assert v[i] == pytest.approx(v[0] - v[1], abs=1e-9) and v[i] >= 0
            elif role == "total":
                assert v[i] == pytest.approx(v[0] * v[1], abs=1e-9)
            elif role == "conversion":
                factor = v[i] / v[0]
                assert any(factor == pytest.approx(c[2]) for c in t.CONVERSIONS)
            elif role == "sequence":
                assert v[i] - v[i - 1] == v[1] - v[0]
            elif role == "noisy":
                assert e.numbers[i].oracle == (v[1], v[0])  # (true weight, stated error)
    assert seen == set(t.ROLES)


def test_seeded_and_varied():
    assert t.make_texts("train", 50, 1) == t.make_texts("train", 50, 1)
    assert t.make_texts("train", 50, 1) != t.make_texts("train", 50, 2)
    fams = {e.family for e in t.make_examples("train", 500, 0)}
    assert fams == set(t.FAMILIES)


def test_number_detection_is_a_real_task():
    """In qa texts the answer is a number for about one question in three; elsewhere a word."""
    qa = t.make_examples("qa", 600, 0)
    answered = [e.numbers[-1].role == "copy" for e in qa]
    assert 0.25 < sum(answered) / len(qa) < 0.42
    assert all(e.text.split("Answer: ")[1][0].isalpha() for e, a in zip(qa, answered, strict=True) if not a)


def test_value_ranges_of_extreme_and_boundary_sets():
    ext = [x.value for e in t.make_examples("extreme", 300, 0) for x in e.numbers]
    bnd = [x.value for e in t.make_examples("boundary", 300, 0) for x in e.numbers]
    assert min(ext) < 1e-3 and max(ext) > 1e3 and all(0 < v <= 1e5 for v in ext)
    assert all(0 <= v <= 1 for v in bnd)


def test_error_metrics_by_hand():
    m = t.error_metrics([1.0, 2.0, 7.0, 4.0], [1.0, 4.0, 4.0, 0.0])  # errors 0, 2, 3, 4
    assert m == {"n": 4, "mae": 2.25, "median_ae": 2.5, "rmse": math.sqrt((0 + 4 + 9 + 16) / 4)}
    odd = t.error_metrics([3.0, 0.0, 10.0], [0.0, 0.0, 0.0])  # errors 3, 0, 10
    assert odd["median_ae"] == 3.0 and odd["mae"] == pytest.approx(13 / 3)
    empty = t.error_metrics([], [])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in ("mae", "median_ae", "rmse"))
    with pytest.raises(ValueError):
        t.error_metrics([1.0], [])


def test_references_by_hand():
    e = t.Example(
        "A scale with an error of 2 g weighs a 50 g weight and reads 53 g.",
        "noisy",
        [
            t.Number("2", 2.0, "given"),
            t.Number("50", 50.0, "given"),
            t.Number("53", 53.0, "noisy", (50.0, 2.0)),
        ],
    )
    rows = t.reference_predictions(e, train_mean=10.0)
    assert [r["copy_last"] for r in rows] == [10.0, 2.0, 50.0]  # no earlier number: the mean
    assert [r["mean"] for r in rows] == [10.0] * 3
    assert rows[2]["oracle"] == 50.0 and rows[2]["oracle_sigma"] == 2.0
    table = {(r["role"], r["reference"]): r for r in t.reference_table([e], 10.0)}
    assert table[("noisy", "oracle")]["mae"] == 3.0
    assert table[("noisy", "oracle")]["coverage95"] == 1.0  # |53 - 50| = 3 <= 1.96 * 2
    assert table[("given", "copy_last")]["mae"] == pytest.approx((8 + 48) / 2)


def test_oracle_interval_covers_95_percent():
    """The noisy readings follow the stated law: the oracle's 95 % interval covers 95 % of them
    (3,000 readings: binomial standard error 0.004, so +-0.015 is about 3.8 standard errors)."""
    noisy = t.make_examples("noisy", 3000, 7)
    row = [r for r in t.reference_table(noisy, 40.0) if r["reference"] == "oracle"][0]
    assert row["coverage95"] == pytest.approx(0.95, abs=0.015)
    sigma_mean = sum(e.numbers[-1].oracle[1] for e in noisy) / len(noisy)
    # E|N(0, s)| = s * sqrt(2 / pi); rounding the reading to 0.01 adds under 0.005
    assert row["mae"] == pytest.approx(sigma_mean * math.sqrt(2 / math.pi), rel=0.08)


def test_references_leave_room_on_predictable_roles():
    """The trivial references fail where the context predicts the number, so a model can beat them."""
    train_mean = t.training_mean(t.make_examples("train", 2000, 0))
    rows = t.reference_table(
        t.make_examples("arithmetic", 300, 1) + t.make_examples("sequence", 300, 1), train_mean
    )
    best = {}
    for r in rows:
        best[r["role"]] = min(best.get(r["role"], math.inf), r["mae"])
    assert best["total"] > 50 and best["sum"] > 10 and best["sequence"] > 3


def test_bad_input():
    with pytest.raises(UserInputError, match="text kind"):
        t.make_examples("basic", 3, 0)
    with pytest.raises(UserInputError, match="at least one"):
        t.make_examples("train", 0, 0)
    with pytest.raises(UserInputError, match="template family"):
        t.make_example(random.Random(0), "poem")
    with pytest.raises(UserInputError, match="no numbers"):
        t.training_mean([t.Example("no numbers here", "qa", [])])
