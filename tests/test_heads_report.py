"""The verdicts of chapter 40 (qwen_anatomy.heads.report) on hand-made statistics: NaN, ties, one seed."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from qwen_anatomy.errors import UserInputError
from qwen_anatomy.heads import report
from qwen_anatomy.heads.analysis import PROXY_LABELS, Measurements
from qwen_anatomy.heads.core import HeadLayout
from qwen_anatomy.heads.experiment import load_results

NAN = float("nan")


def pair(x, y, rho, p, within=0.0, ci=(-0.1, 0.1), overlap=1, chance=0.5):
    return {"x": x, "y": y, "rho": rho, "p_perm": p, "rho_within_layer_demeaned": within, "ci_low": ci[0],
            "ci_high": ci[1], "topk_overlap": overlap, "topk_chance": chance}  # fmt: skip


def validity(**rhos):
    return [{"theta": "θ0", "proxy": k, "n": 8, "rho": r, "p_perm": 0.01} for k, r in rhos.items()]


def test_pair_row_finds_either_order_and_raises_on_absent_pair():
    stats = {"pairs": [pair("Urel", "I_pre", 0.5, 0.01)]}
    assert report.pair_row(stats, "I_pre", "Urel")["rho"] == 0.5
    with pytest.raises(KeyError):
        report.pair_row(stats, "I_pre", "U")


def test_pair_table_averages_seeds_and_keeps_the_worst_p():
    seeds = [
        {"pairs": [pair("I_pre", "Urel", 0.6, 0.01, within=0.2, overlap=1)]},
        {"pairs": [pair("I_pre", "Urel", 0.2, 0.30, within=0.4, overlap=0)]},
    ]
    row = report.pair_table(seeds, [("I_pre", "Urel")]).iloc[0]
    assert row["pair"] == "I_pre ~ Urel"
    assert row["ρ (mean over seeds)"] == pytest.approx(0.4)
    assert row["ρ per seed"] == "+0.60 +0.20"
    assert row["max p (permutation)"] == 0.30
    assert row["ρ within layers"] == pytest.approx(0.3)
    assert row["top-K overlap"] == 0.5
    # a seed whose ranking is constant has p = NaN: the worst p is then undefined, whatever the order
    for order in ([0.01, NAN], [NAN, 0.01]):
        assert math.isnan(report.max_p(order))
    single = report.pair_table(seeds[:1], [("I_pre", "Urel")]).iloc[0]
    assert single["ρ per seed"] == "+0.60" and single["max p (permutation)"] == 0.01


@pytest.mark.parametrize("n", [5, 8, 30, 100])
def test_rho_crit_is_where_the_t_test_p_crosses_alpha(n):
    crit = report.rho_crit(n, 0.05)
    # the t statistic of Spearman's null, evaluated at crit, gives p = alpha exactly
    from scipy.stats import t

    def p_of(rho):
        stat = rho * math.sqrt((n - 2) / (1 - rho**2))
        return 2 * t.sf(abs(stat), n - 2)

    assert p_of(crit) == pytest.approx(0.05, rel=1e-9)
    assert p_of(crit - 0.01) > 0.05 > p_of(crit + 0.01)


def test_rho_crit_shrinks_with_more_heads_and_is_undefined_below_three():
    assert report.rho_crit(8) > report.rho_crit(40) > report.rho_crit(270)
    assert math.isnan(report.rho_crit(2))
    # scipy's own spearman p-value on 8 heads for a ρ just above the critical value
    x = np.arange(8.0)
    y = np.array([1, 0, 2, 3, 5, 4, 7, 6], dtype=float)
    rho, p = spearmanr(x, y)
    assert (p < 0.05) == (abs(rho) >= report.rho_crit(8))


@pytest.mark.parametrize(
    "rho, p, words",
    [
        (0.8, 0.01, "moved more (ρ = +0.80"),
        (-0.8, 0.01, "moved *less* (ρ = -0.80"),
        (0.8, 0.05, "no reliable link"),  # p equal to alpha is not significant
        (0.1, 0.6, "largest permutation p over seeds is 0.600"),
        (NAN, 0.01, "undefined"),
        (0.5, NAN, "undefined"),
    ],
)
def test_importance_update_verdict(rho, p, words):
    assert words in report.importance_update_verdict(rho, p)


@pytest.mark.parametrize(
    "within, raw, words",
    [
        (-0.3, 0.6, "sign reverses"),
        (0.3, 0.6, "depth is not what carries it"),  # exactly half: not a depth effect
        (0.1, 0.6, "much of the raw correlation is a depth effect"),
        (-0.1, 0.6, "much of the raw correlation"),  # a small opposite sign is not a reversal
        (NAN, 0.6, "undefined"),
    ],
)
def test_depth_clause(within, raw, words):
    assert words in report.depth_clause(within, raw)


@pytest.mark.parametrize(
    "value, word", [(0.9, "stable"), (0.7, "stable"), (0.5, "only partly stable"), (0.3, "only partly stable"),
                    (0.1, "unstable"), (NAN, "not measured")]
)  # fmt: skip
def test_stability_thresholds_and_ties(value, word):
    assert report.stability(value) == word


def test_seeds_clause_one_seed_and_missing_agreement():
    assert report.seeds_clause({}, 1) == "(One seed only: no agreement measured.)"
    text = report.seeds_clause({"Urel": {"mean_spearman": 0.8}, "I_post": {"mean_spearman": 0.5}}, 3)
    assert text.startswith("Across 3 seeds the Urel ranking is stable (mean pairwise ρ = 0.80)")
    assert "not measured" in report.seeds_clause({}, 2)


def test_small_n_clause():
    assert report.small_n_clause(270) == ""
    assert f"|ρ| ≥ {report.rho_crit(8):.2f}" in report.small_n_clause(8)
    assert "no correlation can be tested" in report.small_n_clause(2)


def test_best_proxy_ignores_nan_and_refuses_all_nan():
    rows = validity(G=NAN, neg_Eg=0.3, Ppred=0.6, norm=0.6)
    assert report.best_proxy(rows)["proxy"] == "Ppred"  # ties: the first listed wins
    with pytest.raises(ValueError, match="no proxy"):
        report.best_proxy(validity(G=NAN))


def test_proxy_finding_usable_or_weak():
    good = report.proxy_finding(validity(neg_Eg=0.7, Ppred=0.1, norm=NAN))
    assert "is −E[g] (ρ = +0.70" in good and "usable stand-in" in good and "norm gives +nan" in good
    weak = report.proxy_finding(validity(neg_Eg=0.5 - 1e-9, Ppred=0.1, norm=0.0))
    assert "weak stand-in" in weak
    assert "Within layers" not in good  # no within-layer ρ given: nothing said about depth


def test_proxy_finding_states_the_interval_and_the_depth_confound():
    rows = validity(neg_Eg=0.9, Ppred=0.1, norm=0.2)
    rows[0].update(ci_low=0.8, ci_high=0.95, rho_within_layer_demeaned=0.85, p_perm=0.0005)
    text = report.proxy_finding(rows, model="Qwen2.5")
    assert "(ρ = +0.90, 95% bootstrap interval over texts [+0.80, +0.95], permutation p = 0.0005)" in text
    assert text.endswith(
        "Within layers (ranks demeaned per layer) it gives ρ = +0.85, so depth is not what carries it."
    )
    rows[0]["rho_within_layer_demeaned"] = 0.1
    assert report.proxy_finding(rows).endswith("it gives ρ = +0.10, so much of it is depth.")


def layout():
    return HeadLayout(num_layers=2, num_heads=2, num_kv_heads=1, head_dim=4)


def measurements(loss, dloss):
    e, n = np.asarray(dloss).shape
    rng = np.random.default_rng(0)
    return Measurements(layout(), "zero", np.asarray(loss, float), rng.normal(size=(e, n)), np.ones((e, n)),
                        np.asarray(dloss, float), None, np.arange(n))  # fmt: skip


def fake_results(n_seeds=1):
    m0 = measurements([2.0, 4.0], [[-0.1, 0.2, 0.3, -0.2], [-0.1, 0.2, 0.3, 0.0]])  # 2 of 4 heads help
    m1 = measurements([0.01, 0.03], [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    stats = {"pairs": [pair("I_pre", "Urel", 0.9, 0.01, within=0.8)],
             "proxy_validity": validity(neg_Eg=0.6, Ppred=-0.2, norm=0.1, G=0.0)}  # fmt: skip
    return {
        "seeds": {s: {"m0": m0, "m1": m1, "stats": stats} for s in range(n_seeds)},
        "agreement": {"Urel": {"mean_spearman": 0.2}, "I_post": {"mean_spearman": 0.9}},
    }


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_synthetic_finding_assembles_every_clause(n_seeds):
    res = fake_results(n_seeds)
    pairs = report.pair_table([s["stats"] for s in res["seeds"].values()], [("I_pre", "Urel")])
    val = report.proxy_validity_means(
        pd.DataFrame([{"θ": v["theta"], "proxy": PROXY_LABELS[v["proxy"]], "ρ with ablation": v["rho"]}
                      for v in res["seeds"][0]["stats"]["proxy_validity"]])
    )  # fmt: skip
    text = report.synthetic_finding(res, pairs, val, n_heads=4)
    assert text.startswith("heads that matter more before fine-tuning moved more (ρ = +0.90")
    assert "Within layers the same pair gives ρ = +0.80: depth is not what carries it." in text
    assert "−E[g] reaches ρ = +0.60 while G²/F reaches -0.20" in text
    assert "loss 3.00 nats against 0.0200 at θ1" in text and "ablating 50% of its heads" in text
    assert "With only N = 4 heads" in text
    if n_seeds == 1:
        assert "One seed only" in text
    else:
        assert "the Urel ranking is unstable (mean pairwise ρ = 0.20)" in text


def test_tables_from_results():
    res = fake_results(2)
    res["summary"] = {
        "seeds": {"0": {"finetune_evaluation": {"exact_match": 1.0}}, "1": {"finetune_evaluation": {}}}
    }
    losses = report.seed_losses(res)
    assert list(losses["loss θ0 (nats)"]) == [3.0, 3.0]
    assert losses["exact match θ1"].iloc[0] == 1.0 and math.isnan(losses["exact match θ1"].iloc[1])
    table = report.proxy_validity_table(res)
    assert len(table) == 8 and set(table["seed"]) == {0, 1}
    assert report.ppred_max(res) <= 1.0 + 1e-12


def test_load_results_names_the_regeneration_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="qwen_anatomy.heads.experiment"):
        load_results(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"seeds": {"0": {}}}))
    (tmp_path / "run_record.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(FileNotFoundError, match="status 'failed'"):
        load_results(tmp_path)
    (tmp_path / "run_record.json").write_text(json.dumps({"status": "success"}))
    with pytest.raises(FileNotFoundError, match="seed-0/theta0.npz is missing"):
        load_results(tmp_path)


def test_a_tiny_experiment_round_trips_through_the_chapter_loader_and_report(tmp_path):
    """Chapter 40 reads committed results in every build, so `run` itself is exercised here:
    two seeds, two fine-tuning steps, eight evaluation examples (a few seconds)."""
    from qwen_anatomy.heads.experiment import HeadsExperiment, run

    cfg = HeadsExperiment(
        seeds=(0, 1), finetune_steps=2, train_samples=256, eval_examples=8, n_perm=20, n_boot=5
    )
    run(cfg, tmp_path / "out", progress=False)
    res = load_results(tmp_path / "out")
    assert sorted(res["seeds"]) == [0, 1] and res["run_record"]["status"] == "success"
    n_heads = res["seeds"][0]["m0"].layout.n_heads_total
    pairs = report.pair_table([res["seeds"][s]["stats"] for s in (0, 1)])
    assert len(pairs) == len(report.KEY_PAIRS)
    validity = report.proxy_validity_means(report.proxy_validity_table(res))
    text = report.synthetic_finding(res, pairs, validity, n_heads)
    assert "Across 2 seeds the Urel ranking is" in text and f"N = {n_heads} heads" in text
    assert report.ppred_max(res) <= 1 + 1e-9
    with pytest.raises(UserInputError, match="already exists"):
        run(cfg, tmp_path / "out", progress=False)
