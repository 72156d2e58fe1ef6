"""The verdicts of chapter 30 (qwen_anatomy.tasks.report) on hand-made results: ties, NaN, one seed."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from qwen_anatomy.tasks import report
from qwen_anatomy.tasks.experiment import load_committed, load_run, seed_table


def runs(rows):
    """results frame from (task, order, seed, exact_match[, steps, seconds]) tuples."""
    out = []
    for task, order, seed, em, *rest in rows:
        steps, seconds = rest if rest else (100, 60.0)
        out.append(
            {
                "config": task + ("_inverse" if order == "inverse" else ""),
                "task": task,
                "n": 10,
                "order": order,
                "seed": seed,
                "exact_match": em,
                "steps": steps,
                "planned_steps": steps,
                "train_seconds": seconds,
                "num_examples": 1000,
            }
        )
    return pd.DataFrame(out)


def curve(*points):
    return {"exact_match": [{"step": s, "seconds": 10.0 * s, "exact_match": em} for s, em in points]}


def test_clear_wins_counts_seeds_by_margin_and_skips_unpaired_and_nan():
    results = runs(
        [
            ("relu", "forward", 0, 0.90),
            ("relu", "inverse", 0, 0.50),  # clear win
            ("relu", "forward", 1, 0.60),
            ("relu", "inverse", 1, 0.55),  # exactly the margin: not a clear win
            ("relu", "forward", 2, 0.70),  # no inverse run: not paired
            ("relu", "forward", 3, float("nan")),
            ("relu", "inverse", 3, 0.1),  # missing value: not paired
        ]
    )
    assert report.clear_wins(results, "relu", 10) == (1, 2)
    assert report.clear_wins(results, "square", 10) == (0, 0)
    assert report.clear_wins(runs([("relu", "forward", 0, 0.9)]), "relu", 10) == (0, 0)


@pytest.mark.parametrize(
    "rows, words",
    [
        ([("t", "forward", 0, 0.9), ("t", "inverse", 0, 0.2)], "ahead (a single seed)"),
        (
            [("t", "forward", s, 0.9) for s in range(3)] + [("t", "inverse", s, 0.2) for s in range(3)],
            "ahead in every seed, by more than 0.05",
        ),
        (
            [("t", "forward", 0, 0.9), ("t", "forward", 1, 0.9), ("t", "forward", 2, 0.5)]
            + [("t", "inverse", 0, 0.2), ("t", "inverse", 1, 0.2), ("t", "inverse", 2, 0.5)],
            "on average, but by more than 0.05 in only 2 of 3 seeds",
        ),
        (
            [("t", "forward", s, 0.5) for s in range(2)] + [("t", "inverse", s, 0.5) for s in range(2)],
            "equally hard",
        ),
        (
            [("t", "forward", s, 0.05) for s in range(2)] + [("t", "inverse", s, 0.0) for s in range(2)],
            "neither order",
        ),
        (
            [("t", "forward", s, 0.1) for s in range(2)] + [("t", "inverse", s, 0.8) for s in range(2)],
            "inverse order",
        ),
        (
            [("t", "forward", 0, float("nan")), ("t", "inverse", 0, 0.5)],
            "no exact match was recorded for the forward",
        ),
        (
            [("t", "forward", 0, 0.5), ("t", "inverse", 0, None)],
            "no exact match was recorded for the inverse",
        ),
    ],
)
def test_summarise_verdicts(rows, words):
    results = runs(rows)
    text = report.summarise(seed_table(results), results)
    assert text.startswith("* **t n=10**")
    assert words in text, text


def test_summarise_one_order_only_says_so():
    results = runs([("t", "forward", 0, 0.9)])
    assert "the other order has no run yet" in report.summarise(seed_table(results), results)


def test_equal_step_comparison_uses_the_last_common_step():
    curves = {
        ("relu", 0): curve((100, 0.2), (200, 0.6), (300, 0.9)),
        ("relu_inverse", 0): curve((100, 0.1), (200, 0.3)),
        ("relu", 1): curve((100, 0.5)),  # no inverse run for seed 1
        ("square", 0): curve((100, 0.4)),
        ("square_inverse", 0): curve((150, 0.4)),  # no common step
    }
    frame = report.equal_step_comparison(curves)
    assert frame.to_dict("records") == [
        {"task": "relu", "seed": 0, "step": 200, "forward": 0.6, "inverse": 0.3}
    ]
    assert "ahead in 1 of 1" in report.equal_step_sentence(frame)
    assert report.equal_step_comparison({}).empty
    assert "No forward and inverse run" in report.equal_step_sentence(report.equal_step_comparison({}))


def test_equal_step_sentence_counts_ties_as_not_ahead():
    frame = pd.DataFrame(
        [
            {"task": "a", "seed": 0, "step": 1, "forward": 0.5, "inverse": 0.5},
            {"task": "a", "seed": 1, "step": 1, "forward": 0.6, "inverse": 0.5},
            {"task": "a", "seed": 2, "step": 1, "forward": float("nan"), "inverse": 0.5},
        ]
    )
    assert report.equal_step_sentence(frame).endswith("ahead in 1 of 3 task-and-seed pairs (1 tied).")


@pytest.mark.parametrize("fwd, inv, ahead", [(0.9, 0.5, True), (0.5, 0.5, False), (0.2, 0.5, False)])
def test_live_sentence(fwd, inv, ahead):
    text = report.live_sentence(fwd, inv, 300, 500)
    assert f"{fwd:.3f} in the forward" in text and "500 test samples" in text
    assert ("Forward is ahead" in text) is ahead


def test_overlap_sentence():
    assert report.overlap_sentence(0, 20000).endswith(
        "20,000 training inputs — train and test do not overlap."
    )
    assert report.overlap_sentence(3, 1000).endswith("1,000 training inputs.")


def test_curve_trends_and_rising_sentence():
    curves = {
        ("relu", 0): curve((100, 0.2), (200, 0.6)),  # rising
        ("relu", 1): curve((100, 0.6), (200, 0.605)),  # within the 0.01 tolerance
        ("index", 0): curve((100, 0.3)),  # a single check: no change
        ("square", 0): {"exact_match": []},  # never checked: left out
    }
    trend = report.curve_trends(curves)
    assert list(trend["config"]) == ["index", "relu", "relu"]
    assert list(trend["still rising"]) == [False, True, False]
    assert report.rising_sentence(trend).startswith("Still rising at the end of the budget: `relu`.")
    assert "none" in report.rising_sentence(report.curve_trends({("a", 0): curve((1, 0.5))}))
    assert "none" in report.rising_sentence(report.curve_trends({}))


def test_target_sentence():
    results = runs([("relu", "forward", 0, 0.97, 1000, 600.0), ("relu", "forward", 1, 0.99, 1000, 700.0)])
    curves = {("relu", 0): curve((200, 0.5), (400, 0.96)), ("relu", 1): curve((200, 0.95))}
    text = report.target_sentence(results, curves)
    assert "0.970 to 0.990 over 2 seed(s) after 1000 steps" in text
    assert "Every seed reaches the 0.95 target within 15 minutes." in text
    assert "at step 200–400, after 2000–4000 s" in text
    # one seed below the target, one seed never reaching it during training: no "first scored" clause
    slow = runs([("relu", "forward", 0, 0.94, 1000, 600.0), ("relu", "forward", 1, 0.99, 1000, 600.0)])
    text = report.target_sentence(slow, {("relu", 1): curve((200, 0.96))})
    assert "Not every seed reaches" in text and "first scored" not in text
    # on target but too slow
    late = runs([("relu", "forward", 0, 0.99, 1000, 16 * 60.0)])
    assert "Not every seed reaches" in report.target_sentence(late, {})
    # a missing exact match never counts as reaching the target
    missing = runs([("relu", "forward", 0, float("nan")), ("relu", "forward", 1, 0.99)])
    assert "Not every seed reaches" in report.target_sentence(missing, {})
    assert report.target_sentence(runs([("square", "forward", 0, 1.0)]), {}) is None


def test_seed_count_note():
    three = runs([("t", o, s, 0.5) for o in ("forward", "inverse") for s in range(3)])
    assert report.seed_count_note(seed_table(three)) is None
    one = runs([("t", "forward", 0, 0.5), ("t", "inverse", 0, 0.5), ("t", "inverse", 1, 0.5)])
    assert report.seed_count_note(seed_table(one)) == (
        "Seeds run so far: t n=10: 1. Fewer than 3 seeds give no real spread; read those rows as single observations."
    )


def test_sweep_sentence():
    results = runs([("relu", o, s, 0.5, 1000, 1.0) for o in ("forward", "inverse") for s in range(3)])
    assert report.sweep_sentence(results) == (
        "6 runs (2 configs, 3 seed(s) each), scored on 1,000 test samples by greedy decoding; step budgets: relu 1,000."
    )
    results = results.iloc[:-1]
    assert "2–3 seed(s) each" in report.sweep_sentence(results)


def test_load_committed_names_the_sweep_command_when_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="qwen-anatomy tasks sweep"):
        load_committed(tmp_path)


def test_load_run_names_the_missing_file_and_refuses_failed_runs(tmp_path):
    (tmp_path / "evaluation.json").write_text("{}")
    (tmp_path / "curves.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="run_record.json"):
        load_run(tmp_path)
    (tmp_path / "run_record.json").write_text('{"status": "failed"}')
    with pytest.raises(ValueError, match="failed"):
        load_run(tmp_path)
    (tmp_path / "run_record.json").write_text('{"status": "success"}')
    assert set(load_run(tmp_path)) == {"evaluation", "curves", "run_record"}


def test_nan_helper():
    assert report._missing(None) and report._missing(math.nan) and not report._missing(0.0)


def test_config_sentence_reads_the_config():
    from qwen_anatomy.tasks.train import load_config
    from toc import ROOT

    cfg = load_config(ROOT / "configs" / "relu.yaml", ["training.max_steps=7", "model.hidden_size=32"])
    text = report.config_sentence(cfg, "configs/relu.yaml")
    assert "hidden size 32" in text and "7 optimiser steps" in text
    assert f"batch {cfg['training']['batch_size']}" in text
