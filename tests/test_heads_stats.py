"""Part IV statistics: each against a case whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from qwen_anatomy.heads.stats import (
    across_seed_agreement,
    bootstrap_spearman,
    counterexamples,
    permutation_pvalue,
    spearman,
    topk_overlap,
    within_layer,
)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)
    y = x + rng.normal(size=40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_permutation_pvalue_small_for_dependence_large_for_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(size=60)
    assert permutation_pvalue(x, x + 0.3 * rng.normal(size=60), 500) < 0.01
    assert permutation_pvalue(x, rng.normal(size=60), 500) > 0.05


def test_within_layer_removes_a_depth_effect():
    # both quantities grow with depth, but inside each layer they are anti-correlated
    layer = np.repeat(np.arange(6), 5)
    within = np.tile(np.arange(5), 6).astype(float)
    x = 10 * layer + within
    y = 10 * layer - within
    assert spearman(x, y) > 0.8
    w = within_layer(x, y, layer)
    assert w["mean_per_layer"] == pytest.approx(-1.0)
    assert w["demeaned"] == pytest.approx(-1.0)


def test_topk_overlap_and_chance():
    x = np.arange(100.0)
    res = topk_overlap(x, x)
    assert res == {"k": 10, "overlap": 10, "chance": 1.0}
    assert topk_overlap(x, -x)["overlap"] == 0


def test_counterexample_sets():
    imp = np.arange(100.0)
    upd = -np.arange(100.0)  # the most important heads move least
    c = counterexamples(imp, upd)
    assert c["n_important_but_static"] == 10 and c["n_plastic_but_unimportant"] == 10
    assert c["chance"] == pytest.approx(3.0)
    c2 = counterexamples(imp, imp)
    assert c2["n_important_but_static"] == 0 and c2["n_plastic_but_unimportant"] == 0


def test_bootstrap_interval_covers_rho_and_shrinks_with_signal():
    rng = np.random.default_rng(2)
    per_example_x = rng.normal(size=(200, 30)) + np.arange(30)
    per_example_y = rng.normal(size=(200, 30)) + np.arange(30)

    def q(idx):
        return {"x": per_example_x[idx].mean(0), "y": per_example_y[idx].mean(0)}

    ci = bootstrap_spearman(q, 200, [("x", "y")], n_boot=100)[("x", "y")]
    full = q(np.arange(200))
    rho = spearman(full["x"], full["y"])
    assert ci[0] <= rho <= ci[1] and ci[0] > 0.9


def test_across_seed_agreement():
    rng = np.random.default_rng(3)
    base = rng.normal(size=50)
    same = across_seed_agreement([base, base + 1e-3 * rng.normal(size=50), base])
    assert same["mean_spearman"] > 0.99 and same["n_seeds"] == 3
    noise = across_seed_agreement([rng.normal(size=50) for _ in range(3)])
    assert abs(noise["mean_spearman"]) < 0.4
    assert noise["topk_chance"] == pytest.approx(25 / 50)
