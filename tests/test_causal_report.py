"""The verdicts of chapter 50 (qwen_anatomy.causal.report) on hand-made suites: ties, NaN, one run."""

from __future__ import annotations

import json

import pytest

from qwen_anatomy.causal import report

NAN = float("nan")
SETS = ("basic", "qa")


def metrics(f1, mae=5.0, cov=0.9, acc=0.5):
    return {"num_f1": f1, "mae": mae, "coverage95": cov, "accuracy": acc, "ece": 0.1}


def variant(name, kind="causal", f1=0.5, mae=5.0, cov=0.9, sums=(100.0, 1.0), seconds=6.0, **extra):
    log = [{"step": 0, "median_sum_p": sums[0], "median_scale_u": 10.0, "token_accuracy": 0.1},
           {"step": 2, "median_sum_p": sums[1], "median_scale_u": 1.0, "token_accuracy": 0.4}]  # fmt: skip
    f1s = f1 if isinstance(f1, dict) else dict.fromkeys(SETS, f1)
    return {"name": name, "kind": kind, "log": log, "train_seconds": seconds,
            "metrics": {s: metrics(f, mae, cov) for s, f in f1s.items()}, **extra}  # fmt: skip


def suite(name, variants, steps=2, model="m", hidden=8, **cfg):
    config = {"model": model, "steps": steps, "batch_size": 4, "lr": 0.01, "lr_pretrained": None,
              "n_eval": 8, **cfg}  # fmt: skip
    return {"suite": name, "config": config, "backbone": {"model": model, "hidden_size": hidden},
            "variants": variants}  # fmt: skip


def save(root, results, stamp, status="success", cpu_count=2):
    folder = root / results["suite"] / f"{results['config']['model']}-{stamp}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "run_record.json").write_text(
        json.dumps({"status": status, "machine": {"cpu_count": cpu_count}})
    )
    return folder


def test_load_suite_reads_the_newest_successful_run(tmp_path):
    save(tmp_path, suite("basic", [variant("CausalQwen"), variant("baseline", "baseline")], steps=1), "1")
    save(tmp_path, suite("basic", [variant("CausalQwen"), variant("baseline", "baseline")], steps=2), "2")
    save(tmp_path, suite("basic", [variant("CausalQwen")], steps=3), "3", status="failed")
    saved = report.load_suite("basic", "m", tmp_path)
    assert saved.results["config"]["steps"] == 2 and saved.path.name == "m-2"
    assert saved.record["status"] == "success"
    assert [s.results["config"]["steps"] for s in report.load_runs("basic", "m", tmp_path)] == [1, 2]
    assert "`basic` on `m`: 2 steps of batch 4 at learning rate 0.01 (0.01 for" in report.suite_description(
        saved
    )


def test_missing_suite_fails_with_the_regeneration_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="qwen-anatomy causal suite --suite ablation --model m"):
        report.load_suite("ablation", "m", tmp_path)
    save(tmp_path, suite("ablation", [variant("x")]), "1")
    with pytest.raises(FileNotFoundError, match="--model other"):
        report.load_suite("ablation", "other", tmp_path)  # another model's runs do not count
    with pytest.raises(ValueError, match="use one of"):
        report.load_suite("nonsense", "m", tmp_path)


def test_a_run_missing_what_the_chapter_reads_is_refused(tmp_path):
    broken = variant("x")
    del broken["metrics"]
    save(tmp_path, suite("ablation", [broken]), "1")
    with pytest.raises(ValueError, match="has no 'metrics'"):
        report.load_suite("ablation", "m", tmp_path)


def test_winner_sentences_say_ties_and_undefined():
    results = suite(
        "basic", [variant("CausalQwen", f1=0.5, mae=NAN), variant("baseline", "baseline", f1=0.5)]
    )
    text = report.winner_sentences(results)
    assert text.splitlines()[0].startswith("- **basic**: <NUM> F1 0.5 vs 0.5 (tie); MAE: undefined")
    assert "95% coverage 0.9 vs 0.9 (tie)" in text
    assert len(text.splitlines()) == len(SETS)


@pytest.mark.parametrize("x, near", [(1.0, True), (0.5, False), (2.0, False), (1.99, True), (NAN, False)])
def test_near_one_band_is_open(x, near):
    assert report.near_one(x) is near


def test_training_and_settled_sentences():
    log = variant("v", sums=(100.0, 1.2))["log"]
    assert "close to 1" in report.live_training_sentence(log, 2)
    log = variant("v", sums=(100.0, 5.0))["log"]
    assert "not yet near 1" in report.live_training_sentence(log, 2)
    settled = suite("comprehensive", [variant("CausalQwen", sums=(9.0, 1.0)), variant("b", "baseline")])
    assert "has reached the regime" in report.settled_sentence(settled)
    unsettled = suite("comprehensive", [variant("CausalQwen", sums=(9.0, NAN)), variant("b", "baseline")])
    assert "has not reached the regime" in report.settled_sentence(unsettled)


def test_step0_and_threshold_effect_sentences():
    assert "(within the 1e-06" in report.step0_sentence(1e-5, 1e-6, 3, 40, True)
    assert "(outside the 1e-06" in report.step0_sentence(1e-5, 2e-6, 3, 40, False)
    text = report.threshold_effect_sentence([0.0, 10.0, 100.0], [50.0, 40.0, 0.5], [0.7, 0.9, 0.9], 30.0)
    assert "most often at C = 10 (90% of positions)" in text  # the first of two tied thresholds
    assert "falls from 50 (C = 0) to 0.5 (C = 100)" in text


def test_suite_summary_best_worst_mae_and_baseline():
    reference = suite("comprehensive", [variant("CausalQwen"), variant("baseline", "baseline", f1=0.6)])
    res = suite(
        "ablation", [variant("a", f1=0.9, mae=4.0), variant("b", f1=0.3, mae=NAN), variant("c", f1=0.7)]
    )
    table, text = report.suite_summary(res, reference)
    assert len(table) == 3 * len(SETS)
    assert "Best mean <NUM> F1 over the sets: **a** (0.900; worst b, 0.300)." in text
    assert "Lowest MAE on the qa set: **a** (4)." in text
    assert "The baseline's mean F1 on the same sets is 0.600; 2 of 3 variants beat it." in text


def test_suite_summary_ties_nan_and_no_reference():
    res = suite("initialization", [variant("a", f1=0.4, mae=NAN), variant("b", f1=0.4, mae=NAN)])
    _, text = report.suite_summary(res)
    assert "Every variant has the same mean <NUM> F1 over the sets (0.400)." in text
    assert "MAE is undefined for all of them" in text and "baseline" not in text
    weak_ref = suite("basic", [variant("CausalQwen"), variant("baseline", "baseline", f1=0.4)])
    assert "no variant beats it" in report.suite_summary(res, weak_ref)[1]  # equal is not beating
    basic_only = suite("basic", [variant("CausalQwen"), variant("baseline", "baseline", f1={"basic": 0.1})])
    assert "not evaluated on the same sets" in report.suite_summary(res, basic_only)[1]
    undefined = suite("initialization", [variant("a", f1=NAN)])
    assert report.suite_summary(undefined)[1].startswith("No variant has a defined <NUM> F1.")


def test_threshold_sentence_default_best_tie_and_other():
    def comparison(f1s, sums=(1.0, 1.0, 5.0)):
        names = ("threshold=0", "threshold=10", "threshold=20")
        vs = [variant(n, f1=f, sums=(100.0, s)) for n, f, s in zip(names, f1s, sums, strict=True)]
        return suite("comparison", vs + [variant("lambda=0.1", f1=0.99)])

    text = report.threshold_sentence(comparison((0.1, 0.9, 0.5)), 10.0)
    assert "**threshold=10** gives the best mean <NUM> F1 (0.900), which is the default." in text
    assert "2 of 3 threshold runs have a median sum" in text  # lambda=0.1 is not a threshold run
    text = report.threshold_sentence(comparison((0.1, 0.9, 0.9)), 10.0)
    assert "tied with the default (threshold=10, threshold=20)" in text
    text = report.threshold_sentence(comparison((0.1, 0.5, 0.9)), 10.0)
    assert "**threshold=20** gives the best mean <NUM> F1 (0.900) (the default: 0.500)." in text
    assert "(the default: nan)" in report.threshold_sentence(comparison((0.1, 0.5, 0.9)), 30.0)
    assert "no threshold run has a defined" in report.threshold_sentence(comparison((NAN, NAN, NAN)), 10.0)
    sums = report.threshold_sums(comparison((0.1, 0.5, 0.9)))
    assert list(sums.index) == ["threshold=0", "threshold=10", "threshold=20"]


def test_trained_models_and_measured_step_times():
    # the comparison run trained 3 models; a fourth variant is the same model as the first
    grid = [variant("threshold=10", seconds=2.0), variant("lambda=1", same_as="threshold=10"),
            variant("lambda=0.1", seconds=8.0), variant("alpha=0", seconds=4.0)]  # fmt: skip
    comparison = suite("comparison", grid, steps=2, hidden=8)
    assert report.trained_models(comparison) == 3
    assert report.seconds_per_step(comparison) == [1.0, 4.0, 2.0]


def test_variant_pivot_keeps_suite_order():
    res = suite("ablation", [variant("z", f1=0.1), variant("a", f1=0.2)])
    table, _ = report.suite_summary(res)
    pivot = report.variant_pivot(table)
    assert list(pivot.index) == ["z", "a"]
    assert pivot.loc["a", ("num_f1", "qa")] == 0.2
