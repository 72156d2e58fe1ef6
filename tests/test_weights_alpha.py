"""Power-law α of weight spectra: our rule and WeightWatcher's (``--alpha-method ww``), issue 13.

Fast tests check both rules on planted power laws, the ``ww`` rule against a plain-Python
transcription of WeightWatcher 0.7.7's ``WWFit`` (and against ``WWFit`` itself when weightwatcher is
installed), the KS distances, ``log_alpha_norm``, the table and CLI plumbing and chapter 11's
sentence. The slow test runs WeightWatcher itself on SmolLM2 against our ``ww`` column.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from interrupts import interrupt_tensor_analysis
from qwen_anatomy.config import tiny_config
from qwen_anatomy.weights import alpha as alpha_mod
from qwen_anatomy.weights import stats, synthetic, table


def _pareto(alpha: float, n: int, seed: int, xmin: float = 0.7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))


def _mp(seed: int, rows: int = 600, cols: int = 200) -> np.ndarray:
    """Eigenvalues of WᵀW for a Gaussian W: a Marchenko-Pastur bulk, no power-law tail."""
    w = np.random.default_rng(seed).standard_normal((rows, cols))
    return np.linalg.eigvalsh(w.T @ w)


def reference_ww(eigenvalues) -> tuple[float, float, float, int]:
    """WeightWatcher 0.7.7's standard fit (``WWFit.fit_power_law_standard`` + ``__init__``), written
    with Python floats and loops only: (alpha, xmin, D, tail). For 20 or more eigenvalues > 1e-5."""
    data = sorted(float(x) for x in eigenvalues if x > 1e-5)
    big_n = len(data)
    assert big_n >= 20
    best = None
    for i in range(big_n - 1):
        xmin, n = data[i], big_n - i
        s = sum(math.log(x) for x in data[i:]) - n * math.log(xmin)
        a = 1 + n / s if s > 0 else math.inf
        d = max(abs(1 - (x / xmin) ** (1 - a) - j / n) for j, x in enumerate(data[i:])) if a > 1 else 1.0
        if best is None or d < best[0]:  # the first smallest D, as np.argmin
            best = (d, a, xmin, n)
    return best[1], best[2], best[0], sum(1 for x in eigenvalues if x >= best[2])


# -- planted power laws ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", stats.ALPHA_METHODS)
@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.5])
def test_both_methods_recover_a_planted_power_law(alpha, method):
    # 4000 Pareto draws: the MLE's standard error (α - 1)/√n is at most 0.04 here, so ±0.1 (the
    # spec's tolerance) is 2.5 standard errors even after the x_min search trims the tail.
    x = _pareto(alpha, 4000, seed=int(alpha * 10))
    fit = stats.power_law_fit(x, method=method)
    assert fit["alpha_method"] == method
    assert abs(fit["alpha"] - alpha) <= 0.1, fit
    assert abs(fit["alpha"] - alpha) <= 4 * (fit["alpha"] - 1) / math.sqrt(fit["alpha_tail"]), fit
    assert fit["alpha_weighted"] == pytest.approx(fit["alpha"] * np.log10(x.max()), rel=1e-12)
    assert fit["log_norm"] == pytest.approx(np.log10(x.sum()), rel=1e-12)
    assert fit["log_spectral_norm"] == pytest.approx(np.log10(x.max()), rel=1e-12)


@pytest.mark.parametrize("method", stats.ALPHA_METHODS)
def test_planted_tail_above_a_bulk(method):
    """A power-law tail of 300 values planted above a Marchenko-Pastur bulk of 900: both rules put
    x_min at (or just above) the tail's start and recover α."""
    rng = np.random.default_rng(7)
    bulk = _mp(7, rows=2700, cols=900) / 2700  # edge near (1 + √(1/3))² ≈ 2.49
    tail = 3.0 * (1.0 - rng.random(300)) ** (-1.0 / 1.5)  # α = 2.5 from x_min = 3
    fit = stats.power_law_fit(np.concatenate([bulk, tail]), method=method)
    # 300 tail values: standard error 1.5/√300 ≈ 0.09; 0.25 allows under 3 of them
    assert abs(fit["alpha"] - 2.5) <= 0.25, fit
    assert 3.0 <= fit["alpha_xmin"] and 200 <= fit["alpha_tail"] <= 300, fit


def test_ww_rule_reaches_tails_ours_refuses():
    """On a pure Marchenko-Pastur spectrum WeightWatcher's rule (tails down to 2 values) settles on
    8 eigenvalues and a steep α; ours, held to tails of 10, keeps a longer one. The case of issue 13."""
    lam = _mp(2)
    ours, ww = stats.power_law_fit(lam), stats.power_law_fit(lam, method="ww")
    assert ww["alpha_tail"] < 10 <= ours["alpha_tail"]
    assert ww["alpha"] - ours["alpha"] > 0.5
    # ww minimises its one-sided D over every tail, ours' among them, so it is never larger there; and
    # its α rests on 8 values: a standard error (α - 1)/√n several times ours
    tail_ours = np.sort(lam)[np.sort(lam) >= ours["alpha_xmin"]]
    assert ww["alpha_ks"] <= stats.ks_distance(tail_ours, ours["alpha_xmin"], ours["alpha"], "one")
    se = {k: (f["alpha"] - 1) / math.sqrt(f["alpha_tail"]) for k, f in (("ours", ours), ("ww", ww))}
    assert se["ww"] > 3 * se["ours"], se


# -- the ww rule against its reference --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_ww_method_equals_a_plain_transcription_of_weightwatcher(seed):
    rng = np.random.default_rng(seed)
    lam = np.concatenate([_mp(seed, 300, 100) / 300, _pareto(2.0 + seed, 40, seed, xmin=3.0)])
    lam = np.concatenate([lam, np.zeros(3), np.full(2, 1e-6)])  # below WeightWatcher's 1e-5: left out
    rng.shuffle(lam)
    a, xmin, d, tail = reference_ww(lam)
    got = stats.ww_power_law_fit(lam)
    # same candidates and formulas; sums in another order differ by ~1e-15 relative
    assert got["xmin"] == xmin and got["tail"] == tail
    assert got["alpha"] == pytest.approx(a, rel=1e-9)
    assert got["D"] == pytest.approx(d, rel=1e-9, abs=1e-12)
    fit = stats.power_law_fit(lam, method="ww")
    assert (fit["alpha"], fit["alpha_xmin"], fit["alpha_ks"], fit["alpha_tail"]) == (
        got["alpha"],
        got["xmin"],
        got["D"],
        got["tail"],
    )


def test_ww_small_n_rule():
    """Fewer than 20 eigenvalues: tails of at least 8, bias-corrected α = 1 + (n-1)/Σ ln(λ/x_min),
    the first smallest one-sided D (WWFit.__init__ overrides fit_powerlaw_smallN's own objective)."""
    lam = np.sort(_pareto(2.5, 15, seed=3))
    best = None
    for i in range(15 - 8 + 1):
        tail = lam[i:]
        n = tail.size
        a = 1 + (n - 1) / np.sum(np.log(tail / tail[0]))
        d = stats.ks_distance(tail, tail[0], a, "one")
        if best is None or d < best[0]:
            best = (d, a, tail[0], n)
    got = stats.ww_power_law_fit(lam)
    assert got["xmin"] == best[2] and got["tail"] == best[3] >= 8
    assert got["alpha"] == pytest.approx(best[1], rel=1e-12)
    assert got["D"] == pytest.approx(best[0], rel=1e-12)
    # too few values for any fit: NaN (WeightWatcher writes -1), and the table's columns stay empty
    assert math.isnan(stats.ww_power_law_fit(np.array([2.0]))["alpha"])
    assert math.isnan(stats.power_law_fit(np.array([2.0, 0.0]), method="ww")["log_alpha_norm"])


def test_ww_method_equals_weightwatcher_wwfit_when_installed():
    pytest.importorskip(
        "weightwatcher", reason="weightwatcher is a test-only dependency (requirements-test.txt)"
    )
    from weightwatcher.WW_powerlaw import WWFit

    rng = np.random.default_rng(11)
    for n in (9, 12, 19, 20, 57, 300):
        for lam in (_pareto(rng.uniform(1.5, 5), n, int(rng.integers(1 << 30))), np.exp(rng.normal(0, 2, n))):
            with contextlib.redirect_stdout(io.StringIO()):  # WWFit prints "SMALL N PL FIT"
                ref = WWFit(np.sort(lam)[np.sort(lam) > stats.WW_EVALS_THRESH])
            got = stats.ww_power_law_fit(lam)
            assert (got["alpha"], got["xmin"], got["D"]) == (ref.alpha, ref.xmin, ref.D), n


# -- distances and norms ----------------------------------------------------------------------------------------
def test_ks_distances_by_hand():
    # tail 1, 2, 4 with α = 2: F = 1 - x_min/x = 0, 1/2, 3/4; empirical steps 0, 1/3, 2/3 | 1/3, 2/3, 1
    tail = np.array([1.0, 2.0, 4.0])
    assert stats.ks_distance(tail, 1.0, 2.0, "one") == pytest.approx(max(0, 1 / 2 - 1 / 3, 3 / 4 - 2 / 3))
    assert stats.ks_distance(tail, 1.0, 2.0, "two") == pytest.approx(1 / 3)  # 1/3 - 0 at the first step
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = np.sort(_pareto(2.5, 50, int(rng.integers(1000))))
        a = rng.uniform(1.5, 4)
        assert stats.ks_distance(t, t[0], a, "one") <= stats.ks_distance(t, t[0], a, "two")
    with pytest.raises(ValueError, match="sided"):
        stats.ks_distance(tail, 1.0, 2.0, "left")


def test_log_alpha_norm_is_weightwatchers_definition():
    lam = np.array([0.0, 0.5, 2.0, 3.0, 10.0])
    assert stats.log_alpha_norm(lam, 2.5) == pytest.approx(np.log10(np.sum(lam**2.5)), rel=1e-14)
    # where λ**α overflows float64 the log-space sum stays finite: log10(2 · 1e200^2) = 400.301
    assert stats.log_alpha_norm(np.array([1e200, 1e200]), 2.0) == pytest.approx(400 + np.log10(2), rel=1e-14)
    fit = stats.power_law_fit(_pareto(3.0, 500, 1), method="ours")
    x = _pareto(3.0, 500, 1)
    assert fit["log_alpha_norm"] == pytest.approx(np.log10(np.sum(x ** fit["alpha"])), rel=1e-12)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        stats.power_law_fit(np.arange(1.0, 30.0), method="powerlaw")


# -- the table and the command line -----------------------------------------------------------------------------
@pytest.fixture
def tiny(tmp_path):
    return synthetic.write_random_checkpoint(tmp_path / "tiny", tiny_config(), dtype="F32", seed=3)


def test_table_column_follows_alpha_method(tiny, tmp_path):
    from qwen_anatomy.weights.checkpoint import open_checkpoint

    ck = open_checkpoint(tiny)
    out = tmp_path / "t.csv"
    df = table.analyse(tiny, out=out, alpha_method="ww")
    mats = df[df["design_rank"].notna()]
    assert (
        set(mats["alpha_method"]) == {"ww"} and df.loc[df["design_rank"].isna(), "alpha_method"].isna().all()
    )
    for _, row in mats.iterrows():
        w = ck.read(ck.entry(row["name"])).astype(np.float64)
        lam = stats.singular_values_gram(lambda w=w: [w], w.shape) ** 2
        want = stats.power_law_fit(lam, method="ww")
        for col in ("alpha", "alpha_xmin", "alpha_ks", "log_alpha_norm", "alpha_weighted"):
            np.testing.assert_allclose(row[col], want[col], rtol=1e-9, err_msg=f"{row['name']} {col}")
        assert row["alpha_tail"] == want["alpha_tail"]
    back = table.read_table(out)
    assert list(back["alpha_method"].dropna().unique()) == ["ww"]
    np.testing.assert_allclose(back["log_alpha_norm"].to_numpy(float), df["log_alpha_norm"].to_numpy(float))
    record = json.loads((tmp_path / "t.csv.run.json").read_text())
    assert record["parameters"]["alpha_method"] == "ww"
    assert "WeightWatcher" in record["tolerances"]["alpha"]
    default = table.analyse(tiny)
    assert set(default.loc[default["design_rank"].notna(), "alpha_method"]) == {"ours"}


def test_resume_refuses_another_alpha_method(tiny, tmp_path, monkeypatch):
    real = interrupt_tensor_analysis(monkeypatch, table, at_call=3)
    out = tmp_path / "t.csv"
    with pytest.raises(KeyboardInterrupt):
        table.analyse(tiny, out=out, alpha_method="ww")
    monkeypatch.setattr(table, "analyse_tensor", real)
    with pytest.raises(table.UserInputError, match="other options"):
        table.analyse(tiny, out=out)  # default "ours" would mix two fits in one table
    df = table.analyse(tiny, out=out, alpha_method="ww")
    assert set(df["alpha_method"].dropna()) == {"ww"}


def test_cli_alpha_method(capsys, tiny, tmp_path):
    from qwen_anatomy.cli import main

    assert (
        main(
            ["params", str(tiny), "--out", str(tmp_path / "t.jsonl"), "--alpha-method", "ww", "--no-progress"]
        )
        == 0
    )
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert {r["alpha_method"] for r in rows if r["design_rank"] is not None} == {"ww"}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["params", str(tiny), "--out", str(tmp_path / "u.csv"), "--alpha-method", "powerlaw"])
    assert exc.value.code == 2 and "--alpha-method" in capsys.readouterr().err
    with pytest.raises(table.UserInputError, match="--alpha-method"):
        table.analyse(tiny, alpha_method="powerlaw")


# -- chapter 11's comparison ------------------------------------------------------------------------------------
def _comp(rows):
    return pd.DataFrame(
        [{"name": f"m{i}", **r} for i, r in enumerate(rows)], columns=["name", *alpha_mod.FIT_COLUMNS]
    )


def _row(a_ours, a_ww, tail_ours, tail_ww, ks_ours, ks_ww):
    return {
        "alpha_ours": a_ours, "xmin_ours": 1.0, "tail_ours": tail_ours, "se_ours": (a_ours - 1) / math.sqrt(tail_ours),
        "ks_ours": ks_ours, "alpha_ww": a_ww, "xmin_ww": 2.0, "tail_ww": tail_ww,
        "se_ww": (a_ww - 1) / math.sqrt(tail_ww), "ks_ww": ks_ww, "ks_ww_own": ks_ww * 0.9,
        "abs_diff": abs(a_ours - a_ww),
    }  # fmt: skip


def test_verdict_keeps_ours_when_ww_rests_on_short_tails():
    comp = _comp([_row(3.0, 3.1, 50, 48, 0.05, 0.05), _row(2.0, 16.0, 157, 8, 0.123, 0.125),
                  _row(4.0, 9.0, 40, 12, 0.08, 0.11), _row(5.0, 5.2, 30, 30, 0.06, 0.06)])  # fmt: skip
    s = alpha_mod.alpha_method_summary(comp)
    assert (s["both"], s["differ"], s["ours_closer"], s["ww_closer"], s["ww_short"], s["short_ours_closer"]) == (
        4, 2, 2, 0, 1, 1,
    )  # fmt: skip
    assert s["share_differ"] == 0.5 and s["max_abs_diff"] == 14.0
    text = alpha_mod.alpha_default_verdict(s)
    assert "differ by more than 0.5 in 2 (50%)" in text
    assert "The default therefore stays ours" in text and "should follow it" not in text
    assert f"{s['median_se_ww']:.2f} against {s['median_se_ours']:.2f}" in text


def test_verdict_recommends_ww_when_its_choice_fits_better():
    comp = _comp([_row(2.0, 3.0, 20, 40, 0.12, 0.05), _row(6.0, 4.0, 15, 60, 0.2, 0.06),
                  _row(3.0, 3.0, 50, 50, 0.05, 0.05)])  # fmt: skip
    s = alpha_mod.alpha_method_summary(comp)
    assert s["ww_closer"] == 2 and s["differ"] == 2
    assert "should follow it (--alpha-method ww)" in alpha_mod.alpha_default_verdict(s)


def test_verdict_when_the_rules_agree_and_when_nothing_fits():
    s = alpha_mod.alpha_method_summary(_comp([_row(3.0, 3.1, 50, 48, 0.05, 0.05)] * 3))
    assert s["differ"] == 0 and "in all of them" in alpha_mod.alpha_default_verdict(s)
    nothing = _comp([{**_row(3.0, 3.0, 10, 10, 0.1, 0.1), "alpha_ours": math.nan, "alpha_ww": math.nan}])
    assert "nothing to compare" in alpha_mod.alpha_default_verdict(alpha_mod.alpha_method_summary(nothing))


def test_compare_on_a_checkpoint_matches_the_table(tiny):
    spectra = alpha_mod.matrix_spectra(tiny)
    comp = alpha_mod.compare_alpha_methods(spectra)
    ours, ww = table.analyse(tiny), table.analyse(tiny, alpha_method="ww")
    mats = ours[ours["design_rank"].notna()].set_index("name")
    assert sorted(comp["name"]) == sorted(mats.index)
    merged = comp.set_index("name").join(mats["alpha"]).join(ww.set_index("name")["alpha"].rename("alpha_w"))
    np.testing.assert_allclose(merged["alpha_ours"], merged["alpha"], rtol=1e-9)
    np.testing.assert_allclose(merged["alpha_ww"], merged["alpha_w"], rtol=1e-9)
    assert (comp["tail_ours"] >= 10).all()
    fig = alpha_mod.scatter(comp)
    assert fig.axes[0].get_xlabel().startswith("α, ours")


# -- WeightWatcher itself on SmolLM2 ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")  # inside weightwatcher 0.7.7
def test_ww_method_matches_weightwatcher_on_smollm2():
    """|Δα| <= 1e-3 on every SmolLM2 matrix both fit (211 with WeightWatcher's defaults: 210 layer
    matrices and the 49152 x 576 embedding, under its 50,000-row limit), one BLAS thread.

    Same float32 weights on both sides; WeightWatcher's σ come from scipy's float64 SVD, ours from
    the float64 Gram matrix (λ to about 1e-16·λ_max), so α differs only by rounding unless two
    candidate x_min have D within that rounding. Measured: largest |Δα| 2.1e-12, median 2.5e-14.
    """
    ww = pytest.importorskip(
        "weightwatcher", reason="weightwatcher is a test-only dependency (requirements-test.txt)"
    )
    import scipy.linalg  # noqa: F401  (loaded before threadpoolctl, so its OpenBLAS is limited)
    from threadpoolctl import threadpool_limits

    from qwen_anatomy.loading import resolve_model

    directory = resolve_model("smollm2-135m")  # the converted safetensors (float32) both sides read
    t = time.perf_counter()
    with threadpool_limits(limits=1), contextlib.redirect_stdout(io.StringIO()):
        details = ww.WeightWatcher().analyze(model=str(directory))
    t_ww = time.perf_counter() - t
    t = time.perf_counter()
    ours = table.analyse(directory, alpha_method="ww", threads=1)
    t_ours = time.perf_counter() - t
    ours = ours[ours["design_rank"].notna()].set_index("name")
    details = details.assign(name=details["name"].astype(str) + ".weight").set_index("name")
    fitted_ww = details[(details["alpha"] != -1) & np.isfinite(details["alpha"].astype(float))]
    fitted_ours = ours[np.isfinite(ours["alpha"].astype(float))]
    both = fitted_ww.index.intersection(fitted_ours.index)
    assert len(details) == 211 and len(both) == len(details), (len(details), len(both))
    diff = (fitted_ww.loc[both, "alpha"].astype(float) - fitted_ours.loc[both, "alpha"].astype(float)).abs()
    print(
        f"\nWeightWatcher vs --alpha-method ww on SmolLM2: {len(both)} matrices both fit; |Δα| median "
        f"{diff.median():.2g}, largest {diff.max():.2g} ({diff.idxmax()}); WeightWatcher {t_ww:.1f} s, "
        f"ours (whole table) {t_ours:.1f} s"
    )
    assert diff.max() <= 1e-3, diff.sort_values().tail()
    assert (
        fitted_ww.loc[both, "num_pl_spikes"].astype(int) == fitted_ours.loc[both, "alpha_tail"].astype(int)
    ).all()
    for col in ("log_alpha_norm", "alpha_weighted", "log_norm", "log_spectral_norm"):
        np.testing.assert_allclose(
            fitted_ours.loc[both, col].astype(float),
            fitted_ww.loc[both, col].astype(float),
            rtol=1e-6,
            err_msg=col,
        )
