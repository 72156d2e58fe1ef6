"""Figures of chapter 50_causal_heads, built on :mod:`qwen_anatomy.plotting`."""

from __future__ import annotations

import math

from .. import plotting

METRIC_LABELS = {
    "num_f1": "<NUM> F1",
    "mae": "MAE of predicted numbers",
    "coverage95": "95% interval coverage",
    "accuracy": "next-token accuracy",
    "ece": "calibration error (ECE)",
    "rmse": "RMSE of predicted numbers",
}


def metric_bars(
    results: dict, metric: str, baseline: dict | None = None, log_scale: bool = False, title=None
):
    """Grouped bars: one group per evaluation set, one bar per variant; the baseline (a results dict
    with a variant of kind "baseline", or this suite's own) marked by a dashed line per set."""
    variants = results["variants"]
    sets = list(variants[0]["metrics"])
    fig, ax = plotting.figure(width=7.0, height=3.4)
    n = len(variants)
    width = 0.8 / n
    for i, v in enumerate(variants):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(sets))]
        ys = [v["metrics"][s][metric] for s in sets]
        ys = [y if y == y else 0.0 for y in ys]  # NaN (no number predicted) drawn as an empty bar
        hatch = "//" if v["kind"] == "baseline" else None
        ax.bar(xs, ys, width=width * 0.95, label=v["name"], hatch=hatch)
    base_rows = [v for v in (baseline or results)["variants"] if v["kind"] == "baseline"]
    if base_rows and baseline is not None:
        for j, s in enumerate(sets):
            if s in base_rows[0]["metrics"]:
                y = base_rows[0]["metrics"][s][metric]
                ax.hlines(
                    y,
                    j - 0.45,
                    j + 0.45,
                    colors="black",
                    linestyles="dashed",
                    label="baseline" if j == 0 else None,
                )
    if metric == "coverage95":
        ax.axhline(0.95, color="grey", linestyle=":", linewidth=1, label="nominal 95%")
    ax.set_xticks(range(len(sets)), sets)
    if log_scale and any(v["metrics"][s][metric] > 0 for v in variants for s in sets):
        ax.set_yscale("log")
    plotting.label(
        ax, "evaluation set", METRIC_LABELS.get(metric, metric), title or f"{results['suite']} suite"
    )
    ax.legend(fontsize=7, ncols=2)
    return fig


def suite_bars(results: dict, baseline: dict, model: str) -> list:
    """The two bar charts every suite of chapter 50 gets: <NUM> F1 and the MAE of predicted numbers
    (log scale), each against the baseline of the same backbone."""
    return [
        metric_bars(
            results,
            metric,
            baseline=baseline,
            log_scale=metric == "mae",
            title=f"{results['suite']} suite, {model}",
        )  # fmt: skip
        for metric in ("num_f1", "mae")
    ]


def training_curves(logs: dict[str, list[dict]], title: str = "training health"):
    """Four panels per run: loss parts, <NUM> accuracy, median scale of U, median sum_k P_k.

    One colour per run in every panel; the loss panel's legend gives the line styles (classification
    solid, regression dashed), the last panel's the runs. The scale of U is drawn on a log axis, where
    a collapse towards 0 stays visible."""
    from matplotlib.lines import Line2D

    fig, axes = plotting.figure(ncols=4, width=3.2, height=2.8)
    axes = axes.ravel()
    scales = []
    for i, (name, log) in enumerate(logs.items()):
        c = f"C{i}"  # one colour per run in every panel
        steps = [row["step"] for row in log]
        axes[0].plot(steps, [row["cls"] for row in log], color=c)
        axes[0].plot(steps, [row["reg"] for row in log], color=c, linestyle="--")
        axes[1].plot(steps, [row["num_accuracy"] for row in log], color=c)
        scale = [row["median_scale_u"] for row in log]
        if not all(math.isnan(s) for s in scale):
            axes[2].plot(steps, scale, color=c)
            scales += [s for s in scale if not math.isnan(s)]
        axes[3].plot(steps, [row["median_sum_p"] for row in log], color=c, label=name)
    axes[0].set_yscale("log")
    if scales and min(scales) > 0:
        axes[2].set_yscale("log")
    axes[3].set_yscale("log")
    axes[3].axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    plotting.label(axes[0], "step", "loss (log scale)", "loss parts")
    plotting.label(axes[1], "step", "<NUM> accuracy (batch)", "<NUM> accuracy")
    plotting.label(axes[2], "step", "median scale of U (log)", "abduction scale")
    plotting.label(axes[3], "step", "median sum of P_k (log)", "sum of OvR probabilities")
    styles = [Line2D([], [], color="grey", label="classification"),
              Line2D([], [], color="grey", linestyle="--", label="regression")]  # fmt: skip
    axes[0].legend(handles=styles, fontsize=6)
    axes[3].legend(fontsize=6, ncols=2 if len(logs) > 4 else 1)
    fig.suptitle(title)
    return fig


def threshold_effect(thresholds, median_sums, agreements):
    """Step-0 median sum_k P_k and OvR/base argmax agreement against the threshold C."""
    fig, axes = plotting.figure(ncols=2, width=3.6, height=3.0)
    axes = axes.ravel()
    xs = [max(t, 1e-1) for t in thresholds]
    axes[0].plot(xs, median_sums, marker="o")
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    plotting.label(axes[0], "threshold C (0 drawn at 0.1)", "median sum of P_k at step 0", "sparsity")
    axes[1].plot(xs, agreements, marker="o")
    axes[1].set_xscale("log")
    plotting.label(axes[1], "threshold C (0 drawn at 0.1)", "OvR argmax = base argmax", "agreement at step 0")
    return fig
