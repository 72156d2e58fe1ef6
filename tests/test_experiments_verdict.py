"""Chapter 90's paired verdict (qwen_anatomy.experiments.ratio_verdict): ties at 1, NaN, one seed."""

from __future__ import annotations

import pandas as pd
import pytest

from qwen_anatomy.experiments import paired_differences, ratio_verdict


@pytest.mark.parametrize(
    "low, high, words",
    [
        (0.8, 0.95, "reliably better"),
        (1.05, 1.2, "reliably worse"),
        (0.9, 1.1, "contains 1"),
        (1.0, 1.2, "contains 1"),  # touching 1 is not "above"
        (0.8, 1.0, "contains 1"),
        (float("nan"), float("nan"), "no interval"),
        (None, 1.2, "no interval"),
    ],
)
def test_ratio_verdict(low, high, words):
    assert words in ratio_verdict(low, high)


def test_ratio_verdict_when_higher_is_better():
    assert "reliably worse" in ratio_verdict(0.8, 0.9, lower_is_better=False)
    assert "reliably better" in ratio_verdict(1.1, 1.3, lower_is_better=False)


def runs(values):
    """Runs of two orders over seeds: values = {seed: (ppl order 2, ppl order 3)}."""
    rows = []
    for seed, pair in values.items():
        for order, ppl in zip((2, 3), pair, strict=True):
            rows.append(
                {"status": "success", "param.ngram_order": order, "param.seed": seed, "metric.ppl": ppl}
            )
    return pd.DataFrame(rows)


def test_verdict_on_paired_intervals_from_runs():
    better = paired_differences(
        runs({0: (100, 80), 1: (200, 161), 2: (50, 40)}), "ngram_order", "ppl", log=True
    )
    assert "reliably better" in ratio_verdict(better["low"].iloc[0], better["high"].iloc[0])
    one_seed = paired_differences(runs({0: (100, 80)}), "ngram_order", "ppl", log=True)
    assert "no interval" in ratio_verdict(one_seed["low"].iloc[0], one_seed["high"].iloc[0])
