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


# -- the length sweep, BART beside Qwen2, failures (issue 16) ---------------------------------------
def test_equal_step_comparison_and_trends_with_lengths_in_the_keys():
    curves = {
        ("relu", 10, 0): curve((100, 0.5), (200, 0.9)),
        ("relu_inverse", 10, 0): curve((100, 0.1), (200, 0.2)),
        ("relu", 30, 0): curve((100, 0.4)),
        ("relu_inverse", 20, 0): curve((100, 0.0)),  # another length: not paired with relu n=30
    }
    frame = report.equal_step_comparison(curves)
    assert frame.to_dict("records") == [
        {"task": "relu", "n": 10, "seed": 0, "step": 200, "forward": 0.9, "inverse": 0.2}
    ]
    trend = report.curve_trends(curves)
    assert list(trend["n"]) == [10, 30, 10, 20] and list(trend["still rising"]) == [True, False, True, False]


def both_models(rows):
    """(model, task, n, order, seed, exact match) -> a results frame of both model types."""
    out = []
    for model, task, n, order, seed, em in rows:
        prefix = "bart_" if model == "bart" else ""
        out.append(
            {
                "config": prefix + task + ("_inverse" if order == "inverse" else ""),
                "model_type": model,
                "task": task,
                "n": n,
                "order": order,
                "seed": seed,
                "exact_match": em,
            }
        )
    return pd.DataFrame(out)


def test_model_comparison_and_architecture_sentence():
    rows = [("qwen2", "relu", n, "forward", s, 1.0) for n in (10, 30) for s in range(3)]
    rows += [("qwen2", "relu", n, "inverse", s, 0.3 + 0.01 * s) for n in (10, 30) for s in range(3)]
    rows += [("bart", "relu", 10, "forward", s, 0.9 + 0.01 * s) for s in range(3)]
    rows += [("bart", "relu", 10, "inverse", s, 0.88 + 0.02 * s) for s in range(3)]
    results = both_models(rows)
    table = report.model_comparison(results, "relu")  # the lengths with a BART run
    assert list(table["n"]) == [10, 10]
    assert list(table["comparison"]) == ["Qwen2 higher", "BART higher"]
    assert table.loc[0, "BART"].startswith("0.910 [") and table.loc[0, "BART"].endswith("(3 seeds)")
    wider = report.model_comparison(results, "relu", lengths=[10, 30])
    assert list(wider.loc[wider["n"] == 30, "BART"]) == ["no run", "no run"]
    assert list(wider.loc[wider["n"] == 30, "comparison"]) == ["missing runs", "missing runs"]
    text = report.architecture_sentence(results, "relu", lengths=[10, 30])
    lines = text.splitlines()
    assert (
        lines[0].startswith("* $n=10$: Qwen2: the inverse order is harder")
        and "BART: no difference shown" in lines[0]
    )
    assert lines[0].endswith("So the architectures disagree.")
    assert "no finished forward run" in lines[1] and lines[1].endswith("cannot be compared yet.")
    same = both_models(
        [
            (m, "relu", 10, o, s, 1.0 if o == "forward" else 0.0)
            for m in ("qwen2", "bart")
            for o in ("forward", "inverse")
            for s in range(2)
        ]
    )
    assert report.architecture_sentence(same, "relu").endswith("So both architectures give the same verdict.")


def test_coverage_sentence():
    results = both_models([("qwen2", "relu", 10, "forward", s, 1.0) for s in range(2)])
    expected = pd.DataFrame(
        [
            {"config": c, "n": n, "seed": s}
            for c in ("relu", "relu_inverse")
            for n in (10, 20)
            for s in range(2)
        ]
    )
    assert report.coverage_sentence(results, expected) == (
        "Of the 8 runs the sweep plan names, 2 have finished results here. Missing: `relu` n=20 (seeds 0, 1); "
        "`relu_inverse` n=10 (seeds 0, 1); `relu_inverse` n=20 (seeds 0, 1)."
    )
    assert report.coverage_sentence(results, expected.iloc[:2]).endswith("2 have finished results here.")


def gen(correct, eos=True):
    """A generation row with this per-position correctness."""
    n = len(correct)
    target = list(range(n))
    prediction = [t if ok else 99 for t, ok in zip(target, correct, strict=True)] + ["<eos>" if eos else 5]
    return {
        "i": 0,
        "input": [1] * n,
        "target": target,
        "prediction": prediction,
        "correct": list(correct),
        "eos": eos,
        "exact": all(correct) and eos,
    }


def test_typical_failures_picks_the_most_common_first_error():
    from qwen_anatomy.tasks.evaluate import first_error, typical_failures

    rows = [
        gen([1, 1, 1]),
        gen([0, 1, 1]),
        gen([0, 0, 1]),
        gen([1, 0, 0]),
        gen([1, 1, 1], eos=False),
        gen([0, 1, 0]),
    ]
    assert [first_error(r) for r in rows] == [None, 0, 0, 1, 3, 0]
    summary = typical_failures(rows, k=2)
    assert summary["total"] == 6 and summary["failures"] == 5
    assert summary["first_error_counts"] == {0: 3, 1: 1, 3: 1}
    assert summary["position"] == 0 and summary["share"] == pytest.approx(0.6)
    assert summary["examples"] == [rows[1], rows[2]]  # the first two failing at position 0, in file order
    tie = typical_failures([gen([1, 0]), gen([0, 1])])
    assert tie["position"] == 0  # a tie goes to the earlier position
    none = typical_failures([gen([1, 1])])
    assert none["failures"] == 0 and none["position"] is None and none["examples"] == []


def test_failure_sentence_and_table():
    from qwen_anatomy.tasks.evaluate import typical_failures

    rows = [gen([0, 1, 1, 1]), gen([0, 0, 1, 1]), gen([1, 1, 1, 0])]
    summary = typical_failures(rows, k=2)
    text = report.failure_sentence(summary, "inverse", "ReLU n=4, inverse, seed 0")
    assert text.startswith("Of the 3 test generations of ReLU n=4, inverse, seed 0, 3 are wrong.")
    assert "output position 0, which in the inverse order is the chain's state $y_{3}$" in text
    assert "67% of the wrong generations" in text
    assert "(the chain's state $y_{0}$)" in report.failure_sentence(summary, "forward", "x")
    eos_only = typical_failures([gen([1, 1], eos=False)])
    assert "only the end token is wrong" in report.failure_sentence(eos_only, "forward", "x")
    assert report.failure_sentence(typical_failures([gen([1, 1])]), "inverse", "x").startswith("All 1 test")
    table = report.failure_table(summary["examples"] + eos_only["examples"])
    assert list(table["generated"]) == ["[99] 1 2 3", "[99] [99] 2 3", "0 1 [5]"]
    assert list(table["first error at"]) == [0, 0, 2]
    assert list(table.columns) == ["input x", "target", "generated", "first error at"]


def test_layout_sentence_says_which_build_is_shown():
    flat = pd.DataFrame({"config": ["relu", "relu_inverse"], "layout": ["flat", "flat"]})
    assert report.layout_sentence(flat, []).startswith("All 2 runs shown come from the first build")
    mixed = pd.DataFrame({"config": ["relu", "square", "square"], "layout": ["by n", "flat", "flat"]})
    assert report.layout_sentence(mixed, ["relu/seed0", "relu/seed1"]) == (
        "1 runs come from the length sweep and 2 from the first build, for configs the sweep has not "
        "reached yet (`square`). 2 first-build runs of configs the sweep has reached are left out."
    )
    assert report.layout_sentence(mixed.iloc[:1], []) == "1 runs come from the length sweep."


def test_select_curves_takes_one_task_at_its_longest_length():
    curves = {
        (c, n, s): curve((1, 0.5))
        for c in ("relu", "relu_inverse", "square")
        for n in (10, 30)
        for s in (0, 1)
    }
    assert list(report.select_curves(curves, "relu")) == [
        "relu n=30 seed 0",
        "relu n=30 seed 1",
        "relu_inverse n=30 seed 0",
        "relu_inverse n=30 seed 1",
    ]
    assert len(report.select_curves(curves, "square", 10)) == 2
    assert report.select_curves(curves, "index") == {}


def test_failure_source_prefers_a_committed_run_with_generations(tmp_path):
    from qwen_anatomy.tasks.evaluate import GENERATIONS_FILE

    folders = {}
    for n, seed, keep in [(10, 0, True), (30, 1, True), (30, 0, False)]:
        folders[(n, seed)] = tmp_path / f"n{n}" / f"seed{seed}"
        folders[(n, seed)].mkdir(parents=True)
        if keep:
            (folders[(n, seed)] / GENERATIONS_FILE).write_bytes(b"")
    results = pd.DataFrame(
        [
            {"task": "relu", "order": "inverse", "n": n, "seed": s, "folder": str(f)}
            for (n, s), f in folders.items()
        ]
    )
    folder, text = report.failure_source(results, "relu", "live", "the live run")
    assert folder == str(folders[(30, 1)]) and text == "ReLU $n=30$, inverse order, seed 1"
    assert report.failure_source(results, "square", "live", "the live run") == (
        "live",
        "the live run (the committed runs kept no generations)",
    )
    assert report.pick_failure_run(results.drop(columns="folder"), "relu") is None
