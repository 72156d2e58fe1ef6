"""Chapter 30's verdicts (qwen_anatomy.tasks.verdicts) on hand-made curves and seeds: every branch."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qwen_anatomy.tasks import verdicts as v


def pts(*values, every=100):
    """A curves.json exact-match list: checks at every, 2*every, ... with these values."""
    return [{"step": every * (k + 1), "exact_match": x} for k, x in enumerate(values)]


# -- intervals ----------------------------------------------------------------------------------------
def test_seed_interval_is_the_t_interval_clipped_and_skips_missing_values():
    ci = v.seed_interval([0.2, 0.4, 0.6])
    # t_{0.975, 2} = 4.3027; sd = 0.2; half-width = 4.3027 * 0.2 / sqrt(3) = 0.4968
    assert ci.count == 3 and ci.mean == pytest.approx(0.4)
    assert ci.low == 0.0 and ci.high == 0.8968 or ci.high == pytest.approx(0.4 + 0.4968, abs=1e-4)
    assert v.seed_interval([0.2, 0.4, 0.6], bounds=None).low == pytest.approx(0.4 - 0.4968, abs=1e-4)
    one = v.seed_interval([0.7, None, float("nan")])
    assert (one.mean, one.low, one.high, one.count) == (0.7, 0.7, 0.7, 1)
    assert v.seed_interval([]).count == 0 and math.isnan(v.seed_interval([]).mean)
    assert v.seed_interval([0.5, 0.5]).text() == "0.500 [0.500, 0.500] (2 seeds)"


# -- learned -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, kind, words",
    [
        ([0.99, 0.95, 0.9], "learned", "learned by all 3 seeds (exact match 0.900–0.990"),
        ([0.95], "learned", "learned by the single seed"),
        ([0.014, 0.016, 0.427], "not learned", "not learned (exact match 0.014–0.427, below 0.9)"),
        ([0.95, 0.5, 0.2], "partly learned", "learned by 1 of 3 seeds"),
        ([], "no runs", "no finished run"),
        ([float("nan")], "no runs", "no finished run"),
    ],
)
def test_learned(values, kind, words):
    verdict = v.learned(values)
    assert verdict.kind == kind and words in verdict.sentence, verdict.sentence


def test_learned_threshold_is_inclusive_and_stated():
    assert v.learned([0.5], threshold=0.5).kind == "learned"
    assert v.learned([0.499], threshold=0.5).sentence.endswith("below 0.5)")


# -- plateau -----------------------------------------------------------------------------------------
def test_curve_change_uses_the_last_window_checks():
    change = v.curve_change(pts(0.1, 0.2, 0.5, 0.6, 0.9))
    assert change == {"change": pytest.approx(0.4), "from_step": 300, "to_step": 500, "last": 0.9}
    assert v.curve_change(pts(0.1, 0.2)) is None  # fewer than 3 checks
    assert v.curve_change(pts(0.1, 0.2), window=2)["change"] == pytest.approx(0.1)


def test_trend_plateaued_over_seeds():
    curves = {0: pts(0.2, 0.5, 0.61, 0.62, 0.61), 1: pts(0.1, 0.4, 0.58, 0.59, 0.6)}
    verdict = v.trend(curves)
    assert verdict.kind == "plateaued", verdict.sentence
    assert verdict.sentence.startswith("plateaued by step 500")
    assert "steps 300–500" in verdict.sentence and "within ±0.03" in verdict.sentence


def test_trend_still_rising_names_the_step():
    # the committed ReLU-inverse pattern: 0.15 -> 0.30 between steps 800 and 1,000 on every seed
    curves = {
        s: pts(0.0, 0.01, 0.02, 0.15 + d, 0.30 + d, every=200) for s, d in enumerate((0.0, 0.01, -0.01))
    }
    verdict = v.trend(curves)
    assert verdict.kind == "still rising" and verdict.details["step"] == 1000
    assert verdict.sentence.startswith("still rising at step 1000: exact match rose by +0.280 on average")


def test_trend_single_seed_rising_and_falling():
    assert v.trend({0: pts(0.1, 0.3, 0.6)}).kind == "still rising"
    assert v.trend({0: pts(0.1, 0.3, 0.6)}).sentence == (
        "still rising at step 300: exact match rose by +0.500 over the last 3 checks (steps 100–300), more than 0.03"
    )
    falling = v.trend({0: pts(0.9, 0.7, 0.5), 1: pts(0.8, 0.7, 0.45)})
    assert falling.kind == "falling" and "falling at step 300" in falling.sentence


def test_trend_mixed_names_the_rising_seed():
    # the committed Index-forward pattern: seed 2 jumps from 0.105 to 0.49 at steps 300-400
    curves = {
        0: pts(0.01, 0.012, 0.014, 0.014),
        1: pts(0.01, 0.015, 0.016, 0.016),
        2: pts(0.01, 0.025, 0.105, 0.49),
    }
    verdict = v.trend(curves)
    assert verdict.kind == "mixed" and verdict.details["rising"] == [2]
    assert verdict.sentence == (
        "not settled: seed 2 still rising at step 400 (+0.465 over the last 3 checks (steps 200–400)); seeds 0, 1 flat"
    )


def test_trend_mixed_with_one_seed_falling():
    verdict = v.trend({0: pts(0.5, 0.5, 0.5), 1: pts(0.5, 0.6, 0.7), 2: pts(0.7, 0.6, 0.5)})
    assert (
        verdict.kind == "mixed" and "seed 2 falling" in verdict.sentence and "seed 0 flat" in verdict.sentence
    )


def test_trend_ceiling_counts_as_flat():
    verdict = v.trend({0: pts(0.5, 0.9, 0.98), 1: pts(0.6, 0.95, 1.0)})
    assert verdict.kind == "plateaued" and "(seeds 0, 1 at the ceiling)" in verdict.sentence


def test_trend_too_few_checks_and_no_curves():
    assert v.trend({0: pts(0.1, 0.2, 0.3), 1: pts(0.5)}).kind == "too few checks"
    assert "seed 1 checked fewer than 3 times" in v.trend({0: pts(0.1, 0.2, 0.3), 1: pts(0.5)}).sentence
    assert v.trend({}).kind == "no curves"


def test_trend_tolerance_is_a_parameter():
    curves = {0: pts(0.5, 0.52, 0.54)}
    assert v.trend(curves).kind == "still rising"  # +0.04 > 0.03
    assert v.trend(curves, tolerance=0.05).kind == "plateaued"


# -- harder ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "forward, inverse, kind, words",
    [
        ([0.998, 0.999, 0.998], [0.25, 0.27, 0.26], "inverse harder", "exact match 0.738 lower"),
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], "inverse harder", "do not overlap"),
        ([0.1, 0.12, 0.11], [0.8, 0.82, 0.81], "forward harder", "the forward order is harder"),
        ([0.014, 0.016, 0.427], [0.012, 0.011, 0.013], "no difference shown", "intervals over seeds overlap"),
        ([0.51, 0.51, 0.51], [0.5, 0.5, 0.5], "no difference shown", "differ by less than 0.03"),
        ([0.9], [0.2], "too few seeds", "a single seed gives no interval"),
        ([], [0.2, 0.3], "missing", "no finished forward run"),
        ([0.2, 0.3], [None, float("nan")], "missing", "no finished inverse run"),
    ],
)
def test_harder(forward, inverse, kind, words):
    verdict = v.harder(forward, inverse)
    assert verdict.kind == kind and words in verdict.sentence, verdict.sentence


def test_compare_names_the_arms():
    verdict = v.compare([0.9, 0.91], [0.3, 0.31], ("Qwen2", "BART"))
    assert verdict.kind == "a higher" and verdict.sentence.startswith("Qwen2 0.905 [")
    assert v.compare([0.3, 0.31], [0.9, 0.91], ("Qwen2", "BART")).kind == "b higher"


# -- the gap against the length ----------------------------------------------------------------------
def test_gap_with_length_branches():
    grows = v.gap_with_length(
        {10: ([1.0, 1.0, 1.0], [0.5, 0.52, 0.48]), 30: ([1.0, 0.99, 1.0], [0.05, 0.06, 0.04])}
    )
    assert grows.kind == "grows" and "goes from 0.500 at n=10 to 0.947 at n=30" in grows.sentence
    shrinks = v.gap_with_length({10: ([1.0, 1.0], [0.0, 0.0]), 30: ([0.2, 0.2], [0.0, 0.0])})
    assert shrinks.kind == "shrinks" and "not learned at n=30, which bounds the gap" in shrinks.sentence
    same = v.gap_with_length({10: ([1.0, 1.0], [0.0, 0.01]), 20: ([1.0, 1.0], [0.0, 0.0])})
    assert same.kind == "no change shown"
    noisy = v.gap_with_length(
        {10: ([0.9, 0.5, 0.1], [0.0, 0.0, 0.0]), 30: ([0.9, 0.95, 0.99], [0.0, 0.0, 0.0])}
    )
    assert noisy.kind == "no change shown"  # the short length's interval is too wide
    assert v.gap_with_length({10: ([1.0, 1.0], [0.0, 0.0]), 30: ([1.0], [0.0])}).kind == "too few lengths"


# -- tables over a results frame ---------------------------------------------------------------------
def frame(rows):
    return pd.DataFrame(
        [
            {
                "config": task + ("_inverse" if order == "inverse" else ""),
                "task": task,
                "n": n,
                "order": order,
                "seed": seed,
                "exact_match": em,
                "steps": 100,
                "model_type": "qwen2",
            }
            for task, n, order, seed, em in rows
        ]
    )


def test_verdict_table_order_table_and_length_sentences():
    rows = [("relu", n, "forward", s, 1.0) for n in (10, 30) for s in range(3)]
    rows += [("relu", 10, "inverse", s, 0.5 + 0.01 * s) for s in range(3)]
    rows += [("relu", 30, "inverse", s, 0.05 + 0.01 * s) for s in range(3)]
    results = frame(rows)
    curves = {
        (c, n, s): {"exact_match": pts(0.1, 0.3, em)}
        for c, n, s, em in results[["config", "n", "seed", "exact_match"]].itertuples(index=False)
    }
    table = v.verdict_table(results, curves)
    assert len(table) == 4 and set(table["seeds"]) == {3}
    fwd10 = table[(table["n"] == 10) & (table["order"] == "forward")].iloc[0]
    assert fwd10["learned"] == "learned by all 3 seeds (exact match 1.000, threshold 0.9)"
    assert fwd10["curve"].startswith("plateaued by step 300") and fwd10["curve"].endswith("at the ceiling)")
    inv10 = table[(table["n"] == 10) & (table["order"] == "inverse")].iloc[0]
    assert inv10["curve"].startswith(
        "still rising at step 300: exact match rose by +0.410 on average (interval"
    )
    assert inv10["learned"].startswith("not learned") and inv10["interval"].startswith("[0.")
    orders = v.order_table(results)
    assert list(orders["verdict"]) == ["inverse harder", "inverse harder"]
    text = v.length_sentences(results, curves)
    assert text.startswith("**ReLU**") and "* $n=10$: forward learned by all 3 seeds" in text
    assert (
        "* Length: the gap (forward minus inverse exact match) goes from 0.490 at n=10 to 0.940 at n=30"
        in text
    )
    assert "it grows with the length" in text


def test_length_sentences_say_when_an_order_has_no_run():
    results = frame([("square", 10, "forward", s, 1.0) for s in range(2)])
    text = v.length_sentences(results, {})
    assert "inverse: no run" in text and "no finished inverse run" in text and "too few lengths" not in text
    assert "no training curve" in text


def test_rule_sentence_states_the_thresholds():
    text = v.rule_sentence()
    assert f"at least {v.LEARNED:g}" in text and f"±{v.PLATEAU_TOL:g}" in text and f"{v.MIN_MARGIN:g}" in text
