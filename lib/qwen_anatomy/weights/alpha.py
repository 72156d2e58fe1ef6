"""Two rules for the power-law exponent α of a weight spectrum, side by side (chapter 11).

:func:`qwen_anatomy.weights.stats.power_law_fit` fits p(λ) ∝ λ^-α above a cut-off x_min by one of two
rules: ours (the table's default: tails of at least 10 eigenvalues, two-sided Kolmogorov-Smirnov
distance) or WeightWatcher's own (``ww``: tails down to 2 eigenvalues, a one-sided distance that never
exceeds the two-sided one). Both compute α by the same maximum-likelihood formula; they differ only in
which x_min they keep. This module fits both on the same eigenvalues, measures each choice on common
scales (the two-sided distance, the tail size, the estimator's standard error (α - 1)/√n), and turns
that into the chapter's sentence on why the default is what it is.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import stats

DIFFER = 0.5  # |α_ours - α_ww| above which two fits "disagree" (issue 13's threshold)
FIT_COLUMNS = [
    "alpha_ours", "xmin_ours", "tail_ours", "se_ours", "ks_ours",
    "alpha_ww", "xmin_ww", "tail_ww", "se_ww", "ks_ww", "ks_ww_own", "abs_diff",
]  # fmt: skip


class _NonFinite(Exception):
    """A matrix holds NaN or Inf: no spectrum (the table marks such rows)."""


def fit_both(eigenvalues: np.ndarray) -> dict:
    """Both fits of one spectrum λ (any order), each measured on the same scales.

    Returns alpha_ours, alpha_ww, xmin_*, tail_* (eigenvalues >= x_min), ks_ours (two-sided
    distance, what ours minimises), ks_ww_own (WeightWatcher's one-sided D, what it minimises),
    ks_ww (the two-sided distance of WeightWatcher's choice), se_* = (α - 1)/√tail (the MLE's
    standard error, WeightWatcher's ``sigma``) and abs_diff = |α_ours - α_ww|.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    lam = lam[lam > 0]
    ours = stats.power_law_fit(lam, method="ours")
    ww = stats.power_law_fit(lam, method="ww")
    out = {}
    for key, fit in (("ours", ours), ("ww", ww)):
        alpha, xmin, tail = fit["alpha"], fit["alpha_xmin"], int(fit["alpha_tail"])
        out[f"alpha_{key}"] = alpha
        out[f"xmin_{key}"] = xmin
        out[f"tail_{key}"] = tail
        ok = math.isfinite(alpha) and tail > 0
        out[f"se_{key}"] = (alpha - 1.0) / math.sqrt(tail) if ok else math.nan
        out[f"ks_{key}"] = stats.ks_distance(lam[lam >= xmin], xmin, alpha, "two") if ok else math.nan
    out["ks_ww_own"] = ww["alpha_ks"]
    out["abs_diff"] = abs(out["alpha_ours"] - out["alpha_ww"])
    return out


def compare_alpha_methods(spectra: dict):
    """One row per matrix ({name: eigenvalues}): :func:`fit_both`'s columns after ``name``."""
    import pandas as pd

    rows = [{"name": name, **fit_both(lam)} for name, lam in spectra.items()]
    return pd.DataFrame(rows, columns=["name", *FIT_COLUMNS])


def matrix_spectra(
    spec: str | os.PathLike, include: str | None = None, threads: int = 1, progress: bool = False
) -> dict:
    """{name: eigenvalues λ = σ² (descending)} of every 2-D weight the table would analyse
    (:func:`qwen_anatomy.weights.table.select_entries`, same ``include``), via the Gram route.
    Matrices with non-finite values are left out (the table marks them and skips their spectra)."""
    import scipy.linalg  # noqa: F401  (threadpoolctl limits only BLAS libraries already loaded)
    from threadpoolctl import threadpool_limits

    from ..progress import progress_bar
    from . import safetensors_io as sio
    from .checkpoint import open_checkpoint
    from .table import CHUNK_ELEMENTS, select_entries

    ck = open_checkpoint(spec)
    entries = [e for e in select_entries(ck, include) if len(e.shape) == 2]
    out = {}
    with threadpool_limits(limits=threads):
        for entry in progress_bar(entries, unit="matrix", enabled=progress, desc="spectra"):
            if ck.format == "safetensors" and entry.dtype not in sio.NUMPY_DTYPES:
                continue
            rows, cols = entry.shape
            step = max(1, CHUNK_ELEMENTS // max(cols, 1))

            def chunks(entry=entry, rows=rows, step=step):
                for start in range(0, rows, step):
                    chunk = ck.read_rows(entry, start, min(rows, start + step))
                    if not np.isfinite(chunk).all():
                        raise _NonFinite(entry.name)
                    yield chunk

            try:
                sigma = stats.singular_values_gram(chunks, (rows, cols))
            except _NonFinite:
                continue
            out[entry.name] = sigma * sigma
    return out


def alpha_method_summary(comp, threshold: float = DIFFER) -> dict:
    """Counts behind the chapter's sentence, from :func:`compare_alpha_methods`' frame.

    ``both``: matrices both rules fit; ``differ``: of those, |Δα| > threshold; ``spearman``: rank
    correlation of the two α; over the disagreements: ``ours_closer`` / ``ww_closer`` (which choice
    has the smaller two-sided distance), ``ww_short`` (WeightWatcher's tail holds fewer than 10
    eigenvalues, shorter than ours allows) and ``short_ours_closer`` (of those, ours closer: the only
    cases where ours could lose, since ours minimises that distance over every tail of 10 or more),
    median tails and median standard errors of each rule.
    """
    from scipy.stats import spearmanr

    both = comp[np.isfinite(comp["alpha_ours"]) & np.isfinite(comp["alpha_ww"])]
    dis = both[both["abs_diff"] > threshold]
    varied = len(both) > 2 and both["alpha_ours"].nunique() > 1 and both["alpha_ww"].nunique() > 1
    rho = float(spearmanr(both["alpha_ours"], both["alpha_ww"]).statistic) if varied else math.nan

    def med(frame, col):
        return float(frame[col].median()) if len(frame) else math.nan

    return {
        "threshold": threshold,
        "matrices": len(comp),
        "both": len(both),
        "differ": len(dis),
        "share_differ": len(dis) / len(both) if len(both) else math.nan,
        "spearman": rho,
        "median_abs_diff": med(both, "abs_diff"),
        "max_abs_diff": float(both["abs_diff"].max()) if len(both) else math.nan,
        "ours_closer": int((dis["ks_ours"] < dis["ks_ww"]).sum()),
        "ww_closer": int((dis["ks_ww"] < dis["ks_ours"]).sum()),
        "ww_short": int((dis["tail_ww"] < 10).sum()),
        "short_ours_closer": int(((dis["tail_ww"] < 10) & (dis["ks_ours"] < dis["ks_ww"])).sum()),
        "median_tail_ours": med(dis, "tail_ours"),
        "median_tail_ww": med(dis, "tail_ww"),
        "median_se_ours": med(dis, "se_ours"),
        "median_se_ww": med(dis, "se_ww"),
    }


def alpha_default_verdict(summary: dict) -> str:
    """The chapter's sentence: how far the two rules disagree and which one the default follows, why.

    Ours stays the default when, over the disagreements, its α rests on longer tails with smaller
    standard errors and it is no worse on the two-sided distance in most of them; when WeightWatcher's
    choice has the smaller two-sided distance in most disagreements, the sentence says the default
    should follow WeightWatcher.
    """
    s = summary
    if not s["both"]:
        return "Neither rule could fit a power law to any matrix here, so there is nothing to compare."
    head = (
        f"The two rules fit {s['both']} matrices; their α agree within {s['threshold']:g} in "
        f"{s['both'] - s['differ']} of them ("
        + (f"Spearman ρ = {s['spearman']:.2f}, " if math.isfinite(s["spearman"]) else "")
        + f"median |Δα| {s['median_abs_diff']:.2f})"
    )
    if not s["differ"]:
        return (
            head + ", that is in all of them: the choice of rule does not change the picture on this model. "
            "The default keeps tails of at least 10 eigenvalues, so its α never rests on a handful of values."
        )
    n = s["differ"]
    facts = (
        f" and differ by more than {s['threshold']:g} in {n} ({s['share_differ']:.0%}). Where they differ, "
        f"WeightWatcher's x_min keeps a median of {s['median_tail_ww']:.0f} eigenvalues "
        f"({s['ww_short']} of {n} tails shorter than the 10 ours requires) against {s['median_tail_ours']:.0f} "
        f"for ours, so its α carries a median standard error (α - 1)/√n of {s['median_se_ww']:.2f} against "
        f"{s['median_se_ours']:.2f}. On the two-sided KS distance ours is closer in {s['ours_closer']} of {n} "
        f"and WeightWatcher's choice in {s['ww_closer']}"
        + (
            f" (ours minimises that distance over every tail of 10 or more, so only the {s['ww_short']} "
            f"WeightWatcher {'tail' if s['ww_short'] == 1 else 'tails'} shorter than that could beat it: ours is "
            f"still closer in {s['short_ours_closer']} of {s['ww_short']})."
            if s["ww_short"]
            else " (ours minimises that distance over every tail of 10 or more, and every WeightWatcher tail "
            "here is that long, so this part is by construction)."
        )
    )
    if s["ww_closer"] > n / 2:
        return (
            head
            + facts
            + " WeightWatcher's choice fits the tail better in most disagreements, so the default "
            "should follow it (--alpha-method ww)."
        )
    if s["median_se_ww"] > s["median_se_ours"]:
        why = (
            " The default therefore stays ours: WeightWatcher's smaller distance comes from its one-sided "
            "rule, which never exceeds the two-sided one, and from tails too short for α to mean much."
        )
    else:
        why = (
            " The default stays ours, which is no worse on the two-sided distance; --alpha-method ww "
            "reproduces WeightWatcher's numbers for comparison."
        )
    return head + facts + why


def scatter(comp, title: str = "α by the two rules, one point per matrix", threshold: float = DIFFER):
    """α(ours) against α(WeightWatcher's rule), log-log, with the diagonal and a ±threshold band;
    points where WeightWatcher's tail is shorter than 10 eigenvalues are marked apart."""
    from ..plotting import figure, label

    fig, ax = figure(width=5.6, height=4.4)
    ok = comp[np.isfinite(comp["alpha_ours"]) & np.isfinite(comp["alpha_ww"])]
    short = ok["tail_ww"] < 10
    ax.scatter(
        ok.loc[~short, "alpha_ours"], ok.loc[~short, "alpha_ww"], s=14, label="WeightWatcher tail ≥ 10"
    )
    ax.scatter(
        ok.loc[short, "alpha_ours"],
        ok.loc[short, "alpha_ww"],
        s=22,
        marker="x",
        label="WeightWatcher tail < 10",
    )
    if len(ok):
        lo = 0.9 * float(min(ok["alpha_ours"].min(), ok["alpha_ww"].min()))
        hi = 1.1 * float(max(ok["alpha_ours"].max(), ok["alpha_ww"].max()))
        grid = np.geomspace(lo, hi, 100)
        ax.plot(grid, grid, color="0.3", lw=1, label="equal")
        ax.fill_between(
            grid, grid - threshold, grid + threshold, color="0.8", alpha=0.5, lw=0, label=f"±{threshold:g}"
        )
        from matplotlib.ticker import NullFormatter

        ticks = [t for t in (1, 1.5, 2, 3, 4, 6, 10, 15, 20, 30, 50, 100) if lo <= t <= hi]
        for axis, setscale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
            setscale("log")
            axis.set_ticks(ticks, [f"{t:g}" for t in ticks])
            axis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8)
    label(ax, "α, ours (default)", "α, WeightWatcher's rule (--alpha-method ww)", title)
    return fig
